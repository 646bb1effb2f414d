# send — omni-send as a real process against the fake channel servers on
# loopback (tests/fakes): a reply per channel in the provider's wire
# format, receipts as events, replays delivered once, 429 (Retry-After and
# Telegram's retry_after) and 5xx retried, 400 dead-lettered with its
# reason, replies to one person kept in order, pending retries surviving a
# restart, the crash window (maybe-delivered; SMTP re-sent with the same
# Message-ID), e-mail threading, the CLI and the configuration checks.
. "$(dirname "$0")/../lib.sh"
FAKES=$ROOT/tests/fakes
S=$BIN/omni-send
DB=$T/o.db

# q SQL: one query on the outbox.
q() { sqlite3 -batch "$DB" "$1"; }
# state ID: the outbox state of a reply.
state() { q "SELECT state FROM outbox WHERE id = '$1'"; }
is_state() { [ "$(state "$1")" = "$2" ]; }
# id N: a ULID for test reply N.
id() { printf '01JSEND%019d' "$1"; }
# fake NAME ARGS...: starts tests/fakes/fake_NAME.py; its port is in
# $T/NAME.port, its records in $T/NAME.jsonl.
fake() {
    local name=$1; shift
    PYTHONDONTWRITEBYTECODE=1 spawn python3 "$FAKES/fake_$name.py" --ready "$T/$name.port" --record "$T/$name.jsonl" "$@" \
        2>>"$T/fakes.err"
    touch "$T/$name.jsonl"
    wait_until 10 test -s "$T/$name.port" || echo "# fake_$name did not start"
}
port() { cat "$T/$1.port"; }
# ctl PORT JSON: fakelib's control request.
ctl() { curl -sf -d "$2" "http://127.0.0.1:$1/_control" >/dev/null; }
# sent_count FILE ID: 2xx answers a fake gave to requests carrying reply ID.
sent_count() {
    jq -s --arg id "$2" '[.[] | select(.headers["idempotency-key"] == $id and .status < 300)] | length' "$1"
}
tries() { jq -s --arg id "$2" '[.[] | select(.headers["idempotency-key"] == $id)] | length' "$1"; }
# inject JSON...: reply envelopes (JSON lines) into the running omni-send.
inject() { printf '%s\n' "$@" | "$BIN/omni-inject" --out ">ipc://$T/in" 2>>"$T/inject.err"; }
# receipt ID: the receipt event of reply ID (JSON), from the collector.
receipt() { jq -c --arg id "$1" 'select(.meta.event == "receipt" and .meta.reply == $id)' "$T/receipts.jsonl"; }
has_receipt() { [ -n "$(receipt "$1")" ]; }

fake graph --token WA-TOKEN --page-token PAGE-TOKEN --phone-id 1234567890 --reject-to 5511900000400
fake twilio --sid AC0123456789abcdef --token TW-TOKEN
fake smtp --control-ready "$T/smtp.ctl" --user mailer --password secret
fake telegram --token 777:TG-TOKEN
GRAPH=$(port graph); TWILIO=$(port twilio); SMTP=$(port smtp); SMTPC=$(cat "$T/smtp.ctl")
TG=$(port telegram)
printf 'WA-TOKEN\n' >"$T/wa.token"
printf '  secret  \n' >"$T/smtp.pass"

SEND_ARGS=(--db "$DB" --in "@ipc://$T/in" --out "@ipc://$T/out" --webchat ">ipc://$T/webchat"
    --telegram-api "http://127.0.0.1:$TG" --telegram-token 777:TG-TOKEN
    --graph-api "http://127.0.0.1:$GRAPH" --whatsapp-phone-id 1234567890
    --whatsapp-token-file "$T/wa.token" --messenger-token PAGE-TOKEN
    --twilio-api "http://127.0.0.1:$TWILIO" --twilio-sid AC0123456789abcdef --twilio-token TW-TOKEN
    --twilio-from +15005550006
    --smtp-url "smtp://127.0.0.1:$SMTP" --smtp-from "Jabuti Atendimento <atendimento@jabuti.example>"
    --smtp-user mailer --smtp-password-file "$T/smtp.pass"
    --retry-min 100ms --retry-max 2s --timeout 10s --tick 100ms --log-level info)
