# routestate — omni-route --state as real processes on a real sqlite file:
# a conversation queued or with an agent stays there across kill -9 and a
# restart, and agents' loads come back with it; a re-sent id gets exactly
# the route its first copy had and changes nothing, even after a restart
# and a close; SIGTERM and the end of stdin pass on everything held; old
# decisions are pruned and idle conversations leave the file too; an agent
# who left the agents file gives their conversations back to the queue; a
# file that is not a route state is refused with exit 78.
. "$(dirname "$0")/../lib.sh"
RULES=$ROOT/examples/rules.conf
R=$BIN/omni-route

# id N: a fixed envelope id (a ULID).
id() { printf '01JD5%021d' "$1"; }

# msg N FROM TEXT [TS]: an inbound WhatsApp message as a JSON line; the
# default time is Monday 2026-11-16 10:00 in São Paulo (within hours).
msg() {
    printf '{"id":"%s","channel":"whatsapp","dir":"in","from":"%s","to":"whatsapp:+551140041234","ts":%s,"text":"%s"}\n' \
        "$(id "$1")" "$2" "${4:-1794837600000}" "$3"
}

# event N META: an event envelope from an agent.
event() {
    printf '{"id":"%s","channel":"whatsapp","dir":"event","from":"agent:ana","ts":1794837900000,"meta":%s}\n' \
        "$(id "$1")" "$2"
}

# field FILE ID JQ: JQ of the envelope with that id (the last copy of it).
field() { jq -r --arg id "$(id "$2")" "select(.id == \$id) | $3" "$1" | tail -1; }
# copies FILE ID: how many envelopes with that id went out.
copies() { jq -r --arg id "$(id "$2")" 'select(.id == $id) | .id' "$1" | wc -l; }
q() { sqlite3 -batch -cmd '.timeout 5000' "$@"; }

cat >"$T/agents.conf" <<'AGENTS'
agent ana queues geral capacity 2
agent bia queues geral capacity 2
AGENTS

# 1. --help names --state and says what happens without it.
"$R" --help >"$T/help.out" 2>&1
check "--help offers --state" grep -q -- "--state" "$T/help.out"
check "and says that without it the state lives in memory only" grep -q "memory only" "$T/help.out"

# 2. A file that is not a route state is refused, by name, with 78; an
#    unusable path with 69.
printf 'these are not the conversations you are looking for\n%.0s' $(seq 100) >"$T/text.db"
"$R" --rules "$RULES" --state "$T/text.db" </dev/null >/dev/null 2>"$T/bad.err"
expect "--state on a text file exits 78" "$?" "78"
check "and the error names the file" grep -q "omni-route: error: --state $T/text.db: file is not a database" "$T/bad.err"
q "$T/other.db" "CREATE TABLE conversations (id TEXT PRIMARY KEY, customer TEXT)"
"$R" --rules "$RULES" --state "$T/other.db" </dev/null >/dev/null 2>"$T/other.err"
expect "--state on another tool's database exits 78" "$?" "78"
check "and says so" grep -q -- "--state $T/other.db: not an omni-route state" "$T/other.err"
"$R" --rules "$RULES" --state "$T/no/such/dir/route.db" </dev/null >/dev/null 2>"$T/nodir.err"
expect "--state in a directory that does not exist exits 69" "$?" "69"
check "naming the file" grep -q -- "--state $T/no/such/dir/route.db: unable to open" "$T/nodir.err"
"$R" --rules "$RULES" --state "$T/x.db" --batch 0 </dev/null >/dev/null 2>&1
expect "--batch 0 is a usage error" "$?" "64"

