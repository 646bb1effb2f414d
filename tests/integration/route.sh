# route — omni-route as real processes: the sample traffic through
# inject | route | tap goes where a person would send it; a conversation
# with a person stays with that agent until a close event frees the agent
# for the next in line; agents are picked least loaded first, ties in turn,
# and presence events count; --check passes the sample files and names the
# line and column of a broken one; SIGHUP loads new rules and keeps the old
# ones when the new file is broken; explain names the rule that matched.
. "$(dirname "$0")/../lib.sh"
TRAFFIC=$ROOT/examples/traffic.jsonl
RULES=$ROOT/examples/rules.conf
AGENTS=$ROOT/examples/agents.conf
R=$BIN/omni-route

# route [OPTIONS] < JSONL: inject | route | tap, JSON lines out; the route
# log goes to $T/route.err.
route() {
    "$BIN/omni-inject" 2>/dev/null | "$R" "$@" 2>>"$T/route.err" | "$BIN/omni-tap"
}

# id N: a fixed envelope id (a ULID).
id() { printf '01JD4%021d' "$1"; }

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

# field FILE ID JQ: the value of JQ for the envelope with that id.
field() { jq -r --arg id "$(id "$2")" "select(.id == \$id) | $3" "$1"; }

# 1. The sample files pass --check; a broken file fails, naming line:column.
check "--check passes the sample rules and agents" \
    "$R" --check --rules "$RULES" --agents "$AGENTS"
cat >"$T/bad.conf" <<'RULES'
# a typo on line 3
rule humano: text ~ "atendente" -> queue geral
rule whats: chanel whatsapp -> bot
rule fim: * -> quee geral
RULES
"$R" --check --rules "$T/bad.conf" >"$T/bad.out" 2>&1
expect "--check of a broken file exits 78" "$?" "78"
check "and names line and column of each error" \
    grep -q "omni-route: error: $T/bad.conf:3:13: unknown condition 'chanel' (did you mean 'channel'?)" "$T/bad.out"
check "every error, not only the first" grep -q "$T/bad.conf:4:16: unknown action 'quee'" "$T/bad.out"
printf 'agent ana queues geral capacity muitas\n' >"$T/bad-agents.conf"
"$R" --check --rules "$RULES" --agents "$T/bad-agents.conf" >"$T/bad.out" 2>&1
expect "--check of a broken agents file exits 78" "$?" "78"
check "and names its line and column" grep -q "bad-agents.conf:1:33: capacity needs a number" "$T/bad.out"
printf 'agent ana queues geral\n' >"$T/few-agents.conf"
"$R" --check --rules "$RULES" --agents "$T/few-agents.conf" >"$T/few.out" 2>&1
check "--check warns of queues no agent serves" grep -q "warning: no agent in .* serves queue 'financeiro'" "$T/few.out"
"$R" --rules "$T/bad.conf" </dev/null >/dev/null 2>&1
expect "omni-route will not start on a broken file (78)" "$?" "78"

# 2. The sample traffic goes where a person would send it.
route --rules "$RULES" --agents "$AGENTS" <"$TRAFFIC" >"$T/traffic.out"
expect "every message and event passes" \
    "$(jq -r 'select(.meta.event != "assign") | .dir' "$T/traffic.out" | sort | uniq -c | awk '{printf "%s %s; ", $1, $2}')" \
    "9 event; 320 in; 11 out; "
expect "every inbound message has a route, nothing else does" \
    "$(jq -c 'select(.meta.event != "assign") | [.dir, (.route != null)]' "$T/traffic.out" | sort | uniq -c | awk '{printf "%s %s; ", $1, $2}')" \
    "9 [\"event\",false]; 320 [\"in\",true]; 11 [\"out\",false]; "
