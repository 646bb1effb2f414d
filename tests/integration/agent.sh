# agent — omni-agent on a real archive built by omni-identity and
# omni-archive from the sample traffic plus a few routed messages: the
# queue by priority then wait, the customer's history across channels,
# replies on the channel the customer last used (e-mail threading, then
# WhatsApp), replies stored by the archive (first response), claim, close
# and note events, ZeroMQ output, and the exit codes.
. "$(dirname "$0")/../lib.sh"
export TZ=UTC
TRAFFIC=$ROOT/examples/traffic.jsonl
AG=$BIN/omni-agent
DB=$T/a.db

# q SQL: one query on the archive.
q() { sqlite3 -batch "$DB" "$1"; }
# feed FILE: JSON lines through identity into the archive; a test line
# that says whether every process of the pipeline did its part.
feed() {
    "$BIN/omni-inject" "$1" 2>"$T/feed.err" | "$BIN/omni-identity" --db "$T/id.db" 2>>"$T/feed.err" \
        | "$BIN/omni-archive" --db "$DB" >/dev/null 2>>"$T/feed.err"
    local st="${PIPESTATUS[*]}"
    if [ "$st" = "0 0 0" ]; then
        ok "inject | identity | archive took $(basename "$1")"
    else
        not_ok "inject | identity | archive took $(basename "$1") (exit statuses $st)"
        grep -v ': info: ' "$T/feed.err" | sed 's/^/#   /' | head -20
    fi
}
# store FILE: envelopes (msgpack) into the archive.
store() { "$BIN/omni-archive" --db "$DB" <"$1" >/dev/null 2>>"$T/store.err"; }
# tap FILE: the envelopes of FILE as JSON lines.
tap() { "$BIN/omni-tap" <"$1" 2>/dev/null; }
# agent ARGS...: omni-agent on the archive.
agent() { "$AG" "$@" --archive "$DB"; }
# conv_of TS: the conversation of the message stored with that ts.
conv_of() { q "SELECT conversation FROM messages WHERE ts = $1"; }
now_ms() { date +%s%3N; }

# 1. The archive: the sample traffic (Ana's phone and e-mail linked by an
#    agent first), then messages that omni-route would have queued.
"$BIN/omni-identity" link tel:+5511987654321 mailto:ana.souza@example.com --by agent:marina \
    --db "$T/id.db" >/dev/null 2>&1
feed "$TRAFFIC"
cat >"$T/routed.jsonl" <<'LINES'
{"channel":"webchat","dir":"in","from":"webchat:s-q4","to":"webchat:jabuti.example","ts":1795280000000,"text":"Oi, alguém aí?","route":{"target":"suporte","queue":"suporte"}}
{"channel":"webchat","dir":"in","from":"webchat:s-q4","to":"webchat:jabuti.example","ts":1795280060000,"text":"alô? \u001b[2J\u001b[31mvermelho","route":{"target":"suporte","queue":"suporte"}}
{"channel":"email","dir":"in","from":"mailto:bot.only@example.com","to":"mailto:atendimento@jabuti.example","ts":1795285000000,"subject":"Horário","text":"Que horas vocês abrem?","route":{"target":"bot"}}
{"channel":"whatsapp","dir":"in","from":"whatsapp:+5511900000003","to":"whatsapp:+551140041234","ts":1795290000000,"text":"A tampa da panela veio quebrada","route":{"target":"suporte","queue":"suporte","priority":1}}
{"channel":"telegram","dir":"in","from":"telegram:900002","to":"telegram:jabuti_bot","ts":1795300000000,"text":"Preciso do estorno do pedido 48700","route":{"target":"financeiro","queue":"financeiro","priority":2}}
{"channel":"sms","dir":"in","from":"tel:+5511900000001","to":"tel:+551140041234","ts":1795310000000,"text":"Cobraram duas vezes no cartão","route":{"target":"financeiro","queue":"financeiro","priority":2}}
{"channel":"email","dir":"in","from":"mailto:ana.souza@example.com","to":"mailto:atendimento@jabuti.example","ts":1795320000000,"subject":"Nota fiscal do pedido 48213","text":"Oi, ainda não recebi a nota fiscal do pedido 48213.\n\nAna\n\n> Em 20/11, Jabuti escreveu:\n> segue o pedido","src_id":"<ana-nf@mail.example.com>","meta":{"message_id":"<ana-nf@mail.example.com>","in_reply_to":"<nf-1@jabuti.example>","references":"<nf-0@jabuti.example> <nf-1@jabuti.example>"},"route":{"target":"financeiro","queue":"financeiro","priority":2}}
LINES
feed "$T/routed.jsonl"
expect "the archive holds the traffic and the routed messages" "$(q 'SELECT count(*) FROM messages')" "347"
if [ "$(q 'SELECT count(*) FROM messages')" != 347 ]; then
    exit 1      # everything below needs that archive