start_send() {
    spawn "$S" "${SEND_ARGS[@]}" "$@" 2>>"$T/send.err"
    SEND_PID=$SPAWNED
    wait_until 10 test -S "$T/in" || echo "# omni-send did not start"
}
stop_send() {
    kill -TERM "$SEND_PID" 2>/dev/null
    wait "$SEND_PID" 2>/dev/null
}

# 0. The configuration: --check, and what it refuses.
check "--check accepts the test configuration" "$S" "${SEND_ARGS[@]}" --check
"$S" --db "$T/x.db" --whatsapp-token T --check >/dev/null 2>&1
expect "a WhatsApp token without a phone id is a usage error" "$?" "64"
"$S" --db "$T/x.db" --twilio-token T --twilio-token-file "$T/wa.token" --check >/dev/null 2>&1
expect "a token and a token file for one provider is a usage error" "$?" "64"
"$S" --db "$T/x.db" --telegram-token-file "$T/nothing" --check >/dev/null 2>&1
expect "an unreadable token file is a configuration error" "$?" "78"
"$S" --db "$T/x.db" --smtp-url "smtp://127.0.0.1:1" --check >/dev/null 2>&1
expect "--smtp-url without --smtp-from is a usage error" "$?" "64"

# The receipts collector and the web chat gateway's --replies (PULL).
spawn "$BIN/omni-tap" --in ">ipc://$T/out" >"$T/receipts.jsonl" 2>>"$T/tap.err"
spawn "$BIN/omni-tap" --in "@ipc://$T/webchat" >"$T/webchat.jsonl" 2>>"$T/tap.err"
start_send

# 1. One reply per channel, each in its provider's wire format.
inject \
  '{"id":"'"$(id 1)"'","channel":"whatsapp","dir":"out","from":"whatsapp:+551140041234","to":"whatsapp:+5511987654321","text":"Olá Ana, seu pedido saiu 🚚","customer":"cus-ana","conversation":"conv-1","reply_to":"01JSENDQQQQQQQQQQQQQQQQQQQ"}' \
  '{"id":"'"$(id 2)"'","channel":"messenger","dir":"out","to":"messenger:6543210987654321","text":"Hi Bruno!","customer":"cus-bruno","conversation":"conv-2"}' \
  '{"id":"'"$(id 3)"'","channel":"telegram","dir":"out","to":"telegram:900001","text":"Seu estorno foi aprovado","customer":"cus-caio","conversation":"conv-3"}' \
  '{"id":"'"$(id 4)"'","channel":"sms","dir":"out","to":"tel:+5511912345678","text":"Codigo: 4821 & obrigado","customer":"cus-dani"}' \
  '{"id":"'"$(id 5)"'","channel":"voice","dir":"out","to":"tel:+5511912340000","text":"Resumo da sua ligação: troca aprovada"}' \
  '{"id":"'"$(id 6)"'","channel":"email","dir":"out","to":"mailto:ana.souza@example.com","subject":"Pedido 48213 atrasado","text":"Olá Ana,\n.\nSeu pedido já saiu. = igual\n-- \nJabuti","customer":"cus-ana","conversation":"conv-1","meta":{"message_id":"<cafe.2@mail.example.com>","references":"<cafe.0@mail.example.com> <cafe.1@mail.example.com>"}}' \
  '{"id":"'"$(id 7)"'","channel":"webchat","dir":"out","to":"webchat:sess-42","text":"Oi! Posso ajudar?","conversation":"conv-7"}' \
  '{"id":"'"$(id 8)"'","channel":"whatsapp","dir":"in","from":"whatsapp:+5511987654321","text":"obrigada!"}'
