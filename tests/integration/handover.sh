# handover — the hop from omni-archive to omni-send is durable
# (DESIGN.md, "Delivery"): with omni-archive --out-acks and omni-send
# --acks, a reply the archive has stored stays owed until omni-send's
# outbox has it, and is passed on again when a crash of either process
# took it out of a queue. Real processes on ipc://, the fake WhatsApp
# Cloud API on loopback, the two sqlite files inspected directly.
. "$(dirname "$0")/../lib.sh"
A=$T/a.db
O=$T/o.db
PHONE=1234567890

qa() { sqlite3 -batch -cmd '.timeout 2000' "$A" "$1"; }
qo() { sqlite3 -batch -cmd '.timeout 2000' "$O" "$1"; }
owed() { qa 'SELECT count(*) FROM owed'; }
# is N CMD...: CMD prints N (for wait_until, which runs CMD anew each time).
is() { local want=$1; shift; [ "$("$@")" = "$want" ]; }
stored() { qa "SELECT count(*) FROM messages WHERE id >= '$(id "$1")'"; }
id() { printf '01JHAND%019d' "$1"; }
# reply N: a WhatsApp reply envelope (JSON line).
reply() {
    printf '{"id":"%s","channel":"whatsapp","dir":"out","from":"whatsapp:+551140041234","to":"whatsapp:+55119%08d","text":"resposta %d","customer":"cus-%d","conversation":"conv-%d"}\n' \
        "$(id "$1")" "$1" "$1" "$1" "$1"
}
# question N: an inbound message (not owed to anyone).
question() {
    printf '{"id":"%s","channel":"whatsapp","dir":"in","from":"whatsapp:+55119%08d","to":"whatsapp:+551140041234","text":"pergunta %d"}\n' \
        "$(id "$1")" "$1" "$1"
}
# delivered: distinct replies the provider accepted; twice: accepted more than once.
delivered() { jq -r 'select(.status < 300) | .headers["idempotency-key"]' "$T/graph.jsonl" | sort -u | wc -l; }
twice() { jq -r 'select(.status < 300) | .headers["idempotency-key"]' "$T/graph.jsonl" | sort | uniq -d | wc -l; }

PYTHONDONTWRITEBYTECODE=1 spawn python3 "$ROOT/tests/fakes/fake_graph.py" --ready "$T/graph.port" \
    --record "$T/graph.jsonl" --token WA-TOKEN --phone-id "$PHONE" 2>>"$T/fake.err"
wait_until 10 test -s "$T/graph.port" || echo "# fake_graph did not start"
touch "$T/graph.jsonl"
GRAPH=$(cat "$T/graph.port")

start_send() {
    spawn "$BIN/omni-send" --db "$O" --in "@ipc://$T/send" --out none --acks "ipc://$T/send-acks" \
        --graph-api "http://127.0.0.1:$GRAPH" --whatsapp-phone-id "$PHONE" --whatsapp-token WA-TOKEN \
        --retry-min 100ms --tick 100ms --log-level info 2>>"$T/send.err"
    SEND=$SPAWNED
    wait_until 10 test -S "$T/send" || echo "# omni-send did not start"
}
start_archive() {
    spawn "$BIN/omni-archive" --db "$A" --in "@ipc://$T/archive" --out ">ipc://$T/send" \
        --out-acks "ipc://$T/send-acks" --resend-after 300ms --tick 100ms --log-level info "$@" 2>>"$T/archive.err"
    ARCHIVE=$SPAWNED
    wait_until 10 test -S "$T/archive" || echo "# omni-archive did not start"
}
inject() { "$BIN/omni-inject" --out ">ipc://$T/archive" 2>>"$T/inject.err"; }

# 1. The options are checked.
"$BIN/omni-archive" --db "$T/x.db" --in - --out - --out-acks - </dev/null >/dev/null 2>"$T/bad.err"
expect "--out-acks - is refused (64)" "$?" 64
check "... with a reason naming it" grep -q -- "--out-acks: .-. (stdin/stdout)" "$T/bad.err"
"$BIN/omni-archive" --db "$T/x.db" --in - --out - --out-acks ipc://x --resend-after 5ms </dev/null >/dev/null 2>"$T/bad.err"
expect "--resend-after under 100ms is refused (64)" "$?" 64
"$BIN/omni-send" --db "$T/y.db" --in - --out - --acks 'tcp://nope' </dev/null >/dev/null 2>"$T/bad.err"
expect "omni-send --acks with a bad endpoint is refused (64)" "$?" 64