fi
Q4=$(conv_of 1795280000000)
QBOT=$(conv_of 1795285000000)
Q3=$(conv_of 1795290000000)
Q2=$(conv_of 1795300000000)
Q1=$(conv_of 1795310000000)
ANA_NEW=$(conv_of 1795320000000)
ANA=$(q "SELECT customer FROM messages WHERE ts = 1795320000000")
ANA_OLD=$(conv_of 1795027449588)      # WhatsApp, SMS, web chat and e-mail; her last word an e-mail
expect "Ana's e-mail and her linked phone are one customer" \
    "$(q "SELECT count(DISTINCT customer) FROM messages WHERE \"from\" IN ('mailto:ana.souza@example.com', 'whatsapp:+5511987654321', 'tel:+5511987654321')")" "1"
expect "the routed conversations are queued (and one is the bot's)" \
    "$(q "SELECT group_concat(status, ' ') FROM (SELECT status FROM conversations WHERE id IN ('$Q1', '$Q2', '$Q3', '$Q4', '$QBOT', '$ANA_NEW') ORDER BY id)" | tr ' ' '\n' | sort | uniq -c | awk '{print $2 "=" $1}' | tr '\n' ' ')" \
    "bot=1 queued=5 "

# 2. queue: highest priority first, then the longest waiting.
agent queue --json >"$T/queue.json" 2>"$T/queue.err"
expect "queue: exits 0" "$?" "0"
expect "queue: priority 2 by wait, then priority 1" \
    "$(jq -r '.conversation' "$T/queue.json" | head -n 4 | tr '\n' ' ')" "$Q2 $Q1 $ANA_NEW $Q3 "
check "queue: priorities never rise, waits within a priority never shorten" \
    jq -e -s '[range(1; length) as $i | .[$i - 1] as $a | .[$i] as $b
               | ($a.priority > $b.priority) or ($a.priority == $b.priority
                  and ($b.waiting_since == null or ($a.waiting_since != null and $a.waiting_since <= $b.waiting_since)))]
              | all' "$T/queue.json"
check "queue: the bot's and the closed conversations are not waiting" \
    jq -e -s --arg bot "$QBOT" --arg old "$ANA_OLD" 'map(select(.conversation == $bot or .conversation == $old)) | length == 0' "$T/queue.json"
check "queue: conversations nothing routed are listed only while an inbound message waits for an answer" \
    jq -e -s 'map(select(.status == "open")) | length > 10 and all(.last.dir == "in" and .waiting_since != null and .queue == null)' "$T/queue.json"
check "queue: customer, handle, channels, wait and the last message" \
    jq -e -s --arg c "$Q1" 'map(select(.conversation == $c))[0] | .queue == "financeiro" and .priority == 2
        and (.customer | startswith("cus_")) and .handle == "tel:+5511900000001" and .channels == ["sms"]
        and .waiting_since == 1795310000000 and .wait_ms > 0 and .last.text == "Cobraram duas vezes no cartão"' "$T/queue.json"
expect "queue --queue suporte: priority 1 before 0" \
    "$(agent queue --queue suporte --json 2>/dev/null | jq -r .conversation | tr '\n' ' ')" "$Q3 $Q4 "