all_sent() { [ "$(q "SELECT count(*) FROM outbox WHERE state = 'sent'")" = 7 ]; }
wait_until 20 all_sent
expect "seven replies sent" "$(q "SELECT group_concat(state) FROM (SELECT state FROM outbox ORDER BY id)")" \
    "sent,sent,sent,sent,sent,sent,sent"

check "WhatsApp: POST /v19.0/PHONE_ID/messages, Bearer token from the file, Cloud API body" \
    jq -e -s --arg id "$(id 1)" 'map(select(.headers["idempotency-key"] == $id)) | length == 1 and (.[0] |
        .method == "POST" and .path == "/v19.0/1234567890/messages"
        and .headers.authorization == "Bearer WA-TOKEN"
        and (.headers["content-type"] | startswith("application/json"))
        and (.body | fromjson) == {"messaging_product":"whatsapp","recipient_type":"individual",
            "to":"5511987654321","type":"text","text":{"preview_url":false,"body":"Olá Ana, seu pedido saiu 🚚"}})' \
    "$T/graph.jsonl"
check "Messenger: POST /v19.0/me/messages, page token, recipient.id, messaging_type RESPONSE" \
    jq -e -s --arg id "$(id 2)" 'map(select(.headers["idempotency-key"] == $id)) | length == 1 and (.[0] |
        .path == "/v19.0/me/messages" and .headers.authorization == "Bearer PAGE-TOKEN"
        and (.body | fromjson) == {"recipient":{"id":"6543210987654321"},"messaging_type":"RESPONSE",
            "message":{"text":"Hi Bruno!"}})' "$T/graph.jsonl"
check "Telegram: POST /botTOKEN/sendMessage with a numeric chat_id and the text" \
    jq -e -s --arg id "$(id 3)" 'map(select(.headers["idempotency-key"] == $id)) | length == 1 and (.[0] |
        .path == "/bot777:TG-TOKEN/sendMessage"
        and (.body | fromjson) == {"chat_id":900001,"text":"Seu estorno foi aprovado"} and .status == 200)' \
    "$T/telegram.jsonl"
check "Twilio: POST Accounts/SID/Messages.json, basic auth, form To/From/Body (sms and voice)" \
    jq -e -s --arg a "$(id 4)" --arg b "$(id 5)" --arg auth "Basic $(printf 'AC0123456789abcdef:TW-TOKEN' | base64)" '
        (map(select(.headers["idempotency-key"] == $a)) | length == 1 and (.[0] |
          .path == "/2010-04-01/Accounts/AC0123456789abcdef/Messages.json" and .headers.authorization == $auth
          and (.headers["content-type"] | startswith("application/x-www-form-urlencoded"))
          and .body == "To=%2B5511912345678&From=%2B15005550006&Body=Codigo%3A%204821%20%26%20obrigado"
          and .status == 201))
        and (map(select(.headers["idempotency-key"] == $b)) | length == 1 and (.[0].body | test("^To=%2B5511912340000&")))' \
    "$T/twilio.jsonl"
check "SMTP: AUTH with the password file, envelope sender and recipient" \
    jq -e -s 'length == 1 and (.[0] | .auth == "mailer" and .mail_from == "atendimento@jabuti.example"
        and .rcpt_to == ["ana.souza@example.com"] and .status == 250)' "$T/smtp.jsonl"
check "SMTP: threaded — In-Reply-To the customer's Message-ID, References the chain, Subject Re:" \
    jq -e --arg mid "<$(id 6)@jabuti.example>" '.headers | .["in-reply-to"] == "<cafe.2@mail.example.com>"
        and .references == "<cafe.0@mail.example.com> <cafe.1@mail.example.com> <cafe.2@mail.example.com>"
        and .subject == "Re: Pedido 48213 atrasado" and .["message-id"] == $mid
        and .from == "Jabuti Atendimento <atendimento@jabuti.example>" and .to == "<ana.souza@example.com>"
        and (.["content-type"] | test("charset=utf-8"))' "$T/smtp.jsonl"
