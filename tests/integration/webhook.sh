# webhook — omni-ingest-webhook as a real process on 127.0.0.1, driven with
# curl and signed as each provider signs (openssl dgst): WhatsApp (every
# message of every entry, statuses as receipts, business-scoped ids, the
# verification handshake), Messenger (echoes ignored), Twilio (sorted
# params, HMAC-SHA1, TwiML answer), Telegram, generic JSON, web chat with a
# signed identity and its reply stream (SSE, Last-Event-ID); forged or
# missing signatures 401 with nothing spooled; 400, 413, 404, 405; one
# envelope per duplicate delivery; 503 with Retry-After when the spool is
# full; and the spool into omni-archive: acked rows leave the spool, and a
# killed archive's lost messages are sent again under the same ids, stored
# once.
. "$(dirname "$0")/../lib.sh"
W=$BIN/omni-ingest-webhook
EX=$ROOT/examples/webhooks
WA=wa-app-secret-1
MS=ms-app-secret-2
TW=twilio-token-3
TG=tg-secret-4
GEN=generic-secret-5
WC=webchat-secret-6

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
hmac256() { openssl dgst -sha256 -hmac "$1" -r | cut -d' ' -f1; }
# q DB SQL: one sqlite3 query.
q() { sqlite3 -batch "$1" "$2"; }
lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
at_least() { [ "$(lines "$1")" -ge "$2" ]; }
http_up() { curl -s -o /dev/null "$1"; }

# post URL FILE CURL-ARGS...: POSTs the file; prints the status; the body
# is in $T/resp, the headers in $T/hdr.
post() {
    local url=$1 file=$2
    shift 2
    curl -s -o "$T/resp" -D "$T/hdr" -w '%{http_code}' -X POST --data-binary "@$file" "$@" "$url"
}
# meta URL FILE SECRET: POSTs as Meta does, with X-Hub-Signature-256.
meta() {
    post "$1" "$2" -H 'Content-Type: application/json' \
        -H "X-Hub-Signature-256: sha256=$(hmac256 "$3" <"$2")"
}
# --- 1. One server with every channel; it spools and sends to a tap. ------
# --acks names an endpoint nobody publishes on: nothing is acknowledged, so
# the spool keeps every row and can be counted.
PORT=$(free_port)
U=http://127.0.0.1:$PORT
spawn "$BIN/omni-tap" --in "@ipc://$T/a.out" >"$T/a.jsonl" 2>"$T/tap.err"
spawn "$W" --listen "127.0.0.1:$PORT" --spool "$T/a.db" --out "ipc://$T/a.out" \
    --acks "ipc://$T/nobody" --resend-after 10m --max-body 64k \
    --whatsapp-app-secret "$WA" --whatsapp-verify-token verify-me \
    --messenger-app-secret "$MS" --messenger-verify-token verify-ms \
    --twilio-auth-token "$TW" --twilio-public-url "https://hooks.example.com/twilio" \
    --telegram-secret "$TG" --telegram-bot jabuti_bot --generic-secret "$GEN" \
    --webchat --webchat-secret "$WC" --replies "ipc://$T/replies" --dead "$T/dead.mp" \
    2>"$T/a.err"
APID=$SPAWNED
wait_until 20 http_up "$U/"
spooled() { q "$T/a.db" 'SELECT count(*) FROM spool'; }

# WhatsApp: the handshake.
expect "whatsapp handshake echoes the challenge" \
    "$(curl -s -w ' %{http_code}' "$U/whatsapp?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444")" \
    "1158201444 200"
expect "whatsapp handshake with a wrong token is 403" \
    "$(curl -s -o /dev/null -w '%{http_code}' "$U/whatsapp?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1")" "403"
expect "messenger handshake echoes the challenge" \
    "$(curl -s "$U/messenger?hub.mode=subscribe&hub.verify_token=verify-ms&hub.challenge=abc")" "abc"

# WhatsApp: a text message.
expect "whatsapp text is 200" "$(meta "$U/whatsapp" "$EX/whatsapp-text.json" "$WA")" "200"
wait_until 10 at_least "$T/a.jsonl" 1
check "whatsapp text becomes the envelope" jq -e -s '.[0] | .channel == "whatsapp" and .dir == "in"
    and .from == "whatsapp:+5511987654321" and .to == "whatsapp:+551140041234"
    and .src_id == "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjBEMzE5QTlCRjY4RDc3MjY1AA=="
    and (.text | startswith("Oi! Meu pedido 48213")) and (.id | length) == 26
    and .meta.wa_id == "5511987654321" and .meta.profile_name == "Ana Souza"
    and .meta.phone_number_id == "106540352242922" and .trace[0][0] == "ingest-webhook"' "$T/a.jsonl"
