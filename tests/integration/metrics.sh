# metrics — omni-metrics gathers the stages' taps and dead letters and serves
# Prometheus text that promtool accepts.
. "$(dirname "$0")/../lib.sh"
# Fresh traffic: without its historical ts, each envelope enters now.
jq -c 'del(.ts)' "$ROOT/examples/traffic.jsonl" >"$T/traffic.jsonl"
TRAFFIC=$T/traffic.jsonl
WA_IN=$(jq -r 'select(.channel == "whatsapp" and .dir == "in") | .src_id' "$TRAFFIC" | wc -l)
PORT=$(free_port)
URL=http://127.0.0.1:$PORT/metrics

spawn "$BIN/omni-metrics" --listen "127.0.0.1:$PORT" --taps "@ipc://$T/taps" --dead-in "@ipc://$T/dead" \
    2>"$T/metrics.err"
check "serves /metrics" wait_until 10 curl -sf -o /dev/null "$URL"

# The pipeline as services, each publishing on its tap to omni-metrics.
spawn "$BIN/omni-tap" --in "@ipc://$T/sink" --count >"$T/count"
SINK=$SPAWNED
spawn "$BIN/omni-archive" --db "$T/a.db" --in "@ipc://$T/archive" --out "ipc://$T/sink" \
    --tap ">ipc://$T/taps" --dead ">ipc://$T/dead" 2>/dev/null
spawn "$BIN/omni-identity" --db "$T/id.db" --in "@ipc://$T/identity" --out "ipc://$T/archive" \
    --tap ">ipc://$T/taps" --dead ">ipc://$T/dead" 2>/dev/null
sleep 0.5
"$BIN/omni-inject" "$TRAFFIC" --out "ipc://$T/identity" 2>/dev/null
# Input a stage must refuse: an envelope of a version it does not read, and
# bytes that are not msgpack; the relay sends its dead letters to omni-metrics.
printf '\x81\xa1v\x02\xc1' >"$T/bad.mp"
"$BIN/omni-relay" --dead ">ipc://$T/dead" <"$T/bad.mp" >/dev/null 2>&1 || true

metric() {
    curl -sf "$URL" | awk -v k="$1" '$1 == k { print $2 }'
}
archived() {
    [ "$(metric 'omnibus_messages_total{channel="whatsapp",dir="in",stage="archive"}')" = "$WA_IN" ]
}
check "counts every message the archive passed, by channel and dir" wait_until 20 archived
expect "counts what identity passed too" \
    "$(metric 'omnibus_messages_total{channel="email",dir="in",stage="identity"}')" \
    "$(jq -r 'select(.channel == "email" and .dir == "in") | .id' "$TRAFFIC" | wc -l)"
curl -sf "$URL" >"$T/metrics.txt"
check "promtool accepts the exposition" promtool check metrics <"$T/metrics.txt"
check "stage latency is a histogram with buckets" \
    grep -q '^omnibus_stage_latency_seconds_bucket{stage="archive",le="+Inf"} 340$' "$T/metrics.txt"
check "pipeline latency is measured from ts" grep -q '^omnibus_pipeline_latency_seconds_count{stage="archive"} 340$' \
    "$T/metrics.txt"
check "first response time is measured per channel" grep -q '^omnibus_first_response_seconds_count{channel="whatsapp"}' \
    "$T/metrics.txt"
check "a bad envelope is counted by stage and field" \
    grep -q '^omnibus_dead_total{stage="relay",reason="v"} 1$' "$T/metrics.txt"
check "bytes that are not msgpack are counted too" \
    grep -q '^omnibus_dead_total{stage="relay",reason="not_msgpack"} 1$' "$T/metrics.txt"
expect "unknown paths are 404" "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/nope")" "404"
kill -TERM "$SINK"

# Bot outcomes once per question (its reply, handoff event and off-hours
# notice carry copies of the verdict), queue waits ended by an assign event
# after a bot handoff, and the spool backlog an ingestor reports.
"$BIN/omni-kb" import "$ROOT/examples/kb" --db "$T/kb.db" >/dev/null 2>&1
printf 'agent plantao queues geral capacity 5\n' >"$T/agents.conf"
spawn "$BIN/omni-tap" --in "@ipc://$T/end" --count >/dev/null 2>&1
spawn "$BIN/omni-bot" --kb "$T/kb.db" --hours "mon-fri 08:00-18:00" --in "@ipc://$T/bot" --out "ipc://$T/end" \
    --handoffs "ipc://$T/route" --tap ">ipc://$T/taps" 2>"$T/bot.err"
spawn "$BIN/omni-route" --rules "$ROOT/examples/rules.conf" --agents "$T/agents.conf" --in "@ipc://$T/route" \
    --out "ipc://$T/bot" --tap ">ipc://$T/taps" 2>"$T/route.err"
wait_until 10 test -S "$T/route" -a -S "$T/bot"
sleep 0.5
SUNDAY=$(( $(date -d 'last sunday 15:00 UTC' +%s) * 1000 ))     # the bot's hours are closed
q() {
    jq -cn --arg id "$(printf '01JMETR%019d' "$1")" --arg text "$2" --argjson ts "$SUNDAY" \
        '{id: $id, channel: "whatsapp", dir: "in", from: "whatsapp:+5511987650\($id[-3:])", ts: $ts,
          to: "whatsapp:+551140041234", text: $text, customer: "cus_m\($id[-3:])", conversation: "cnv_m\($id[-3:])"}'
}
{ q 1 "vcs entregam no sabado?"; q 2 "xyzzy plugh frobnicate quux"; } | "$BIN/omni-inject" --out "ipc://$T/route" 2>/dev/null
waited() { [ "$(metric 'omnibus_queue_wait_seconds_count{queue="geral"}')" = 1 ]; }
check "a bot handoff's wait in the queue ends with omni-route's assign event" wait_until 20 waited
expect "bot outcomes: one per question" \
    "$(metric 'omnibus_bot_total{outcome="answered",reason="none"}')/$(metric 'omnibus_bot_total{outcome="handoff",reason="low-confidence"}')" \
    "1/1"
SP=$(free_port)
spawn "$BIN/omni-ingest-webhook" --listen "127.0.0.1:$SP" --spool "$T/spool.db" --out "ipc://$T/nowhere" \
    --acks "ipc://$T/no-acks" --generic-secret s3cret --tap ">ipc://$T/taps" 2>"$T/webhook.err"
wait_until 10 curl -s -o /dev/null "http://127.0.0.1:$SP/"
for n in 1 2 3; do
    body='{"channel":"api","dir":"in","from":"api:crm","text":"pedido '$n'","src_id":"crm-'$n'"}'
    sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac s3cret -r | cut -d' ' -f1)
    curl -s -o /dev/null -H "X-Omnibus-Signature: sha256=$sig" -H 'Content-Type: application/json' \
        --data-binary "$body" "http://127.0.0.1:$SP/generic"
done
backlog() { [ "$(metric 'omnibus_spool_backlog{stage="ingest-webhook"}')" = 3 ]; }
check "the webhook's spool backlog (nothing acks it) is a gauge" wait_until 10 backlog
curl -sf "$URL" >"$T/metrics2.txt"
check "promtool still accepts the exposition" promtool check metrics <"$T/metrics2.txt"
check "stats reports are not counted as messages" sh -c "! grep -q 'dir=\"event\",stage=\"ingest-webhook\"' '$T/metrics2.txt'"