check "SMTP: the body survives quoted-printable and dot-stuffing" \
    python3 -c 'import json, sys, email, email.policy
m = email.message_from_string(json.loads(open(sys.argv[1]).readline())["data"], policy=email.policy.default)
body = m.get_content().replace("\r\n", "\n")
want = "Olá Ana,\n.\nSeu pedido já saiu. = igual\n-- \nJabuti\n"
sys.exit(0 if body == want else "body %r" % body)' "$T/smtp.jsonl"
wait_until 10 test -s "$T/webchat.jsonl"
check "web chat: the reply envelope is pushed to the gateway's --replies as is" \
    jq -e -s --arg id "$(id 7)" 'length == 1 and (.[0] | .id == $id and .to == "webchat:sess-42"
        and .text == "Oi! Posso ajudar?")' "$T/webchat.jsonl"

# 2. Receipts: one event per reply, with the provider's id.
wait_until 10 has_receipt "$(id 7)"
check "every reply has a receipt event: status sent, derived id, same channel and people" \
    jq -e -s --arg p "01JSEND" '[.[] | select(.meta.event == "receipt")] | length == 7 and all(
        .dir == "event" and .meta.status == "sent" and (.meta.reply | startswith($p))
        and .id != .meta.reply and (.id | test("^[0-9A-HJKMNP-TV-Z]{26}$")) and .meta.provider_id != null)' \
    "$T/receipts.jsonl"
check "a receipt carries the reply's channel, customer, conversation and handle" \
    jq -e -s --arg id "$(id 1)" 'map(select(.meta.reply == $id))[0] | .channel == "whatsapp"
        and .customer == "cus-ana" and .conversation == "conv-1" and .to == "whatsapp:+5511987654321"
        and .meta.provider == "whatsapp-cloud" and .meta.attempts == 1' "$T/receipts.jsonl"
wamid=$(jq -r -s --arg id "$(id 1)" 'map(select(.headers["idempotency-key"] == $id))[0].response.messages[0].id' "$T/graph.jsonl")
sid=$(jq -r -s --arg id "$(id 4)" 'map(select(.headers["idempotency-key"] == $id))[0].response.sid' "$T/twilio.jsonl")
tgid=$(jq -r -s --arg id "$(id 3)" 'map(select(.headers["idempotency-key"] == $id))[0].response.result.message_id' "$T/telegram.jsonl")
expect "the delivered-log keeps the provider's ids (wamid, Twilio sid, Telegram message_id, Message-ID)" \
    "$(q "SELECT group_concat(provider_id, ' ') FROM (SELECT provider_id FROM delivered WHERE id IN
        ('$(id 1)', '$(id 4)', '$(id 3)', '$(id 6)') ORDER BY id)")" \
    "$wamid $tgid $sid <$(id 6)@jabuti.example>"
expect "the receipt's provider_id is the fake's wamid" "$(receipt "$(id 1)" | jq -r .meta.provider_id)" "$wamid"
check "inbound envelopes pass through untouched" \
    jq -e -s --arg id "$(id 8)" 'map(select(.id == $id)) | length == 1 and .[0].text == "obrigada!"' \
    "$T/receipts.jsonl"