expect "queue --queue financeiro" \
    "$(agent queue --queue financeiro --json 2>/dev/null | jq -r .conversation | tr '\n' ' ')" "$Q2 $Q1 $ANA_NEW "
agent queue --queue financeiro >"$T/queue.txt" 2>/dev/null
expect "queue: readable, one line per conversation under a header" \
    "$(awk 'NR > 1 {print $1, $3, $4, $5, $6}' "$T/queue.txt" | tr '\n' '|')" \
    "2 financeiro $Q2 telegram telegram:900002|2 financeiro $Q1 sms tel:+5511900000001|2 financeiro $ANA_NEW email mailto:ana.souza@example.com|"
check "queue: the header names the columns" grep -q '^ PRI  WAIT    QUEUE .* LAST MESSAGE$' "$T/queue.txt"
agent queue --queue suporte >"$T/queue4.txt" 2>/dev/null
check "queue: control characters from customers never reach the terminal" \
    sh -c "grep -q 'alô? .*vermelho' '$T/queue4.txt' && ! grep -q \$(printf '\\033') '$T/queue4.txt'"
expect "queue --limit" "$(agent queue --json --limit 2 2>/dev/null | wc -l)" "2"

# 3. reply: on the channel of the customer's last inbound message. In her
#    older conversation Ana wrote on e-mail, web chat, SMS and WhatsApp, and
#    last by e-mail: the reply is an e-mail to her, threaded under hers.
t0=$(now_ms)
agent reply "$ANA_OLD" "Olá, Ana! A chaleira nova já foi despachada." --as marina --out - >"$T/r1.mp" 2>"$T/r1.err"
expect "reply: exits 0" "$?" "0"
t1=$(now_ms)
tap "$T/r1.mp" >"$T/r1.json"
LAST_MAIL=$(q "SELECT id FROM messages WHERE ts = 1795027449588")
check "reply after her last e-mail: dir=out by e-mail to her mailto: handle, from ours" \
    jq -e --arg cus "$ANA" --arg conv "$ANA_OLD" '.dir == "out" and .channel == "email"
        and .to == "mailto:ana.souza@example.com" and .from == "mailto:atendimento@jabuti.example"
        and .customer == $cus and .conversation == $conv and .text == "Olá, Ana! A chaleira nova já foi despachada."
        and .meta.agent == "marina" and .v == 1' "$T/r1.json"
check "reply: a new ULID, ts now, reply_to her last inbound message" \
    jq -e --arg last "$LAST_MAIL" --argjson t0 "$t0" --argjson t1 "$t1" \
        '(.id | test("^[0-9A-HJKMNP-TV-Z]{26}$")) and .ts >= $t0 and .ts <= $t1 and .reply_to == $last' "$T/r1.json"
check "reply by e-mail: subject Re: (not twice), In-Reply-To and References in meta" \
    jq -e '.subject == "Re: Pedido 48213 - tentativa de entrega que NÃO aconteceu"
        and .meta.in_reply_to == "<CA+NxD70DFJiBoGWI+S7hZ=ZtcBq8xQq@mail.example.com>"
        and .meta.references == "<b31f6aa8413c85eb.c3f2b285@jabuti.example> <CA+NxD70DFJiBoGWI+S7hZ=ZtcBq8xQq@mail.example.com>"' "$T/r1.json"
agent reply "$ANA_NEW" "Oi Ana, vou verificar a nota fiscal." --as agent:marina --out - >"$T/r2.mp" 2>/dev/null
tap "$T/r2.mp" >"$T/r2.json"
check "reply to a new e-mail: Re: subject, References = her chain and her Message-ID" \
    jq -e --arg conv "$ANA_NEW" '.channel == "email" and .conversation == $conv and .to == "mailto:ana.souza@example.com"
        and .subject == "Re: Nota fiscal do pedido 48213" and .meta.in_reply_to == "<ana-nf@mail.example.com>"
        and .meta.references == "<nf-0@jabuti.example> <nf-1@jabuti.example> <ana-nf@mail.example.com>"
        and .meta.agent == "marina"' "$T/r2.json"