expect "spooled before the answer" "$(spooled)" "1"

# Forged and missing signatures: 401, nothing spooled, nothing sent.
cp "$EX/whatsapp-text.json" "$T/forged.json"
sed -i 's/Oi!/Oi?/' "$T/forged.json"
expect "a body changed after signing is 401" \
    "$(post "$U/whatsapp" "$T/forged.json" -H "X-Hub-Signature-256: sha256=$(hmac256 "$WA" <"$EX/whatsapp-text.json")")" "401"
expect "a signature with another secret is 401" "$(meta "$U/whatsapp" "$T/forged.json" wrong-secret)" "401"
expect "no signature is 401" "$(post "$U/whatsapp" "$T/forged.json")" "401"
expect "messenger without signature is 401" "$(post "$U/messenger" "$EX/messenger-text.json")" "401"
expect "telegram with a wrong secret token is 401" \
    "$(post "$U/telegram" "$EX/telegram-text.json" -H 'X-Telegram-Bot-Api-Secret-Token: guess')" "401"
expect "generic signed with another secret is 401" \
    "$(post "$U/generic" "$EX/generic.json" -H "X-Omnibus-Signature: sha256=$(hmac256 nope <"$EX/generic.json")")" "401"
expect "twilio with a forged signature is 401" \
    "$(curl -s -o /dev/null -w '%{http_code}' -H 'X-Twilio-Signature: 0/KCTR6DLpKmkAf8muzZqo1nDgQ=' \
        --data-urlencode 'MessageSid=SMx' --data-urlencode 'From=+15551234567' --data-urlencode 'Body=hi' "$U/twilio")" "401"
expect "after the forgeries the spool is unchanged" "$(spooled)" "1"

# Duplicate delivery: the same wamid again is 200 and no new envelope.
expect "whatsapp duplicate delivery is 200" "$(meta "$U/whatsapp" "$EX/whatsapp-text.json" "$WA")" "200"
expect "whatsapp duplicate delivery spools nothing new" "$(spooled)" "1"

# Every message of every entry and change; a status is a receipt event; a
# business-scoped user without a phone.
expect "multi-entry payload is 200" "$(meta "$U/whatsapp" "$EX/whatsapp-multi.json" "$WA")" "200"
expect "status payload is 200" "$(meta "$U/whatsapp" "$EX/whatsapp-status.json" "$WA")" "200"
wait_until 10 at_least "$T/a.jsonl" 7
expect "four messages and two receipts from two entries" \
    "$(jq -r 'select(.channel == "whatsapp") | .dir' "$T/a.jsonl" | sort | uniq -c | tr -s ' ' | tr '\n' ';')" \
    " 2 event; 5 in;"
check "every message of every entry, each from its sender" jq -e -s '
    map(select(.channel == "whatsapp" and .dir == "in") | .from) | sort ==
    ["whatsapp:+5511987654321", "whatsapp:+5511987654321", "whatsapp:+5521998877665",
     "whatsapp:+5531991234567", "whatsapp:BR.1349120865530274"]' "$T/a.jsonl"
check "an image keeps its caption and media id" jq -e -s 'map(select(.from == "whatsapp:+5521998877665"))[0]
    | .text == "A panela chegou amassada" and .attachments[0].type == "image"
    and .attachments[0].media_id == "1479548266163462" and .meta.profile_name == "Bruno Lima"' "$T/a.jsonl"
check "a button reply is its title, to the second number" jq -e -s 'map(select(.from == "whatsapp:+5531991234567"))[0]
    | .text == "Rastrear pedido" and .to == "whatsapp:+551140041235" and .meta.reply_id == "track-48213"' "$T/a.jsonl"
check "a business-scoped user id is the handle as it is" jq -e -s 'map(select(.from == "whatsapp:BR.1349120865530274"))[0]
    | .meta.profile_name == "Dani" and .meta.wa_id == null' "$T/a.jsonl"
check "statuses are receipt events" jq -e -s 'map(select(.dir == "event" and .channel == "whatsapp"))
    | length == 2 and all(.meta.event == "receipt")
    and (map(.meta.status) | sort) == ["delivered", "read"]
    and any(.meta.message == "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEkI3QjE2MTJEOTcyQkZEMTVDQQA="
            and .to == "whatsapp:+5511987654321")' "$T/a.jsonl"