# 3. Replays: the same reply ids again are not delivered again.
requests_before=$(cat "$T/graph.jsonl" "$T/twilio.jsonl" "$T/telegram.jsonl" "$T/smtp.jsonl" | wc -l)
inject \
  '{"id":"'"$(id 1)"'","channel":"whatsapp","dir":"out","to":"whatsapp:+5511987654321","text":"Olá Ana, seu pedido saiu 🚚"}' \
  '{"id":"'"$(id 4)"'","channel":"sms","dir":"out","to":"tel:+5511912345678","text":"Codigo: 4821 & obrigado"}' \
  '{"id":"'"$(id 6)"'","channel":"email","dir":"out","to":"mailto:ana.souza@example.com","text":"again"}' \
  '{"id":"'"$(id 3)"'","channel":"telegram","dir":"out","to":"telegram:900001","text":"Seu estorno foi aprovado"}' \
  '{"id":"'"$(id 9)"'","channel":"telegram","dir":"out","to":"telegram:900009","text":"marker after the replays"}'
wait_until 20 is_state "$(id 9)" sent
requests_after=$(cat "$T/graph.jsonl" "$T/twilio.jsonl" "$T/telegram.jsonl" "$T/smtp.jsonl" | wc -l)
expect "a replay of four delivered replies reaches no provider (one new reply does)" \
    "$((requests_after - requests_before))" "1"
expect "the replayed replies were attempted once" \
    "$(q "SELECT group_concat(attempts) FROM outbox WHERE id IN ('$(id 1)', '$(id 3)', '$(id 4)', '$(id 6)')")" "1,1,1,1"
replayed_receipts=$(jq -s --arg id "$(id 1)" '[.[] | select(.meta.reply == $id) | .id] | unique | length' "$T/receipts.jsonl")
expect "a replay re-emits the receipt with the same id (one receipt downstream)" "$replayed_receipts" "1"

# 4. 429: Graph with Retry-After, Telegram with its retry_after; both later
#    delivered, once.
ctl "$GRAPH" '{"rate_limit": 1, "retry_after": 1}'
ctl "$TG" '{"rate_limit": 1, "retry_after": 1}'
inject \
  '{"id":"'"$(id 10)"'","channel":"whatsapp","dir":"out","to":"whatsapp:+5511900000010","text":"depois do 429"}' \
  '{"id":"'"$(id 11)"'","channel":"telegram","dir":"out","to":"telegram:900011","text":"depois do 429"}'
wait_until 30 is_state "$(id 10)" sent
wait_until 30 is_state "$(id 11)" sent
expect "WhatsApp 429: two attempts, delivered once" \
    "$(tries "$T/graph.jsonl" "$(id 10)") $(sent_count "$T/graph.jsonl" "$(id 10)") $(state "$(id 10)")" "2 1 sent"
expect "Telegram 429: two attempts, delivered once" \
    "$(tries "$T/telegram.jsonl" "$(id 11)") $(sent_count "$T/telegram.jsonl" "$(id 11)") $(state "$(id 11)")" "2 1 sent"
check "the first WhatsApp answer was the 429 with Retry-After and Graph's throttling body" \
    jq -e -s --arg id "$(id 10)" 'map(select(.headers["idempotency-key"] == $id))[0] |
        .status == 429 and .response.error.code == 130429' "$T/graph.jsonl"
check "the first Telegram answer was Telegram's 429 with parameters.retry_after" \
    jq -e -s --arg id "$(id 11)" 'map(select(.headers["idempotency-key"] == $id))[0] |
        .status == 429 and .response.parameters.retry_after == 1' "$T/telegram.jsonl"
# The retry was scheduled no sooner than the provider asked (as logged).
waited() { sed -n "s/.*retry id=$1 .* in=\([0-9]*\)ms.*/\1/p" "$T/send.err" | head -1; }
check "the WhatsApp retry was scheduled after at least Retry-After (1 s)" test "$(waited "$(id 10)")" -ge 1000
check "the Telegram retry was scheduled after at least retry_after (1 s)" test "$(waited "$(id 11)")" -ge 1000