# 2. omni-send acks what its outbox holds, in the archive's ack format
#    (omni-archive acks reads it).
start_send
"$BIN/omni-archive" acks "ipc://$T/send-acks" --max 1 --idle-exit 10s >"$T/acks.out" 2>"$T/acks.err" &
ACKS=$!
sleep 0.5       # the subscriber connects (PUB drops what comes before)
reply 1 | "$BIN/omni-inject" --out ">ipc://$T/send" 2>>"$T/inject.err"
wait "$ACKS"
expect "omni-send --acks publishes the id once the outbox has it" "$(cat "$T/acks.out")" "$(id 1)"
wait_until 20 is 1 delivered

# 3. Both die with replies in their queues (omni-send stopped once the
#    archive's output is connected, so that the archive takes all 25):
#    the replies are owed in the archive's database and reach the provider
#    once each after both restart. Inbound messages are never owed.
start_archive
reply 100 | inject     # once omni-send has this one, the archive's output is connected
wait_until 20 is 2 delivered
wait_until 20 is 0 owed
kill -STOP "$SEND"
{ for n in $(seq 101 120); do reply "$n"; done; for n in $(seq 121 125); do question "$n"; done; } | inject
wait_until 10 is 26 stored 0
expect "20 replies stored are owed, the 5 inbound messages are not" "$(owed)" 20
kill -KILL "$ARCHIVE" "$SEND"; wait "$ARCHIVE" "$SEND" 2>/dev/null
start_send
start_archive
wait_until 20 is 0 owed
expect "after the restart nothing is owed" "$(owed)" 0
wait_until 20 is 22 delivered
expect "every reply of the killed archive reached the provider (20 + the first two)" "$(delivered)" 22
check "the archive said it passed them on again" grep -q "20 replies not acknowledged by omni-send: passing them on again" "$T/archive.err"

# 4. omni-send dies with replies in its queue (stopped, then kill -9): the
#    archive passes them on again after --resend-after; each is delivered once.
kill -STOP "$SEND"
for n in $(seq 201 210); do reply "$n"; done | inject
wait_until 10 is 10 stored 201
sleep 0.5       # passed on, sitting in the stopped process's queue
expect "the 10 replies are owed while omni-send has not stored them" "$(owed)" 10
kill -KILL "$SEND"; wait "$SEND" 2>/dev/null
start_send
wait_until 20 is 0 owed
wait_until 20 is 32 delivered
expect "the replies lost in omni-send's queue reached the provider" "$(delivered)" 32
expect "no reply was delivered twice" "$(twice)" 0
check "the archive passed them on again" grep -q "passing on again [0-9]* replies omni-send has not acknowledged" "$T/archive.err"
expect "the outbox holds each reply once" "$(qo 'SELECT count(*) || "/" || count(DISTINCT id) FROM outbox')" "32/32"

# 5. Without --out-acks nothing is owed (and the table is there, empty).
spawn "$BIN/omni-archive" --db "$T/plain.db" --in "@ipc://$T/plain" --out none --tick 100ms 2>>"$T/plain.err"
PLAIN=$SPAWNED
wait_until 10 test -S "$T/plain"
reply 301 | "$BIN/omni-inject" --out ">ipc://$T/plain" 2>>"$T/inject.err"
plain() { sqlite3 -batch -cmd '.timeout 2000' "$T/plain.db" "SELECT count(*) FROM $1"; }
wait_until 10 is 1 plain messages
expect "without --out-acks a reply is stored and not owed" "$(plain owed)" 0

# 6. Everything stops with 0 on SIGTERM.
for p in "$ARCHIVE" "$SEND" "$PLAIN"; do kill -TERM "$p"; done
rcs=
for p in "$ARCHIVE" "$SEND" "$PLAIN"; do wait "$p"; rcs="$rcs$?"; done
expect "omni-archive and omni-send exit 0 on SIGTERM" "$rcs" 000
check "the databases are sound" test "$(qa 'PRAGMA integrity_check')/$(qo 'PRAGMA integrity_check')" = ok/ok