# Messenger: messages, an attachment, the echo ignored.
expect "messenger is 200" "$(meta "$U/messenger" "$EX/messenger-text.json" "$MS")" "200"
wait_until 10 at_least "$T/a.jsonl" 9
check "messenger: two messages, no echo" jq -e -s 'map(select(.channel == "messenger"))
    | length == 2 and all(.from == "messenger:6543210987654321" and .to == "messenger:109876543210")
    and .[0].src_id == "m_AwIHYSw5vY_a3Q9CswE0YiwqOWLDD4ctx5M2eCyzpL"
    and .[1].attachments[0].url == "https://scontent.example.com/v/t1.15752-9/nota.jpg"' "$T/a.jsonl"

# Twilio: signed as Twilio signs, answered with empty TwiML.
# twilio_post KEY=VALUE...: X-Twilio-Signature is base64(HMAC-SHA1(the
# public URL followed by each key and value, sorted by key)).
TWU=$U/twilio
twilio_post() {
    local s="https://hooks.example.com/twilio" kv args=()
    while IFS= read -r kv; do s+="${kv%%=*}${kv#*=}"; done < <(printf '%s\n' "$@" | LC_ALL=C sort -t= -k1,1)
    for kv in "$@"; do args+=(--data-urlencode "$kv"); done
    curl -s -o "$T/resp" -D "$T/hdr" -w '%{http_code}' "${args[@]}" \
        -H "X-Twilio-Signature: $(printf '%s' "$s" | openssl dgst -sha1 -hmac "$TW" -binary | base64)" "$TWU"
}
expect "twilio sms, signed, is 200" "$(twilio_post MessageSid=SM2f2369bb90e466a1991f414e8534d60d \
    AccountSid=AC0123 From=+5511965432109 To=+551140041234 'Body=Pedido 48122. Preciso trocar & já!' \
    NumSegments=1 NumMedia=1 MediaUrl0=https://api.twilio.com/2010-04-01/Media/ME1 MediaContentType0=image/jpeg)" "200"
expect "twilio is answered with empty TwiML" "$(cat "$T/resp")" '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
check "twilio answer is text/xml" grep -qi '^content-type: text/xml' "$T/hdr"
wait_until 10 at_least "$T/a.jsonl" 10
check "twilio sms becomes the envelope" jq -e -s 'map(select(.channel == "sms"))[0]
    | .from == "tel:+5511965432109" and .to == "tel:+551140041234" and .text == "Pedido 48122. Preciso trocar & já!"
    and .src_id == "SM2f2369bb90e466a1991f414e8534d60d" and .attachments[0].type == "image"
    and .meta.num_segments == "1"' "$T/a.jsonl"
expect "twilio redelivery of one MessageSid is one envelope" "$(twilio_post MessageSid=SM2f2369bb90e466a1991f414e8534d60d \
    AccountSid=AC0123 From=+5511965432109 To=+551140041234 'Body=Pedido 48122. Preciso trocar & já!' \
    NumSegments=1 NumMedia=1 MediaUrl0=https://api.twilio.com/2010-04-01/Media/ME1 MediaContentType0=image/jpeg) $(spooled)" "200 10"

# Telegram.
expect "telegram is 200" "$(post "$U/telegram" "$EX/telegram-text.json" -H "X-Telegram-Bot-Api-Secret-Token: $TG")" "200"
expect "telegram photo is 200" "$(post "$U/telegram" "$EX/telegram-photo.json" -H "X-Telegram-Bot-Api-Secret-Token: $TG")" "200"
expect "telegram duplicate update is one envelope" \
    "$(post "$U/telegram" "$EX/telegram-text.json" -H "X-Telegram-Bot-Api-Secret-Token: $TG") $(spooled)" "200 12"
wait_until 10 at_least "$T/a.jsonl" 12
check "telegram updates become envelopes" jq -e -s 'map(select(.channel == "telegram"))
    | length == 2 and all(.from == "telegram:512340987" and .to == "telegram:jabuti_bot"
                          and .meta.username == "carlos_pereira" and .meta.first_name == "Carlos")
    and .[0].src_id == "734201583" and (.[0].text | contains("cesto veio rachado"))
    and .[1].text == "o cesto rachado" and .[1].attachments[0].file_id == "AgACAgEAAxkBAAIQ-large"' "$T/a.jsonl"