# 5. 5xx is retried (Twilio 503, SMTP 451); a 400 goes to the dead table.
ctl "$TWILIO" '{"fail": 503, "count": 2}'
ctl "$SMTPC" '{"fail": 451, "count": 1}'
inject \
  '{"id":"'"$(id 12)"'","channel":"sms","dir":"out","to":"tel:+5511900000012","text":"depois do 503"}' \
  '{"id":"'"$(id 13)"'","channel":"email","dir":"out","to":"mailto:bea@example.com","subject":"Re: Troca","text":"depois do 451"}' \
  '{"id":"'"$(id 14)"'","channel":"whatsapp","dir":"out","to":"whatsapp:+5511900000400","text":"nunca chega","customer":"cus-x"}' \
  '{"id":"'"$(id 15)"'","channel":"sms","dir":"out","to":"tel:+5511900000012","text":"second to the same person"}'
wait_until 30 is_state "$(id 12)" sent
wait_until 30 is_state "$(id 13)" sent
wait_until 30 is_state "$(id 15)" sent
wait_until 10 has_receipt "$(id 14)"
expect "Twilio 503 twice: three attempts, delivered once" \
    "$(tries "$T/twilio.jsonl" "$(id 12)") $(sent_count "$T/twilio.jsonl" "$(id 12)")" "3 1"
expect "SMTP 451: retried and delivered once" \
    "$(jq -s '[.[] | select(.headers.subject == "Re: Troca")] | map(.status) | join(",")' -r "$T/smtp.jsonl")" "451,250"
expect "replies to one person keep their order behind a retry" \
    "$(jq -r -s '[.[] | select(.status < 300 and (.body | test("To=%2B5511900000012"))) | .headers["idempotency-key"]] | join(" ")' "$T/twilio.jsonl")" \
    "$(id 12) $(id 15)"
expect "WhatsApp 400: dead after one attempt" "$(state "$(id 14)") $(tries "$T/graph.jsonl" "$(id 14)")" "dead 1"
check "the dead table keeps the status and the provider's reason" \
    test "$(q "SELECT status || ' ' || (reason LIKE '%131030%not in allowed list%') FROM dead WHERE id = '$(id 14)'")" = "400 1"
check "the failed receipt says why" \
    jq -e -s --arg id "$(id 14)" 'map(select(.meta.reply == $id))[0] | .meta.status == "failed"
        and (.meta.reason | test("131030")) and .customer == "cus-x"' "$T/receipts.jsonl"
check "omni-send dead lists it with its reason" grep -q "$(id 14) whatsapp  status=400 .*not in allowed list" \
    <("$S" dead --db "$DB")
check "omni-send status ID shows a sent reply with its provider id" grep -q "$(id 1) whatsapp  sent .*provider_id=$wamid" \
    <("$S" status "$(id 1)" --db "$DB")
expect "omni-send status --json lists every reply" "$("$S" status --json --db "$DB" | jq -s length)" \
    "$(q 'SELECT count(*) FROM outbox')"
"$S" status 01JSEND9999999999999999999 --db "$DB" >/dev/null 2>&1
expect "status of an unknown id exits 1" "$?" "1"

# 6. A restart with pending retries delivers them, once.
ctl "$TWILIO" '{"fail": 503, "count": 1000}'
inject '{"id":"'"$(id 16)"'","channel":"sms","dir":"out","to":"tel:+5511900000016","text":"sobrevive ao restart"}'
retried_twice() { [ "$(tries "$T/twilio.jsonl" "$(id 16)")" -ge 2 ] && is_state "$(id 16)" pending; }
wait_until 20 retried_twice
kill -9 "$SEND_PID"
wait "$SEND_PID" 2>/dev/null
ctl "$TWILIO" '{"reset": true}'
expect "the reply waits in the outbox while omni-send is down" "$(state "$(id 16)")" "pending"
start_send
wait_until 20 is_state "$(id 16)" sent
expect "after the restart it is delivered, once" "$(sent_count "$T/twilio.jsonl" "$(id 16)")" "1"
wait_until 10 has_receipt "$(id 16)"
check "and its receipt comes out" test -n "$(receipt "$(id 16)")"