routed() { jq -r --arg t "$1" 'select(.dir == "in" and .text == $t) | .route | "\(.target) \(.rule)"' "$T/traffic.out" | head -1; }
expect "'quero falar com um atendente' goes to geral" "$(routed 'quero falar com um atendente')" "geral humano"
expect "and 'NÃO quero falar com robô' stays there" "$(routed 'NÃO quero falar com robô')" "geral humano"
expect "'QUERO MEU REEMBOLSO…' goes to financeiro" \
    "$(jq -r 'select(.text != null and (.text | startswith("QUERO MEU REEMBOLSO"))) | .route | "\(.queue) \(.priority) \(.rule)"' "$T/traffic.out")" \
    "financeiro 2 reembolso"
expect "a customer already queued who mentions Procon goes up (a keep rule)" \
    "$(routed 'Vou abrir reclamacao no Procon hoje.')" "geral fila-urgente"
expect "a delivery question goes to the bot" "$(routed 'vcs entregam sábado?' | cut -d' ' -f1)" "bot"
expect "a wrong item goes to trocas" "$(routed 'mandei sms tb. veio o produto errado, olha a foto acima')" "trocas trocas"
expect "a bulk quote goes to b2b" \
    "$(jq -r 'select(.subject == "Cotação para restaurante - Bistrô Lima") | .route.queue' "$T/traffic.out")" "b2b"
expect "charged twice goes to financeiro" \
    "$(routed 'preciso falar com um atendente sobre um pagamento cobrado em duplicidade')" "financeiro reembolso"
expect "on the Consciência Negra holiday the bot answers" \
    "$(routed 'vcs tem loja em Brasília?')" "bot fora-do-horario"
check "agents are assigned from the sample agents file" \
    jq -se '[.[] | .route.agent // empty] | unique | length >= 4' "$T/traffic.out"
printf 'QUERO MEU REEMBOLSO\nquero falar com um atendente\nvcs entregam sábado?\n' \
    | jq -Rc '{channel: "whatsapp", dir: "in", from: "whatsapp:+55119\(input_line_number)", text: ., ts: 1794837600000}' \
    | route --rules "$RULES" >"$T/three.out"
expect "alone: REEMBOLSO -> financeiro, atendente -> geral, delivery -> bot" \
    "$(jq -r '.route.target' "$T/three.out" | tr '\n' ' ')" "financeiro geral bot "
expect "without --agents nobody is assigned" "$(jq -r '.route.agent // "none"' "$T/three.out" | sort -u)" "none"

# 3. Sticky, close, and the next in line.
cat >"$T/two.conf" <<'AGENTS'
agent ana queues geral capacity 1
agent bia queues geral capacity 1
AGENTS
{
    msg 1 whatsapp:+5511900000001 "quero falar com um atendente"
    msg 2 whatsapp:+5511900000001 "oi? é sobre o pedido 48213"
    msg 3 whatsapp:+5511900000002 "atendente por favor"
    msg 4 whatsapp:+5511900000003 "falar com um humano"
    msg 5 whatsapp:+5511900000001 "ainda está aí?"
    event 6 '{"event":"close","conversation_of":"whatsapp:+5511900000001","by":"agent:ana"}'
    msg 7 whatsapp:+5511900000001 "obrigado!" 1794838200000
} >"$T/sticky.jsonl"
route --rules "$RULES" --agents "$T/two.conf" <"$T/sticky.jsonl" >"$T/sticky.out"
expect "a conversation asking for a person goes to ana" "$(field "$T/sticky.out" 1 '.route | "\(.queue) \(.agent)"')" "geral ana"
expect "its next message stays with ana (sticky)" \
    "$(field "$T/sticky.out" 2 '.route | "\(.queue) \(.agent) \(.sticky) \(.rule)"')" "geral ana true humano"