# 4. The reply through omni-archive: stored as sent, the first response
#    of the conversation set, the customer no longer waiting.
expect "before: no first response" "$(q "SELECT ifnull(first_response, '-') FROM conversations WHERE id = '$ANA_NEW'")" "-"
agent reply "$ANA_NEW" "Oi Ana, vou verificar a nota fiscal." --as marina --out - 2>/dev/null \
    | "$BIN/omni-archive" --db "$DB" >"$T/r3.mp" 2>>"$T/store.err"
tap "$T/r3.mp" >"$T/r3.json"
RID=$(jq -r .id "$T/r3.json")
expect "reply | omni-archive: stored, out by e-mail, reply_to her e-mail" \
    "$(q "SELECT dir, channel, \"to\", reply_to = (SELECT id FROM messages WHERE ts = 1795320000000) FROM messages WHERE id = '$RID'")" \
    "out|email|mailto:ana.souza@example.com|1"
expect "reply | omni-archive: the conversation's first response is the reply" \
    "$(q "SELECT first_response FROM conversations WHERE id = '$ANA_NEW'")" "$(jq -r .ts "$T/r3.json")"
check "queue: an answered conversation waits no longer (after the others of its priority)" \
    sh -c "'$AG' queue --queue financeiro --json --archive '$DB' 2>/dev/null | jq -e -s --arg c '$ANA_NEW' \
        'map(.conversation) == [\"$Q2\", \"$Q1\", \$c] and (.[2].waiting_since == null)' >/dev/null"

# 5. Ana writes again, now on WhatsApp, in the same conversation: the
#    reply goes by WhatsApp to her WhatsApp handle.
cat >"$T/wa.jsonl" <<'LINES'
{"channel":"whatsapp","dir":"in","from":"whatsapp:+5511987654321","to":"whatsapp:+551140041234","ts":1795320600000,"text":"pode mandar a nota por aqui mesmo","meta":{"wa_id":"5511987654321","profile_name":"Ana Souza"}}
LINES
feed "$T/wa.jsonl"
expect "her WhatsApp message continues the conversation" "$(conv_of 1795320600000)" "$ANA_NEW"
agent reply "$ANA_NEW" "Claro, Ana! Segue em instantes." --as marina --out - 2>/dev/null >"$T/r4.mp"
tap "$T/r4.mp" >"$T/r4.json"
check "reply after her WhatsApp message: by WhatsApp, to her WhatsApp handle, no e-mail threading" \
    jq -e --arg last "$(q 'SELECT id FROM messages WHERE ts = 1795320600000')" --arg conv "$ANA_NEW" \
        '.channel == "whatsapp" and .to == "whatsapp:+5511987654321" and .from == "whatsapp:+551140041234"
         and .reply_to == $last and .conversation == $conv and .subject == null
         and .meta == {"agent": "marina"}' "$T/r4.json"
echo "Só um minuto,
já te mando." | agent reply "$ANA_NEW" - --as marina --out - 2>/dev/null >"$T/r5.mp"
expect "reply TEXT - reads the text from stdin" "$(tap "$T/r5.mp" | jq -r .text)" "Só um minuto,
já te mando."

# 6. claim: an assign event the archive and omni-route understand.
agent claim "$Q2" --as paulo --out - >"$T/c.mp" 2>"$T/c.err"
expect "claim: exits 0" "$?" "0"
tap "$T/c.mp" >"$T/c.json"
check "claim: dir=event, meta.event=assign, meta.agent, meta.conversation, route.agent" \
    jq -e --arg c "$Q2" '.dir == "event" and .meta.event == "assign" and .meta.agent == "paulo"
        and .meta.conversation == $c and .conversation == $c and .from == "agent:paulo" and .channel == "telegram"
        and .route.agent == "paulo" and .route.queue == "financeiro" and .route.priority == 2 and .to == null
        and (.customer | startswith("cus_"))' "$T/c.json"