# 7. The crash window: killed during the API call. Graph takes no
#    idempotency key: the reply is "maybe" delivered, not sent again.
#    SMTP: sent again, with the same Message-ID.
# seen PORT KEY: requests a fake has counted on KEY (a path, or DATA).
seen() { curl -sf "http://127.0.0.1:$1/_control/state" | jq --arg k "$2" '.by_path[$k] // 0'; }
seen_at_least() { [ "$(seen "$1" "$2")" -ge "$3" ]; }
ctl "$GRAPH" '{"delay_ms": 3000}'
graph_wa=$(seen "$GRAPH" /v19.0/1234567890/messages)
inject '{"id":"'"$(id 17)"'","channel":"whatsapp","dir":"out","to":"whatsapp:+5511900000017","text":"janela"}'
wait_until 20 seen_at_least "$GRAPH" /v19.0/1234567890/messages $((graph_wa + 1))
check "the call reached the provider while the row said sending" is_state "$(id 17)" sending
kill -9 "$SEND_PID"
wait "$SEND_PID" 2>/dev/null
ctl "$GRAPH" '{"reset": true}'
ctl "$SMTPC" '{"delay_ms": 3000}'
start_send
wait_until 10 is_state "$(id 17)" maybe
expect "a WhatsApp reply caught mid-call is maybe-delivered" "$(state "$(id 17)")" "maybe"
check "and that is logged" grep -q "id=$(id 17) channel=whatsapp was being sent when omni-send stopped: maybe delivered" "$T/send.err"
wait_until 10 has_receipt "$(id 17)"
expect "its receipt says unknown" "$(receipt "$(id 17)" | jq -r .meta.status)" "unknown"
wait_until 10 test "$(tries "$T/graph.jsonl" "$(id 17)")" -ge 1
expect "the provider saw that reply once (the delayed answer is recorded late)" "$(tries "$T/graph.jsonl" "$(id 17)")" "1"
smtp_data=$(seen "$SMTPC" DATA)
inject '{"id":"'"$(id 18)"'","channel":"email","dir":"out","to":"mailto:caio@example.com","subject":"Janela","text":"mail no meio do crash"}'
wait_until 20 seen_at_least "$SMTPC" DATA $((smtp_data + 1))
check "the message reached the SMTP server while the row said sending" is_state "$(id 18)" sending
kill -9 "$SEND_PID"
wait "$SEND_PID" 2>/dev/null
ctl "$SMTPC" '{"reset": true}'
start_send
wait_until 20 is_state "$(id 18)" sent
wait_until 10 test "$(jq -s '[.[] | select(.headers.subject == "Re: Janela")] | length' "$T/smtp.jsonl")" -ge 2
check "an e-mail caught mid-call is sent again with the same Message-ID" \
    jq -e -s --arg mid "<$(id 18)@jabuti.example>" '[.[] | select(.headers.subject == "Re: Janela")
        | .headers["message-id"]] | length >= 2 and all(. == $mid)' "$T/smtp.jsonl"
ctl "$TWILIO" '{"reset": true}'

# 8. omni-send retry puts a dead reply back; the running service sends it.
expect "retry of a dead reply queues it again" "$("$S" retry "$(id 14)" --db "$DB")" "$(id 14) queued again"
tried_again() { [ "$(tries "$T/graph.jsonl" "$(id 14)")" -ge 2 ] && is_state "$(id 14)" dead; }
wait_until 20 tried_again
expect "the running service tried it again (still refused: dead again)" \
    "$(tries "$T/graph.jsonl" "$(id 14)") $(state "$(id 14)")" "2 dead"
"$S" retry "$(id 1)" --db "$DB" >/dev/null 2>&1
expect "retry of a sent reply is refused" "$?" "1"

