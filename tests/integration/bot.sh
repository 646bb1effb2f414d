# bot — omni-kb and omni-bot as real processes on a real sqlite knowledge
# base imported from examples/kb: a delivery question gets a reply envelope
# whose id is derived from the question's (and a replay gets the same id),
# a request for a person and a gibberish question hand off with an event,
# off-hours replies say when people are back, other routes pass untouched,
# --handoffs sends handoffs back to omni-route, which assigns an agent,
# the stage runs on ipc sockets, --llm uses a fake OpenAI-compatible server
# on loopback and falls back without losing a message when it fails, is
# slow or is away, and `omni-bot eval` meets the goal on
# examples/questions.jsonl.
. "$(dirname "$0")/../lib.sh"
B=$BIN/omni-bot
KB=$T/kb.db
export TZ=UTC

"$BIN/omni-kb" import "$ROOT/examples/kb" --db "$KB" >"$T/import.out" 2>"$T/import.err"
check "omni-kb import loads examples/kb without complaint" \
    grep -Eq '^imported ([4-9][0-9]|[1-9][0-9]{2,}) articles .*0 refused\)$' "$T/import.out"
expect "the index folds accents (unicode61 remove_diacritics 2)" \
    "$(sqlite3 -batch "$KB" "SELECT count(*) FROM sqlite_master WHERE sql LIKE '%remove_diacritics 2%'")" "1"
expect "omni-kb search ranks the Saturday article first" \
    "$("$BIN/omni-kb" search "vcs entregam no sabado?" --db "$KB" --json | head -1 | jq -r .slug)" \
    "entrega-sabado-domingo"
check "omni-kb search shows scores" \
    grep -Eq '^ 1 +[0-9]+\.[0-9]{3}  reembolso-e-estorno ' <("$BIN/omni-kb" search REEMBOLSO --db "$KB")
"$BIN/omni-kb" search "xyzzy plugh" --db "$KB" >/dev/null 2>&1
expect "omni-kb search exits 1 when nothing matches" "$?" "1"

# A bad article is reported by file:line; the others still load.
mkdir -p "$T/kb2"
cp "$ROOT/examples/kb/frete-gratis.md" "$ROOT/examples/kb/garantia.md" "$T/kb2/"
printf -- '---\nslug: x\ntitle: X\nlang: pt\ncolour: red\nquestions:\n- q\n---\nbody\n' >"$T/kb2/broken.md"
"$BIN/omni-kb" import "$T/kb2" --db "$T/kb2.db" >"$T/i2.out" 2>"$T/i2.err"
expect "a bad article: exit 65" "$?" "65"
check "and is reported as file:line" grep -q "kb2/broken.md:5: unknown key 'colour'" "$T/i2.err"
check "while the good ones load" grep -q '^imported 2 articles .*1 refused' "$T/i2.out"