store "$T/c.mp"
expect "claim | omni-archive: the conversation is assigned" "$(q "SELECT status FROM conversations WHERE id = '$Q2'")" "assigned"
expect "claim: an assigned conversation leaves the queue" \
    "$(agent queue --queue financeiro --json 2>/dev/null | jq -r .conversation | tr '\n' ' ')" "$Q1 $ANA_NEW "

# 7. close: a close event with who and why.
agent close "$Q1" --as marina --reason "estorno feito" --out - >"$T/x.mp" 2>/dev/null
tap "$T/x.mp" >"$T/x.json"
check "close: dir=event, meta.event=close, meta.conversation, meta.by, meta.reason" \
    jq -e --arg c "$Q1" '.dir == "event" and .meta.event == "close" and .meta.conversation == $c
        and .conversation == $c and .meta.by == "agent:marina" and .meta.reason == "estorno feito"
        and .to == null and .text == null' "$T/x.json"
store "$T/x.mp"
expect "close | omni-archive: closed, and out of the queue" \
    "$(q "SELECT status, closed_at IS NOT NULL FROM conversations WHERE id = '$Q1'") $(agent queue --queue financeiro --json 2>/dev/null | jq -r .conversation)" \
    "closed|1 $ANA_NEW"

# 8. note: an internal event, never a message to the customer.
agent note "$ANA_NEW" "cliente prefere receber a NF por WhatsApp" --as marina --out - >"$T/n.mp" 2>/dev/null
tap "$T/n.mp" >"$T/n.json"
check "note: dir=event, meta.event=note, meta.text; no text, no recipient" \
    jq -e --arg c "$ANA_NEW" '.dir == "event" and .meta.event == "note"
        and .meta.text == "cliente prefere receber a NF por WhatsApp" and .meta.agent == "marina"
        and .meta.conversation == $c and .conversation == $c and .text == null and .to == null' "$T/n.json"
store "$T/n.mp"

# 9. show: the customer's whole history, every conversation, in time order.
agent show "$ANA" >"$T/show.txt" 2>"$T/show.err"
expect "show: exits 0" "$?" "0"
"$BIN/omni-archive" history "$ANA" --db "$DB" --json \
    | jq -r '.channel + "/" + (if .dir == "event" then .meta.event else .dir end)' >"$T/want.seq"
awk '/^20[0-9][0-9]-[01][0-9]-[0-3][0-9] / {print $3 "/" $4}' "$T/show.txt" >"$T/got.seq"
expect "show: every message and event of the customer, in the archive's time order" \
    "$(md5sum <"$T/got.seq")" "$(md5sum <"$T/want.seq")"
expect "show: across channels" "$(cut -d/ -f1 "$T/got.seq" | sort -u | tr '\n' ' ')" "api email sms webchat whatsapp "
check "show: times never go back" \
    sh -c "grep -E '^[0-9]{4}-' '$T/show.txt' | cut -c1-16 | sort -c"
expect "show: the four conversations, oldest first" \
    "$(grep '^── conversation' "$T/show.txt" | awk '{print $3}' | tr '\n' ' ')" \
    "$(q "SELECT id FROM conversations WHERE customer = '$ANA' ORDER BY (SELECT min(ts) FROM messages m WHERE m.conversation = conversations.id)" | tr '\n' ' ')"
check "show: the head names the customer and her handles" \
    sh -c "head -n 1 '$T/show.txt' | grep -q '^customer $ANA · 4 conversations · .*mailto:ana.souza@example.com' \
           && head -n 1 '$T/show.txt' | grep -q 'whatsapp:+5511987654321'"
check "show: the note, with its text, after her WhatsApp message" \
    sh -c "grep -A1 'note   by marina' '$T/show.txt' | grep -q '^    cliente prefere receber a NF por WhatsApp$' \
           && tail -n 3 '$T/show.txt' | grep -q 'note   by marina'"
check "show: the subject of an e-mail, its quoted history folded" \
    sh -c "grep -q '^    Subject: Nota fiscal do pedido 48213$' '$T/show.txt' && grep -q '^    > (2 quoted lines)$' '$T/show.txt'"
check "show: the agent's replies, with who sent them" \
    grep -q '^2026-.*email     out    mailto:ana.souza@example.com  by marina$' "$T/show.txt"