# Generic: signed JSON in omni-inject's shape; the answer has the ids.
gen() { post "$U/generic" "$1" -H "X-Omnibus-Signature: sha256=$(hmac256 "$GEN" <"$1")"; }
expect "generic is 200" "$(gen "$EX/generic.json")" "200"
GID=$(jq -r '.ids[0]' "$T/resp")
wait_until 10 at_least "$T/a.jsonl" 13
check "generic envelope is the one answered" jq -e -s --arg id "$GID" 'map(select(.channel == "api"))
    | length == 1 and .[0].id == $id and .[0].meta.ticket == "90210"' "$T/a.jsonl"
printf '%s' '[{"channel":"api","dir":"in","from":"api:x","text":"ok"},{"channel":"fax","dir":"in","from":"api:x","text":"no"}]' >"$T/gbad.json"
expect "generic with a bad envelope is 400, nothing taken" "$(gen "$T/gbad.json") $(spooled)" "400 13"
check "the 400 says which and why" grep -q 'item 1: field=channel' "$T/resp"

# Malformed, too large, unknown, wrong method.
printf '{"object":"whatsapp_business_account","entry":[' >"$T/trunc.json"
expect "malformed JSON is 400" "$(meta "$U/whatsapp" "$T/trunc.json" "$WA")" "400"
check "the 400 has a reason" grep -q 'bad JSON: line 1' "$T/resp"
printf '{"object":"page","entry":{}}' >"$T/noentry.json"
expect "messenger without an entry array is 400" "$(meta "$U/messenger" "$T/noentry.json" "$MS")" "400"
check "a malformed body is a dead letter" test -s "$T/dead.mp"
head -c 70000 /dev/zero | tr '\0' 'a' >"$T/big.json"
expect "a body over --max-body is 413" "$(meta "$U/whatsapp" "$T/big.json" "$WA")" "413"
expect "a chunked body over --max-body is 413" \
    "$(post "$U/whatsapp" "$T/big.json" -H 'Transfer-Encoding: chunked' -H "X-Hub-Signature-256: sha256=00")" "413"
expect "an unknown path is 404" "$(post "$U/nope" "$EX/generic.json")" "404"
expect "GET of a POST endpoint is 405" "$(curl -s -o /dev/null -w '%{http_code}' "$U/twilio")" "405"
expect "after all refusals the spool holds only what was taken" "$(spooled)" "13"

# --- 2. Web chat: a message, a signed identity, the reply stream. ---------
chat() { post "$U/chat" "$1" -H 'Content-Type: application/json'; }
expect "web chat message is 200" "$(chat "$EX/chat.json")" "200"
CID=$(jq -r .id "$T/resp")
PAYLOAD='{"email":"Ana.Souza@Example.com","exp":4102444800}'
TOKEN="$(printf '%s' "$PAYLOAD" | base64 -w0).$(printf '%s' "$PAYLOAD" | hmac256 "$WC")"
printf '{"session":"s-7f3a9c","text":"oi, sou a Ana","identity":"%s"}' "$TOKEN" >"$T/chat-id.json"
expect "web chat with a signed identity is 200" "$(chat "$T/chat-id.json")" "200"
wait_until 10 at_least "$T/a.jsonl" 16
check "web chat message becomes the envelope" jq -e -s --arg id "$CID" 'map(select(.id == $id))[0]
    | .channel == "webchat" and .from == "webchat:s-6b0f3e" and .src_id == "s-6b0f3e:wc-gvqcagvu6wt7"
    and .meta.page == "https://jabuti.example/"' "$T/a.jsonl"
check "a valid identity links the session to the e-mail" jq -e -s 'map(select(.dir == "event" and .channel == "webchat"))
    | length == 1 and .[0].meta.event == "link" and .[0].meta.by == "website-login" and .[0].meta.verified == true
    and .[0].meta.handles == ["webchat:s-7f3a9c", "mailto:ana.souza@example.com"]' "$T/a.jsonl"
BAD="$(printf '%s' "$PAYLOAD" | base64 -w0).$(printf '%s' "$PAYLOAD" | hmac256 not-the-key)"
printf '{"session":"s-7f3a9c","text":"sou a Ana, confia","identity":"%s"}' "$BAD" >"$T/chat-bad.json"
expect "a forged identity is 401, nothing spooled" "$(chat "$T/chat-bad.json") $(spooled)" "401 16"
OLD='{"email":"ana@example.com","exp":1000}'
printf '{"session":"s-7f3a9c","text":"x","identity":"%s.%s"}' "$(printf '%s' "$OLD" | base64 -w0)" \
    "$(printf '%s' "$OLD" | hmac256 "$WC")" >"$T/chat-old.json"