# ids: a fixed question id, so replays can be made.
qid() { printf '01JD3%021d' "$1"; }
# derived PARENT SALT: ulid_derive in shell: the parent's 10 time
# characters, then 80 bits of SHA-256(parent NUL salt) in Crockford base32.
derived() {
    local hex a b out="" i alphabet=0123456789ABCDEFGHJKMNPQRSTVWXYZ
    hex=$(printf '%s\0%s' "$1" "$2" | openssl dgst -sha256 -binary | head -c 10 | xxd -p)
    for part in "${hex:0:10}" "${hex:10:10}"; do
        a=$((16#$part))
        b=""
        for i in 1 2 3 4 5 6 7 8; do
            b="${alphabet:$((a & 31)):1}$b"
            a=$((a >> 5))
        done
        out="$out$b"
    done
    echo "${1:0:10}$out"
}

MON_NOON=1794841200000      # Monday 16 Nov 2026 15:00 UTC (12:00 in São Paulo)
SAT_AFTERNOON=1794682800000 # Saturday 14 Nov 2026 19:00 UTC (16:00 in São Paulo)
# msg N TEXT [TS] [ROUTE-JSON]: an inbound WhatsApp question, routed to the bot.
msg() {
    local route=${4-'{"target":"bot","queue":"bot","priority":2,"rule":"faq-bot"}'}
    jq -cn --arg id "$(qid "$1")" --arg text "$2" --argjson ts "${3:-$MON_NOON}" --argjson route "$route" \
        '{id: $id, channel: "whatsapp", dir: "in", from: "whatsapp:+5511987650001",
          to: "whatsapp:+551140041234", ts: $ts, text: $text, customer: "cus_ana",
          conversation: "cnv_ana", route: $route} | if $route == null then del(.route) else . end'
}
# has FILE FILTER: FILTER, run on each envelope of FILE (JSON lines), gives
# at least one result, and all are true (jq -e alone looks at the last only).
has() { jq -e -s "map($2) | length > 0 and all" "$1" >/dev/null; }
TZ_SP=America/Sao_Paulo
[ -f /usr/share/zoneinfo/$TZ_SP ] || TZ_SP=UTC
HOURS=(--hours "mon-fri 08:00-20:00, sat 09:00-14:00" --tz "$TZ_SP")
# bot [OPTIONS] < JSONL: inject | bot | tap, JSON lines out; the bot's log
# goes to $T/bot.err.
bot() {
    "$BIN/omni-inject" 2>/dev/null | "$B" --kb "$KB" "$@" 2>"$T/bot.err" | "$BIN/omni-tap"
}

# 1. A delivery question: the reply, then the question with bot = {article,
#    score} (the reply goes first, so that the archive never acks a question
#    whose reply could still be lost).
msg 1 "quanto tempo demora pra chegar em Curitiba?" | bot "${HOURS[@]}" >"$T/a.out"
expect "a reply and its question come out, in that order" \
    "$(jq -r '.dir + " " + .id' "$T/a.out" | tr '\n' ' ')" \
    "out $(derived "$(qid 1)" bot-reply) in $(qid 1) "
expect "the question carries bot = {article, score} and keeps its route" \
    "$(jq -c 'select(.dir == "in") | [.bot.article, (.bot.score > 0), .route.target]' "$T/a.out")" \
    '["prazo-de-entrega",true,"bot"]'
expect "the reply: same channel, customer and conversation, to the asker, from the store, reply_to the question" \
    "$(jq -c 'select(.dir == "out") | [.channel, .customer, .conversation, .to, .from, .reply_to, .bot.article]' "$T/a.out")" \
    "[\"whatsapp\",\"cus_ana\",\"cnv_ana\",\"whatsapp:+5511987650001\",\"whatsapp:+551140041234\",\"$(qid 1)\",\"prazo-de-entrega\"]"
check "the reply's text is the article's answer" \
    has "$T/a.out" 'select(.dir == "out") | .text | startswith("O prazo aparece no carrinho")'
check "the reply's ts is now, and it is stamped by the bot in trace" \
    has "$T/a.out" "select(.dir == \"out\") | .ts > $MON_NOON and (.trace | map(.[0]) | index(\"bot\") != null)"
msg 1 "quanto tempo demora pra chegar em Curitiba?" | bot "${HOURS[@]}" >"$T/a2.out"
expect "the same question replayed yields the same reply id" \
    "$(jq -r 'select(.dir == "out") | .id' "$T/a2.out")" "$(jq -r 'select(.dir == "out") | .id' "$T/a.out")"

# 2. A request for a person hands off at once: no reply in business hours,
#    the question routed to the human queue, and an event.
msg 2 "quero falar com um atendente" | bot "${HOURS[@]}" >"$T/h.out"
expect "asking for a person: a handoff event and the question, no reply" \
    "$(jq -r '.dir' "$T/h.out" | tr '\n' ' ')" "event in "
expect "route goes to the human queue, keeping priority and rule" \
    "$(jq -c 'select(.dir == "in") | .route' "$T/h.out")" \
    '{"target":"geral","queue":"geral","rule":"faq-bot","reason":"asked-for-human","priority":2}'
expect "bot.handoff says why" "$(jq -r 'select(.dir == "in") | .bot.handoff' "$T/h.out")" "asked-for-human"
expect "the event: meta.event = handoff, reply_to the question, derived id" \
    "$(jq -c 'select(.dir == "event") | [.meta.event, .meta.reason, .reply_to, .id, .customer]' "$T/h.out")" \
    "[\"handoff\",\"asked-for-human\",\"$(qid 2)\",\"$(derived "$(qid 2)" bot-handoff)\",\"cus_ana\"]"
for ask in "ATENDENTE" "humano por favor" "agent please" "talk to a person"; do
    expect "\"$ask\" hands off at once" \
        "$(msg 3 "$ask" | bot | jq -r 'select(.dir == "in") | .bot.handoff')" "asked-for-human"
done

for angry in "vou abrir reclamação no Procon" "já mandei 3 mensagens e ninguém responde!!!"; do
    expect "\"$angry\" escalates to people" \
        "$(msg 3 "$angry" | bot | jq -r 'select(.dir == "in") | .bot.handoff')" "escalation"
done

# 3. Gibberish: low confidence, handed off with the event.
msg 4 "asdkjh qwe zzz blorf" | bot "${HOURS[@]}" >"$T/g.out"
expect "gibberish hands off low-confidence with an event" \
    "$(jq -r '.dir + ":" + (.bot.handoff // "-") + ":" + (.route.target // "-") + ":" + (.meta.event // "-")' "$T/g.out" | tr '\n' ' ')" \
    "event:low-confidence:geral:handoff in:low-confidence:geral:- "
msg 4 "asdkjh qwe zzz blorf" | bot "${HOURS[@]}" --handoff-queue suporte >"$T/g2.out"
expect "--handoff-queue names the queue" "$(jq -r 'select(.dir == "in") | .route.queue' "$T/g2.out")" "suporte"

# 4. Off hours (Saturday 16:00 in São Paulo): the handoff also gets a reply
#    that says when people are back; a question the KB knows is answered.
msg 5 "asdkjh qwe zzz blorf" "$SAT_AFTERNOON" | bot "${HOURS[@]}" >"$T/o.out"
expect "off hours: reply, event, question" "$(jq -r '.dir' "$T/o.out" | tr '\n' ' ')" "out event in "
check "the reply says people are back on Monday at 08:00" \
    has "$T/o.out" 'select(.dir == "out") | .text | test("fora do horário.*segunda-feira às 08:00")'
expect "and still hands off to the queue for the morning" \
    "$(jq -r 'select(.dir == "in") | .route.target' "$T/o.out")" "geral"
msg 6 "can I talk to a person?" "$SAT_AFTERNOON" | bot "${HOURS[@]}" >"$T/o2.out"
check "an English request off hours gets the English message" \
    has "$T/o2.out" 'select(.dir == "out") | .text | test("offline.*on Monday at 08:00")'
msg 7 "qual o valor do frete pro meu cep?" "$SAT_AFTERNOON" | bot "${HOURS[@]}" >"$T/o3.out"
expect "off hours, a known question is still answered from the KB" \
    "$(jq -r '.dir + ":" + (.bot.article // "-")' "$T/o3.out" | tr '\n' ' ')" \
    "out:valor-do-frete in:valor-do-frete "
check "a bad --hours is a configuration error" \
    bash -c "! '$B' --kb '$KB' --hours 'someday 9-5' --check 2>/dev/null; [ \$? -eq 0 ]"
"$B" --kb "$KB" --hours "mon-fri 8-18" --check >/dev/null 2>&1
expect "--check passes on a good configuration" "$?" "0"
"$B" --kb "$T/none.db" --check >/dev/null 2>&1
expect "--check fails without a knowledge base (78)" "$?" "78"

# 5. Other routes and directions pass untouched.
{
    msg 8 "qual o valor do frete?" "$MON_NOON" '{"target":"financeiro","queue":"financeiro"}'
    msg 9 "qual o valor do frete?" "$MON_NOON" null
    msg 10 "qual o valor do frete?" | jq -c '.dir = "out" | .to = .from'
} >"$T/p.jsonl"
bot <"$T/p.jsonl" >"$T/p.out"
expect "a queue route, no route, and dir=out pass untouched" \
    "$(jq -c '[.id[-2:], .dir, (.bot // "none")]' "$T/p.out" | tr '\n' ' ')" \
    '["08","in","none"] ["09","in","none"] ["10","out","none"] '
expect "--all also answers messages without a route" \
    "$(bot --all <"$T/p.jsonl" | jq -r 'select(.reply_to) | .reply_to[-2:]')" "09"

# 5b. An e-mail answer threads under the question: meta.in_reply_to is its
#     Message-ID, meta.references its chain then that id.
msg 12 "vcs entregam no sabado?" | jq -c '.channel = "email" | .from = "mailto:ana@example.com"
    | .to = "mailto:atendimento@jabuti.example" | .subject = "Entrega"
    | .meta = {message_id: "<q2@mail.example.com>", in_reply_to: "<a1@jabuti.example>",
               references: "<q1@mail.example.com> <a1@jabuti.example>"}' | bot >"$T/mail.out"
expect "an e-mail answer carries the threading omni-send needs" \
    "$(jq -c 'select(.dir == "out") | [.subject, .meta.in_reply_to, .meta.references]' "$T/mail.out")" \
    '["Re: Entrega","<q2@mail.example.com>","<q1@mail.example.com> <a1@jabuti.example> <q2@mail.example.com>"]'

# 6. As a service on ipc sockets, with the sample traffic routed to the bot.
spawn "$B" --kb "$KB" --all --in "@ipc://$T/bot.in" --out ">ipc://$T/bot.out" 2>"$T/svc.err"
spawn "$BIN/omni-tap" --in "@ipc://$T/bot.out" --idle-exit 1500ms >"$T/svc.out" 2>/dev/null
TAP_PID=$SPAWNED
sleep 0.2
"$BIN/omni-inject" --out ">ipc://$T/bot.in" "$ROOT/examples/traffic.jsonl" 2>/dev/null
wait "$TAP_PID"
IN=$(jq -c 'select(.dir == "in")' "$ROOT/examples/traffic.jsonl" | wc -l)
expect "every envelope of the sample traffic passes through the service" \
    "$(jq -c 'select(.meta.event != "handoff" and (.dir != "out" or .bot == null))' "$T/svc.out" | wc -l)" \
    "$(wc -l <"$ROOT/examples/traffic.jsonl")"
expect "each inbound message got a reply or a handoff event" \
    "$(jq -r 'select(.meta.event == "handoff" or (.dir == "out" and .bot != null)) | .reply_to' "$T/svc.out" | sort -u | wc -l)" \
    "$IN"

# 6b. --handoffs: a copy of each handoff goes back to omni-route's input,
#     which queues the conversation and gives it an agent (an assign event
#     on the main line, through the bot to what follows it).
printf 'agent plantao queues geral capacity 5\n' >"$T/agents.conf"     # no hours: always there
spawn "$BIN/omni-route" --rules "$ROOT/examples/rules.conf" --agents "$T/agents.conf" \
    --in "@ipc://$T/route.in" --out ">ipc://$T/hb.in" 2>"$T/route.err"
spawn "$B" --kb "$KB" --in "@ipc://$T/hb.in" --out ">ipc://$T/hb.out" --handoffs ">ipc://$T/route.in" \
    2>"$T/hb.err"
spawn "$BIN/omni-tap" --in "@ipc://$T/hb.out" --idle-exit 2s >"$T/hb.jsonl" 2>/dev/null
HB_TAP=$SPAWNED
wait_until 10 test -S "$T/route.in" -a -S "$T/hb.in"
msg 31 "xyzzy plugh frobnicate quux" "$(date +%s%3N)" null | jq -c '.conversation = "cnv_hb"' \
    | "$BIN/omni-inject" --out ">ipc://$T/route.in" 2>/dev/null
wait "$HB_TAP"
expect "the router sent the question to the bot, which handed it off" \
    "$(jq -r 'select(.dir == "in") | .bot.handoff' "$T/hb.jsonl")" "low-confidence"
expect "the handoff came back to the router, which gave the conversation an agent" \
    "$(jq -r 'select(.meta.event == "assign") | [.conversation, .meta.queue, .meta.agent] | @tsv' "$T/hb.jsonl")" \
    "$(printf 'cnv_hb\tgeral\tplantao')"
"$B" --kb "$KB" --handoffs - --check >/dev/null 2>"$T/hb-bad.err"
expect "--handoffs - is refused (64)" "$?" "64"

# 7. --llm: a fake OpenAI-compatible server on loopback.
FAKE=$T/fake_llm
if ! ${CC:-cc} -std=c11 -D_GNU_SOURCE -O1 -o "$FAKE" "$ROOT/tests/fakes/fake_llm.c" \
    $(pkg-config --cflags --libs libmicrohttpd) 2>"$T/fake.cc"; then
    not_ok "the fake LLM server builds"
    sed 's/^/#   /' "$T/fake.cc"
fi
# fake NAME ARGS...: starts a fake server; its URL is in $URL.
fake() {
    local name=$1; shift
    spawn "$FAKE" --port-file "$T/$name.port" --log "$T/$name.log" "$@"
    printf -v "PID_$name" '%s' "$SPAWNED"
    wait_until 5 test -s "$T/$name.port"
    URL="http://127.0.0.1:$(cat "$T/$name.port")"
}
fake ok --mode answer
msg 11 "quanto tempo demora pra chegar em Curitiba?" | bot --llm "$URL" --llm-model tiny-test >"$T/l.out"
expect "--llm: the reply is the model's answer, from the top article" \
    "$(jq -r 'select(.dir == "out") | .text' "$T/l.out")" "FAKE-LLM answer from prazo-de-entrega"
expect "bot.llm marks it; the reply id is still derived from the question" \
    "$(jq -c 'select(.dir == "out") | [.bot.article, .bot.llm, .id]' "$T/l.out")" \
    "[\"prazo-de-entrega\",true,\"$(derived "$(qid 11)" bot-reply)\"]"
check "the request: the model, the articles as system context, the question as user" \
    jq -e '.model == "tiny-test" and .messages[0].role == "system"
           and (.messages[0].content | contains("O prazo aparece no carrinho"))
           and .messages[1] == {"role": "user", "content": "quanto tempo demora pra chegar em Curitiba?\n"}' \
    "$T/ok.log"
msg 12 "quero falar com um atendente" | bot --llm "$URL" >/dev/null
expect "a request for a person never reaches the model" "$(wc -l <"$T/ok.log")" "1"
msg 17 "vcs entregam em Fortaleza?" | bot --llm "$URL" >"$T/u.out"
expect "a question the KB is unsure of is not sent to the model by default" \
    "$(wc -l <"$T/ok.log") $(jq -r 'select(.dir == "in") | .bot.handoff' "$T/u.out")" "1 low-confidence"
msg 17 "vcs entregam em Fortaleza?" | bot --llm "$URL" --llm-unsure >"$T/u.out"
expect "with --llm-unsure the model may answer it" \
    "$(jq -r 'select(.dir == "out") | [.bot.llm, (.text | startswith("FAKE-LLM"))] | @csv' "$T/u.out")" "true,true"

fake fail --mode fail
fake slow --mode answer --delay-ms 3000
fake junk --mode garbage
fake declines --mode handoff
CLOSED_URL="http://127.0.0.1:$(cat "$T/fail.port")"
for case in "fail:500" "slow:delay past --llm-timeout" "junk:a body that is not JSON"; do
    name=${case%%:*}
    msg 13 "quanto tempo demora pra chegar em Curitiba?" \
        | bot --llm "http://127.0.0.1:$(cat "$T/$name.port")" --llm-timeout 300ms >"$T/f.out"
    expect "--llm failing ($(echo "${case#*:}")): the KB answer goes out, nothing is lost" \
        "$(jq -r '.dir + ":" + (.bot.article // "-") + ":" + (.text[0:17])' "$T/f.out" | tr '\n' ' ')" \
        "out:prazo-de-entrega:O prazo aparece n in:prazo-de-entrega:quanto tempo demo "
    check "and the failure is logged" grep -q "llm failed id=$(qid 13)" "$T/bot.err"
done
# Nothing listens on a port once its server is gone: connection refused.
kill "$PID_fail"
sleep 0.2
{ msg 14 "quanto tempo demora pra chegar em Curitiba?"; msg 15 "asdkjh qwe zzz blorf"; } \
    | bot --llm "$CLOSED_URL" --llm-timeout 300ms >"$T/r.out"
expect "--llm refused: the KB answer and the handoff still go out" \
    "$(jq -r '.dir + ":" + (.bot.article // .bot.handoff // "-")' "$T/r.out" | tr '\n' ' ')" \
    "out:prazo-de-entrega in:prazo-de-entrega event:low-confidence in:low-confidence "
check "the fallback is counted at exit" grep -q "llm_failed=1" "$T/bot.err"
msg 16 "quanto tempo demora pra chegar em Curitiba?" \
    | bot --llm "http://127.0.0.1:$(cat "$T/declines.port")" >"$T/d.out"
expect "a model that says HANDOFF hands off" \
    "$(jq -r 'select(.dir == "in") | .bot.handoff' "$T/d.out")" "llm-declined"

# 8. The labelled questions: precision >= 0.9 at containment >= 0.6.
"$B" eval "$ROOT/examples/questions.jsonl" --kb "$KB" >"$T/eval.out" 2>"$T/eval.err"
expect "omni-bot eval runs" "$?" "0"
sed 's/^/# /' "$T/eval.out" | head -7
check "eval prints precision, containment and handoff recall" \
    grep -q '^handoff recall: ' "$T/eval.out"
P=$(awk '/^precision:/ {print $2}' "$T/eval.out")
C=$(awk '/^containment:/ {print $2}' "$T/eval.out")
check "eval meets the goal: precision $P >= 0.9 at containment $C >= 0.6" \
    awk -v p="$P" -v c="$C" 'BEGIN { exit !(p >= 0.9 && c >= 0.6) }'
check "eval lists the mistakes" grep -q '^mistakes ([0-9]*):' "$T/eval.out"