expect "the next conversation goes to bia" "$(field "$T/sticky.out" 3 '.route.agent')" "bia"
expect "a third waits in the queue (no agent)" \
    "$(field "$T/sticky.out" 4 '.route | "\(.target) \(.agent // "none")"')" "geral none"
expect "ana keeps the first one" "$(field "$T/sticky.out" 5 '.route.agent')" "ana"
expect "the close event passes untouched" "$(field "$T/sticky.out" 6 '"\(.meta.event) \(.route // "no route")"')" "close no route"
expect "the freed agent takes the one waiting: an assign event after the close" \
    "$(jq -r 'if .meta.event then "\(.meta.event) \(.meta.agent // "") \(.meta.conversation_of)" else empty end' "$T/sticky.out" | tr '\n' ';')" \
    "close  whatsapp:+5511900000001;assign ana whatsapp:+5511900000003;"
check "the assign event is a valid envelope with the route" \
    jq -se 'map(select(.meta.event == "assign"))[0] | (.id | length) == 26 and .dir == "event"
            and .route == {"target": "geral", "queue": "geral", "agent": "ana", "priority": 1, "rule": "humano",
                           "reason": "asked for a human", "sticky": true}' "$T/sticky.out"
expect "after the close the first customer starts anew (here: the bot)" \
    "$(field "$T/sticky.out" 7 '.route | "\(.target) \(.sticky // false)"')" "bot false"
route --rules "$RULES" --agents "$T/two.conf" <"$T/sticky.jsonl" >"$T/sticky2.out"
expect "a replay derives the same assign event id" \
    "$(jq -r 'select(.meta.event == "assign") | .id' "$T/sticky.out")" \
    "$(jq -r 'select(.meta.event == "assign") | .id' "$T/sticky2.out")"

# A handoff event of omni-bot, sent back to omni-route, queues the conversation.
{
    msg 8 whatsapp:+5511900000004 "qual o prazo de entrega?"
    printf '{"id":"%s","channel":"whatsapp","dir":"event","from":"whatsapp:+5511900000004","ts":1794837700000,"reply_to":"%s","route":{"target":"geral","queue":"geral","rule":"padrao","priority":0},"meta":{"event":"handoff","reason":"low-confidence","queue":"geral"}}\n' \
        "$(id 9)" "$(id 8)"
} >"$T/handoff.jsonl"
route --rules "$RULES" --agents "$T/two.conf" <"$T/handoff.jsonl" >"$T/handoff.out"
expect "a bot handoff queues the conversation: an agent takes it" \
    "$(jq -r 'select(.meta.event == "assign") | "\(.meta.agent) \(.meta.conversation_of) \(.route.reason)"' "$T/handoff.out")" \
    "ana whatsapp:+5511900000004 low-confidence"
msg 10 whatsapp:+5511900000004 "alô?" 1794837800000 >>"$T/handoff.jsonl"
route --rules "$RULES" --agents "$T/two.conf" <"$T/handoff.jsonl" >"$T/handoff.out"
expect "and its next message goes to that agent" \
    "$(field "$T/handoff.out" 10 '.route | "\(.target) \(.agent) \(.sticky)"')" "geral ana true"

# 4. Least loaded first, ties in turn; presence counts.
cat >"$T/three.conf" <<'AGENTS'
agent ana queues geral capacity 2
agent bia queues geral capacity 2
agent caio queues geral capacity 2
AGENTS
{
    for n in 1 2 3 4; do msg "1$n" "whatsapp:+551191000000$n" "atendente"; done
    event 15 '{"event":"close","conversation_of":"whatsapp:+5511910000002"}'
    msg 16 whatsapp:+5511910000006 "atendente"
    event 17 '{"event":"presence","agent":"caio","status":"offline"}'
    msg 18 whatsapp:+5511910000008 "atendente"
    msg 19 whatsapp:+5511910000009 "atendente"
} >"$T/rr.jsonl"
route --rules "$RULES" --agents "$T/three.conf" <"$T/rr.jsonl" >"$T/rr.out"
expect "four conversations: ana, bia, caio, then ana again (round robin)" \
    "$(for n in 11 12 13 14; do field "$T/rr.out" $n '.route.agent'; done | tr '\n' ' ')" "ana bia caio ana "
expect "after bia's close, bia is the least loaded" "$(field "$T/rr.out" 16 '.route.agent')" "bia"
expect "caio offline: bia (tied with him) takes the next, then nobody is free" \
    "$(for n in 18 19; do field "$T/rr.out" $n '.route.agent // "none"'; done | tr '\n' ' ')" "bia none "

# 5. SIGHUP loads new rules; a broken file keeps the old ones.
cat >"$T/live.conf" <<'RULES'
rule tudo: * -> bot
RULES
spawn "$BIN/omni-tap" --in "@ipc://$T/out" --tick 50ms >"$T/live.out" 2>"$T/tap.err"
spawn "$R" --in "@ipc://$T/in" --out ">ipc://$T/out" --rules "$T/live.conf" 2>"$T/live.err"
ROUTE_PID=$SPAWNED
send() { msg "$1" whatsapp:+5511920000001 "$2" | "$BIN/omni-inject" --out ">ipc://$T/in" 2>/dev/null; }
lines() { [ "$(wc -l <"$T/live.out")" -ge "$1" ]; }
send 21 "quero um atendente"
wait_until 10 lines 1
expect "before SIGHUP: the bot" "$(field "$T/live.out" 21 '.route.target')" "bot"
cat >"$T/live.conf" <<'RULES'
rule humano: text ~ "atendente" -> queue geral priority 1
rule tudo: * -> bot
RULES
kill -HUP "$ROUTE_PID"
wait_until 10 grep -q "reload: 2 rules" "$T/live.err"
send 22 "outro atendente"
wait_until 10 lines 2
expect "after SIGHUP: the new rule" "$(field "$T/live.out" 22 '.route | "\(.target) \(.rule)"')" "geral humano"
printf 'rule quebrada: chanel x -> bot\n' >"$T/live.conf"
kill -HUP "$ROUTE_PID"
wait_until 10 grep -q "the rules loaded before stay in force" "$T/live.err"
check "a broken file on SIGHUP is named with line:column" grep -q "live.conf:1:16: unknown condition 'chanel'" "$T/live.err"
send 23 "mais um atendente"
wait_until 10 lines 3
expect "and the rules before it stay in force" "$(field "$T/live.out" 23 '.route.rule')" "humano"
check "omni-route is still running" kill -0 "$ROUTE_PID"

# 6. explain says which rule matched and why.
msg 31 whatsapp:+5511930000001 "QUERO MEU REEMBOLSO" >"$T/one.jsonl"
"$R" explain "$T/one.jsonl" --rules "$RULES" >"$T/explain.out" 2>&1
expect "explain exits 0" "$?" "0"
check "explain names the matching rule" grep -q "^    rule reembolso ($RULES:[0-9]*): MATCH$" "$T/explain.out"
check "with each condition true or false" grep -q '^      true   text ~ "reembols|.*(text has "REEMBOLS")$' "$T/explain.out"
check "and the rules before it that did not match" grep -q "^    rule vip (.*): no match$" "$T/explain.out"
check "and the route it sets" grep -q '=> route {"target":"financeiro","queue":"financeiro","priority":2,"rule":"reembolso"' "$T/explain.out"
"$R" explain --rules "$RULES" --agents "$AGENTS" <"$TRAFFIC" >"$T/explain-all.out" 2>&1
expect "explain reads the whole sample traffic from stdin" "$?" "0"
expect "one story per envelope" "$(grep -c '^\[[0-9]*\] ' "$T/explain-all.out")" "340"
check "explain shows the closes" grep -q "close: conversation whatsapp:+5521998765432 (queued, queue financeiro) closed" "$T/explain-all.out"
printf '{"dir":"in",\n' | "$R" explain --rules "$RULES" >/dev/null 2>"$T/explain-bad.err"
expect "a bad line exits 65" "$?" "65"
check "and is named by its line" grep -q "omni-route: error: -:1: bad JSON" "$T/explain-bad.err"