# 9. Unknown channels and bad handles are dead letters, not crashes.
inject '{"id":"'"$(id 19)"'","channel":"inperson","dir":"out","to":"inperson:desk-3","text":"no balcão"}' \
       '{"id":"'"$(id 20)"'","channel":"telegram","dir":"out","to":"whatsapp:+5511900000020","text":"wrong handle"}'
wait_until 20 is_state "$(id 20)" dead
expect "inperson has no delivery; a whatsapp: handle on telegram is refused" \
    "$(q "SELECT group_concat(reason, ' | ') FROM (SELECT reason FROM dead WHERE id IN ('$(id 19)', '$(id 20)') ORDER BY id)")" \
    "channel inperson has no delivery | to is not a telegram: handle"

# 10. SMTP 5xx is permanent, with the server's own words; a reply that
#     keeps failing past --give-up is dead too.
ctl "$SMTPC" '{"fail": 550, "count": 1}'
inject '{"id":"'"$(id 21)"'","channel":"email","dir":"out","to":"mailto:nobody@example.com","text":"recusado"}'
wait_until 20 is_state "$(id 21)" dead
expect "SMTP 550: dead with the server's reply" "$(q "SELECT status || ' ' || reason FROM dead WHERE id = '$(id 21)'")" \
    "550 smtp 550: 550 5.7.1 Message rejected"
ctl "$TWILIO" '{"fail": 500, "count": 1000}'
spawn "$S" --db "$T/g.db" --in "@ipc://$T/gin" --out - --tick 100ms --retry-min 50ms --give-up 400ms \
    --twilio-api "http://127.0.0.1:$TWILIO" --twilio-sid AC0123456789abcdef --twilio-token TW-TOKEN \
    --twilio-from +15005550006 >/dev/null 2>>"$T/giveup.err"
wait_until 10 test -S "$T/gin"
printf '%s\n' '{"id":"'"$(id 22)"'","channel":"sms","dir":"out","to":"tel:+5511900000022","text":"nunca"}' \
    | "$BIN/omni-inject" --out ">ipc://$T/gin" 2>/dev/null
gave_up() { [ "$(sqlite3 "$T/g.db" "SELECT state FROM outbox WHERE id = '$(id 22)'")" = dead ]; }
wait_until 20 gave_up
check "a reply still failing after --give-up is dead, with the last reason" \
    test "$(sqlite3 "$T/g.db" "SELECT reason LIKE 'gave up after % attempts over %s: twilio 500%' FROM dead")" = 1
ctl "$TWILIO" '{"reset": true}'

# 10b. The parent's Message-ID as omni-agent and omni-bot give it:
#      meta.in_reply_to.
inject '{"id":"'"$(id 23)"'","channel":"email","dir":"out","to":"mailto:ana.souza@example.com","subject":"Re: Troca","text":"Pode trazer na loja.","meta":{"in_reply_to":"<troca.1@mail.example.com>","references":"<troca.0@mail.example.com> <troca.1@mail.example.com>"}}'
wait_until 20 is_state "$(id 23)" sent
check "SMTP: meta.in_reply_to threads the reply (In-Reply-To, References once)" \
    jq -e -s --arg mid "<$(id 23)@jabuti.example>" 'map(select(.headers["message-id"] == $mid)) | length == 1
        and (.[0].headers | .["in-reply-to"] == "<troca.1@mail.example.com>"
             and .references == "<troca.0@mail.example.com> <troca.1@mail.example.com>")' "$T/smtp.jsonl"

# 11. SIGTERM exits 0; no secret appears in the logs.
stop_send
expect "SIGTERM exits 0" "$?" "0"
check "no token or password in omni-send's log" \
    sh -c "! grep -E 'TG-TOKEN|WA-TOKEN|TW-TOKEN|PAGE-TOKEN|secret' '$T/send.err'"
check "the outbox is WAL" test "$(q 'PRAGMA journal_mode')" = wal