expect "an expired identity is 401" "$(chat "$T/chat-old.json")" "401"
printf '{"session":"bad session!","text":"x"}' >"$T/chat-s.json"
expect "a bad session id is 400" "$(chat "$T/chat-s.json")" "400"

# Replies for the session arrive on --replies and are streamed as SSE.
reply() {
    printf '{"channel":"webchat","dir":"out","to":"webchat:s-6b0f3e","text":"%s","reply_to":"%s"}\n' "$1" "$CID" \
        | "$BIN/omni-inject" --out ">ipc://$T/replies" 2>/dev/null
}
spawn curl -s -N --max-time 20 "$U/chat/stream?session=s-6b0f3e" -o "$T/sse1.txt"
SSE1=$SPAWNED
wait_until 10 grep -q retry "$T/sse1.txt"
reply "Abrimos às 8h"
reply "Até amanhã!"
events() { grep -c '^data:' "$1" 2>/dev/null || true; }
two_events() { [ "$(events "$T/sse1.txt")" -ge 2 ]; }
wait_until 10 two_events
check "the stream shows both replies, in order" sh -c "grep '^data:' '$T/sse1.txt' | head -2 | cut -c7- \
    | jq -e -s '.[0].text == \"Abrimos às 8h\" and .[1].text == \"Até amanhã!\" and .[0].reply_to == \"$CID\"'"
FIRST=$(grep -m1 '^id:' "$T/sse1.txt" | cut -d' ' -f2)
kill "$SSE1" 2>/dev/null
curl -s --max-time 2 -H "Last-Event-ID: $FIRST" "$U/chat/stream?session=s-6b0f3e" -o "$T/sse2.txt"
expect "a reconnect with Last-Event-ID gets only what came after" \
    "$(grep '^data:' "$T/sse2.txt" | cut -c7- | jq -r .text)" "Até amanhã!"
curl -s --max-time 1 "$U/chat/stream?session=s-other" -o "$T/sse3.txt"
expect "another session's stream shows none of it" "$(events "$T/sse3.txt")" "0"

# SIGTERM: exit 0, everything answered was committed.
kill -TERM "$APID"
wait "$APID"
expect "SIGTERM exits 0" "$?" "0"
expect "the spool holds every message taken" "$(spooled) $(q "$T/a.db" 'SELECT count(DISTINCT id) FROM spool')" "16 16"
check "no sanitizer report" sh -c "! grep -q -e 'AddressSanitizer' -e 'runtime error' '$T/a.err'"

# --- 3. Backpressure: a full spool answers 503 with Retry-After. ----------
PORT=$(free_port)
U=http://127.0.0.1:$PORT
printf '%s\n' "$GEN" >"$T/generic.secret"
spawn "$W" --listen "127.0.0.1:$PORT" --spool "$T/b.db" --out "ipc://$T/b.out" --acks "ipc://$T/nobody" \
    --spool-max 3 --generic-secret-file "$T/generic.secret" 2>"$T/b.err"
BPID=$SPAWNED
wait_until 20 http_up "$U/"
for i in 1 2 3 4; do
    printf '{"channel":"api","dir":"in","from":"api:x","src_id":"b-%d","text":"m%d"}' "$i" "$i" >"$T/b$i.json"
done
expect "three fit" "$(gen "$T/b1.json") $(gen "$T/b2.json") $(gen "$T/b3.json")" "200 200 200"
expect "the fourth is 503" "$(gen "$T/b4.json")" "503"
check "503 says when to retry" grep -qi '^retry-after: [0-9]' "$T/hdr"
expect "nothing was dropped or doubled" "$(q "$T/b.db" 'SELECT count(*) FROM spool')" "3"
# SIGHUP reads a rotated secret file again.
printf 'rotated-secret\n' >"$T/generic.secret"
kill -HUP "$BPID"
wait_until 10 grep -q 'secrets read again' "$T/b.err"
expect "after SIGHUP the old secret is refused" "$(gen "$T/b4.json")" "401"
expect "after SIGHUP the new secret is taken (and the spool is still full)" \
    "$(post "$U/generic" "$T/b4.json" -H "X-Omnibus-Signature: sha256=$(hmac256 rotated-secret <"$T/b4.json")")" "503"