expect "show CONVERSATION is the same history" "$(agent show "$ANA_NEW" 2>/dev/null | md5sum)" "$(md5sum <"$T/show.txt")"
expect "show HANDLE is the same history" "$(agent show whatsapp:+5511987654321 2>/dev/null | md5sum)" "$(md5sum <"$T/show.txt")"
expect "show --json: the stored envelopes" "$(agent show "$ANA" --json 2>/dev/null | jq -r .id | md5sum)" \
    "$("$BIN/omni-archive" history "$ANA" --db "$DB" --json | jq -r .id | md5sum)"
check "show: control characters from customers never reach the terminal" \
    sh -c "'$AG' show '$Q4' --archive '$DB' | grep -q 'alô? .*vermelho' && ! '$AG' show '$Q4' --archive '$DB' | grep -q \$(printf '\\033')"

# 10. ZeroMQ: the envelope reaches a running archive before omni-agent exits.
spawn "$BIN/omni-archive" --db "$DB" --in "@ipc://$T/archive.sock" --batch-ms 10ms >/dev/null 2>"$T/svc.err"
SVC=$SPAWNED
wait_until 10 test -S "$T/archive.sock"
agent note "$Q3" "ligar para o cliente amanhã" --as paulo --out ">ipc://$T/archive.sock" 2>"$T/z.err"
expect "note --out >ipc://: exits 0" "$?" "0"
noted() { [ "$(q "SELECT count(*) FROM messages WHERE conversation = '$Q3' AND dir = 'event'")" = 1 ]; }
check "note --out >ipc://: stored by the running archive" wait_until 10 noted
kill -TERM "$SVC"
wait "$SVC" 2>/dev/null

# 11. Exit codes.
agent reply cnv_nobody "oi" --as marina --out - >/dev/null 2>&1
expect "reply to an unknown conversation exits 65" "$?" "65"
for cmd in claim close; do
    agent $cmd cnv_nobody --as marina --out - >/dev/null 2>&1
    expect "$cmd of an unknown conversation exits 65" "$?" "65"
done
agent note cnv_nobody "x" --as marina --out - >/dev/null 2>&1
expect "note on an unknown conversation exits 65" "$?" "65"
agent show nobody@nowhere >/dev/null 2>&1
expect "show of an unknown customer exits 65" "$?" "65"
VOICE=$(q "SELECT id FROM conversations WHERE channels = 'voice' LIMIT 1")
agent reply "$VOICE" "oi" --as marina --out - >/dev/null 2>"$T/voice.err"
expect "reply where the only inbound message is a phone call exits 65" "$?" "65"
"$AG" queue --archive "$T/missing.db" >/dev/null 2>&1
expect "a missing archive exits 69" "$?" "69"
agent reply "$ANA_NEW" "oi" --as marina --out ">ipc://$T/nobody.sock" --timeout 300ms >/dev/null 2>"$T/down.err"
expect "an endpoint nobody serves exits 69" "$?" "69"
check "... and says so" grep -q 'nobody took the envelope' "$T/down.err"
agent reply "$ANA_NEW" "oi" --out - >/dev/null 2>&1
expect "reply without --as exits 64" "$?" "64"
agent reply "$ANA_NEW" "oi" --as marina >/dev/null 2>&1
expect "reply without --out exits 64" "$?" "64"
agent reply "$ANA_NEW" --as marina --out - >/dev/null 2>&1
expect "reply without text exits 64" "$?" "64"
agent claim "$Q3" --as "marina silva" --out - >/dev/null 2>&1
expect "a bad agent name exits 64" "$?" "64"
agent queue --bogus >/dev/null 2>&1
expect "an unknown option exits 64" "$?" "64"
"$AG" frobnicate >/dev/null 2>&1
expect "an unknown command exits 64" "$?" "64"
check "--help lists the commands" sh -c "'$AG' --help | grep -q '^  reply  CONVERSATION TEXT'"
check "COMMAND --help lists its options" sh -c "'$AG' close --help | grep -q -- '--reason'"
