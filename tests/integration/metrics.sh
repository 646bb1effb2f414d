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