# 3. Restart continuity: queued and assigned conversations, kill -9, the
#    same --state; stickiness and agents' loads come back.
spawn "$BIN/omni-tap" --in "@ipc://$T/out" --tick 50ms >"$T/live.out" 2>"$T/tap.err"
start_route() {
    spawn "$R" --in "@ipc://$T/in" --out ">ipc://$T/out" --rules "$RULES" --agents "$T/agents.conf" \
        --state "$T/route.db" --tick 100ms "$@" 2>>"$T/route.err"
    ROUTE_PID=$SPAWNED
}
# kill9 PID: kill -9, and reap it quietly.
kill9() { kill -KILL "$1"; { wait "$1"; } 2>/dev/null; }
send() { "$BIN/omni-inject" --out ">ipc://$T/in" 2>>"$T/inject.err"; }
lines() { [ "$(wc -l <"$T/live.out")" -ge "$1" ]; }
start_route
{
    msg 1 whatsapp:+5511940000001 "quero falar com um atendente"
    msg 2 whatsapp:+5511940000002 "QUERO MEU REEMBOLSO"
} | send
check "two messages pass" wait_until 20 lines 2
expect "the first goes to ana" "$(field "$T/live.out" 1 '.route | "\(.queue) \(.agent)"')" "geral ana"
expect "the second waits in financeiro (no agent serves it)" \
    "$(field "$T/live.out" 2 '.route | "\(.queue) \(.agent // "none")"')" "financeiro none"
FIRST1=$(field "$T/live.out" 1 '.route | tojson')
check "their decisions are in the file" test "$(q "$T/route.db" 'SELECT count(*) FROM decisions')" = 2
kill9 "$ROUTE_PID"
start_route
{
    msg 3 whatsapp:+5511940000001 "tudo bem?" 1794837660000
    msg 4 whatsapp:+5511940000002 "oi" 1794837660000
    msg 5 whatsapp:+5511940000003 "atendente por favor" 1794837660000
} | send
check "after kill -9 and a restart, the next three pass" wait_until 20 lines 5
expect "a conversation with ana stays with her (sticky)" \
    "$(field "$T/live.out" 3 '.route | "\(.queue) \(.agent) \(.sticky) \(.rule)"')" "geral ana true humano"
expect "a queued conversation stays in its queue" \
    "$(field "$T/live.out" 4 '.route | "\(.queue) \(.agent // "none") \(.sticky)"')" "financeiro none true"
expect "ana's load came back: the least loaded is bia" "$(field "$T/live.out" 5 '.route.agent')" "bia"
check "the log says what came back" grep -q "info: --state $T/route.db: 2 conversations (1 waiting)$" "$T/route.err"

# 4. A re-sent id gets the route of its first copy, and changes nothing.
event 6 '{"event":"close","conversation_of":"whatsapp:+5511940000001","by":"agent:ana"}' | send
msg 1 whatsapp:+5511940000001 "quero falar com um atendente" | send
check "the close and the re-sent message pass" wait_until 20 lines 7
expect "the re-sent copy has the first copy's route, byte for byte" \
    "$(field "$T/live.out" 1 '.route | tojson')" "$FIRST1"
msg 7 whatsapp:+5511940000007 "atendente" 1794837960000 | send
check "a new conversation passes" wait_until 20 lines 8
expect "the re-send did not take ana again: the new conversation goes to her" \
    "$(field "$T/live.out" 7 '.route.agent')" "ana"
FIRST3=$(field "$T/live.out" 3 '.route | tojson')
kill9 "$ROUTE_PID"
start_route
msg 3 whatsapp:+5511940000001 "tudo bem?" 1794837660000 | send
event 6 '{"event":"close","conversation_of":"whatsapp:+5511940000001","by":"agent:ana"}' | send
msg 8 whatsapp:+5511940000008 "atendente" 1794837990000 | send
check "after another kill -9, the re-sends and a new message pass" wait_until 20 lines 11
expect "a message re-sent after a close and a restart keeps its route (fresh, it would go to the bot)" \
    "$(field "$T/live.out" 3 '.route | tojson')" "$FIRST3"
expect "each copy went out once per sending" "$(copies "$T/live.out" 3) $(copies "$T/live.out" 6)" "2 2"
expect "loads and turns came back: ana 1, bia 1, and after ana it is bia's turn" \
    "$(field "$T/live.out" 8 '.route.agent')" "bia"
check "omni-route is still running" kill -0 "$ROUTE_PID"

# 5. Presence and an agent who left the file.
event 9 '{"event":"presence","agent":"bia","status":"offline"}' | send
check "the presence event passes" wait_until 20 lines 12
kill -TERM "$ROUTE_PID"
wait "$ROUTE_PID"
expect "SIGTERM exits 0" "$?" "0"
printf 'agent bia queues geral capacity 3\nagent caio queues geral capacity 1\n' >"$T/agents.conf"
start_route
check "with ana gone from the agents file, her conversation is given again" wait_until 20 lines 13
expect "it went back to the queue, and caio (bia is offline) took it" \
    "$(jq -r 'select(.meta.event == "assign") | "\(.meta.agent) \(.meta.conversation_of)"' "$T/live.out")" \
    "caio whatsapp:+5511940000007"
msg 10 whatsapp:+5511940000007 "alô?" 1794838000000 | send
msg 11 whatsapp:+5511940000011 "atendente" 1794838000000 | send
check "and messages pass" wait_until 20 lines 15
expect "its next message goes to caio" "$(field "$T/live.out" 10 '.route | "\(.agent) \(.sticky)"')" "caio true"
expect "bia is still offline after the restart (and caio full): the new one waits" \
    "$(field "$T/live.out" 11 '.route | "\(.queue) \(.agent // "none")"')" "geral none"
check "the log says who waits again" grep -q "1 conversations wait again: their agent is no longer in" "$T/route.err"

# 6. Held until committed: while omni-route holds a batch open (it has the
#    database's write lock), nothing of it has gone out; SIGTERM commits
#    it, passes it on, and exits 0.
kill -TERM "$ROUTE_PID"
wait "$ROUTE_PID"
start_route --batch 1000 --batch-ms 1m
locked() { ! sqlite3 "$T/route.db" "BEGIN IMMEDIATE; ROLLBACK;" >/dev/null 2>&1; }
msg 21 whatsapp:+5511941000021 "oi, tudo bem?" 1794838100000 | send
check "a message is held in an open batch" wait_until 20 locked
expect "and has not gone out" "$(copies "$T/live.out" 21)" "0"
check "(the batch is still open)" locked
kill -TERM "$ROUTE_PID"
wait "$ROUTE_PID"
expect "SIGTERM exits 0" "$?" "0"
sent() { [ "$(copies "$T/live.out" "$1")" -ge 1 ]; }
check "and passed the held message on" wait_until 20 sent 21
expect "after committing its decision" "$(q "$T/route.db" "SELECT count(*) FROM decisions WHERE id = '$(id 21)'")" "1"

# 7. Through pipes: the end of stdin passes on what is held.
{
    for n in 31 32 33 34; do msg "$n" "whatsapp:+55119420000$n" "atendente"; done
} | "$BIN/omni-inject" 2>/dev/null \
    | "$R" --rules "$RULES" --agents "$T/agents.conf" --state "$T/pipe.db" --batch-ms 1m 2>"$T/pipe.err" \
    | "$BIN/omni-tap" >"$T/pipe.out"
expect "the end of stdin passes every envelope on" "$(wc -l <"$T/pipe.out")" "4"
expect "with its decision stored" "$(q "$T/pipe.db" 'SELECT count(*) FROM decisions')" "4"

# 8. Old decisions are pruned; idle conversations leave the file (here at
#    a restart, whose clock goes on from the latest message stored).
start_prune() {
    spawn "$R" --in "@ipc://$T/in2" --out ">ipc://$T/out" --rules "$RULES" --state "$T/prune.db" \
        --decisions-keep 1s --idle 1h --tick 50ms 2>>"$T/prune.err"
    PRUNE_PID=$SPAWNED
}
start_prune
{
    msg 41 whatsapp:+5511943000041 "atendente" 1794837600000
    msg 42 whatsapp:+5511943000042 "atendente" 1794845000000
} | "$BIN/omni-inject" --out ">ipc://$T/in2" 2>/dev/null
check "two conversations two hours apart pass" wait_until 20 sent 42
kill -TERM "$PRUNE_PID"
wait "$PRUNE_PID"
start_prune
keys() { [ "$(q "$T/prune.db" 'SELECT group_concat(key) FROM conversations')" = "$1" ]; }
decisions() { [ "$(q "$T/prune.db" 'SELECT count(*) FROM decisions')" = "$1" ]; }
check "the one idle past --idle leaves the file; the other stays" wait_until 20 keys whatsapp:+5511943000042
check "decisions older than --decisions-keep are pruned" wait_until 20 decisions 0

# 9. explain works as before, with no --state.
msg 51 whatsapp:+5511944000051 "QUERO MEU REEMBOLSO" | "$R" explain --rules "$RULES" >"$T/explain.out" 2>&1
expect "explain exits 0" "$?" "0"
check "and shows the route" grep -q '=> route {"target":"financeiro"' "$T/explain.out"