kill -TERM "$BPID"
wait "$BPID"
expect "SIGTERM exits 0 (full spool)" "$?" "0"

# --- 4. Spool -> omni-archive: acks drop rows; a lost batch comes again. --
PORT=$(free_port)
U=http://127.0.0.1:$PORT
start_archive() {
    spawn "$BIN/omni-archive" --db "$T/arch.db" --in "ipc://$T/c.out" --acks "ipc://$T/c.acks" \
        --batch-ms 20ms --out - >/dev/null 2>>"$T/arch.err"
    ARCH=$SPAWNED
}
start_archive
wait_until 10 test -S "$T/c.acks"
spawn "$W" --listen "127.0.0.1:$PORT" --spool "$T/c.db" --out "ipc://$T/c.out" --acks "ipc://$T/c.acks" \
    --resend-after 1s --generic-secret "$GEN" 2>"$T/c.err"
CPID=$SPAWNED
wait_until 20 http_up "$U/"
: >"$T/ids.txt"
send_batch() {   # send_batch FROM TO
    local i
    for i in $(seq "$1" "$2"); do
        printf '{"channel":"api","dir":"in","from":"api:load","src_id":"c-%d","text":"message %d"}' "$i" "$i" >"$T/c.json"
        [ "$(gen "$T/c.json")" = 200 ] && jq -r '.ids[0]' "$T/resp" >>"$T/ids.txt"
    done
}
archived() { q "$T/arch.db" 'SELECT count(*) FROM messages'; }
spool_rows() { q "$T/c.db" 'SELECT count(*) FROM spool'; }
settled() { [ "$(archived)" -ge "$1" ] && [ "$(spool_rows)" = 0 ]; }
send_batch 1 20
wait_until 20 settled 20
expect "twenty archived, the spool emptied by the acks" "$(archived) $(spool_rows)" "20 0"
check "a duplicate after the ack gets the first id" sh -c "
    printf '%s' '{\"channel\":\"api\",\"dir\":\"in\",\"from\":\"api:load\",\"src_id\":\"c-3\",\"text\":\"message 3\"}' >'$T/c3.json'
    curl -s -X POST --data-binary @'$T/c3.json' -H \"X-Omnibus-Signature: sha256=\$(openssl dgst -sha256 -hmac '$GEN' -r <'$T/c3.json' | cut -d' ' -f1)\" \
        '$U/generic' | jq -e --arg id \"\$(sed -n 3p '$T/ids.txt')\" '.ids[0] == \$id'"

# Freeze the archive: what is sent now is never stored nor acked; kill it
# and start another: the spool sends those again, under their ids.
kill -STOP "$ARCH"
send_batch 21 30
in_flight() { [ "$(q "$T/c.db" 'SELECT count(*) FROM spool WHERE attempts >= 1')" = 10 ]; }
wait_until 10 in_flight
expect "ten sent and waiting for their ack" "$(spool_rows)" "10"
{ kill -KILL "$ARCH"; wait "$ARCH"; } 2>/dev/null
start_archive
wait_until 30 settled 30
expect "the lost ten are archived after the restart" "$(archived) $(spool_rows)" "30 0"
expect "each message once, under the id the webhook answered" \
    "$(q "$T/arch.db" 'SELECT id FROM messages ORDER BY id' | md5sum)" "$(sort "$T/ids.txt" | md5sum)"
expect "no duplicates in the archive" "$(q "$T/arch.db" 'SELECT count(DISTINCT id) FROM messages')" "30"
kill -TERM "$CPID"
wait "$CPID"
expect "SIGTERM exits 0 (pipeline)" "$?" "0"
check "no sanitizer report" sh -c "! grep -q -e 'AddressSanitizer' -e 'runtime error' '$T/b.err' '$T/c.err'"

# --- 5. Configuration. -----------------------------------------------------
"$W" --spool "$T/x.db" >/dev/null 2>&1
expect "no channel configured exits 64" "$?" "64"
"$W" --spool "$T/x.db" --twilio-auth-token x >/dev/null 2>&1
expect "a Twilio token without its public URL exits 64" "$?" "64"
printf 'from-a-file\n' >"$T/secret.txt"
check "secrets from files pass --check" "$W" --spool "$T/x.db" --whatsapp-app-secret-file "$T/secret.txt" --check
"$W" --spool "$T/x.db" --whatsapp-app-secret-file "$T/missing" --check >/dev/null 2>&1
expect "a missing secret file exits 78" "$?" "78"
