# backpressure — DESIGN.md "Delivery", point 4, end to end: three ingestors
# (omni-ingest-webhook under signed WhatsApp webhooks that a provider
# retries, omni-ingest-telegram long-polling fake_telegram, omni-ingest-mail
# reading fake_imap) feed one omni-identity, whose omni-archive is down.
# Each spool fills to its --spool-max and stays there: the webhook answers
# 503 with Retry-After (and 200 only for what it spooled), Telegram's offset
# does not pass what is spooled (the rest stays queued at Telegram), and the
# IMAP messages past the bound are neither fetched nor flagged \Seen. Then
# the archive starts: the spools drain, the provider's retries are taken,
# polling resumes, and the archive holds every message of every channel
# exactly once; nothing is a dead letter; every stage exits 0 on SIGTERM.
. "$(dirname "$0")/../lib.sh"
FAKES=$ROOT/tests/fakes
WA=bp-app-secret
WEBHOOKS=200        # signed webhooks, one message each
WH_MAX=50           # the webhook's --spool-max
UPDATES=120         # Telegram updates queued at the fake
TG_MAX=30
MAILS=60            # messages in the IMAP mailbox
MAIL_MAX=20

q() { sqlite3 -batch -cmd '.timeout 5000' "$1" "$2" 2>/dev/null; }
# spooled DB: rows in a spool (not acknowledged).
spooled() { q "$1" 'SELECT count(*) FROM spool'; }
spooled_is() { [ "$(spooled "$1")" == "$2" ]; }
spooled_at_least() { [ "$(spooled "$1")" -ge "$2" ]; }
http_up() { curl -s -o /dev/null "$1"; }
nonempty() { [ -s "$1" ]; }

# --- The fakes: Telegram with UPDATES queued, IMAP with MAILS messages. ---
for i in $(seq "$UPDATES"); do
    printf '{"update_id":%d,"message":{"message_id":%d,"date":1741000000,"chat":{"id":%d,"type":"private"},"from":{"id":%d,"first_name":"Cliente %d"},"text":"telegram %d"}}\n' \
        $((1000000 + i)) "$i" $((700 + i % 11)) $((700 + i % 11)) "$i" "$i"
done >"$T/tg.ups"
echo "123456:TEST-TOKEN" >"$T/token"
spawn python3 "$FAKES/fake_telegram.py" --updates "$T/tg.ups" --ready "$T/tg.port" --record "$T/tg.rec" \
    2>"$T/tg.fake.err"
mkdir "$T/mbox"
for i in $(seq "$MAILS"); do
    printf 'From: Cliente %d <cliente%d@example.com>\nTo: atendimento@loja.example\nSubject: pedido %d\nDate: Thu, 13 Mar 2025 19:02:11 -0300\nMessage-ID: <bp-%d@example.com>\nContent-Type: text/plain; charset=utf-8\n\nmail %d\n' \
        "$i" $((i % 13)) "$i" "$i" "$i" >"$T/mbox/$(printf 'm%03d' "$i").eml"
done
spawn python3 "$FAKES/fake_imap.py" --mailbox "$T/mbox" --user bp --password pw --ready "$T/imap.port" \
    --control-ready "$T/imap.ctl" --record "$T/imap.rec" 2>"$T/imap.fake.err"
if ! wait_until 10 nonempty "$T/tg.port" || ! wait_until 10 nonempty "$T/imap.ctl"; then
    not_ok "the fakes start"
    exit 1
fi
TGAPI=http://127.0.0.1:$(cat "$T/tg.port")
IMAP=imap://127.0.0.1:$(cat "$T/imap.port")/INBOX
IMAPCTL=http://127.0.0.1:$(cat "$T/imap.ctl")/_control
printf 'pw\n' >"$T/pw"
tg_state() { curl -s "$TGAPI/_control/state" | jq -r ".$1"; }

# --- The pipeline, its archive down: ingestors -> identity -> (nothing). ---
spawn "$BIN/omni-identity" --db "$T/id.db" --in "@ipc://$T/id.in" --out ">ipc://$T/arch.in" \
    --dead "$T/identity.dead" 2>"$T/identity.err"
IDPID=$SPAWNED
wait_until 10 test -S "$T/id.in"
ACKS=(--acks "ipc://$T/acks" --resend-after 1s)
PORT=$(free_port)
U=http://127.0.0.1:$PORT
spawn "$BIN/omni-ingest-webhook" --listen "127.0.0.1:$PORT" --spool "$T/wh.db" --out ">ipc://$T/id.in" \
    "${ACKS[@]}" --spool-max "$WH_MAX" --whatsapp-app-secret "$WA" --dead "$T/webhook.dead" 2>"$T/webhook.err"
WHPID=$SPAWNED
spawn "$BIN/omni-ingest-telegram" --api "$TGAPI" --token-file "$T/token" --spool "$T/tg.db" \
    --poll-timeout 1s --out ">ipc://$T/id.in" "${ACKS[@]}" --spool-max "$TG_MAX" --dead "$T/telegram.dead" \
    2>"$T/telegram.err"
TGPID=$SPAWNED
spawn "$BIN/omni-ingest-mail" --imap "$IMAP" --user bp --password-file "$T/pw" --interval 300ms \
    --batch 7 --spool "$T/mail.db" --out ">ipc://$T/id.in" "${ACKS[@]}" --spool-max "$MAIL_MAX" \
    --dead "$T/mail.dead" 2>"$T/mail.err"
MPID=$SPAWNED
wait_until 20 http_up "$U/"

# The provider: every webhook delivered until it is answered 200, a 503
# retried after its Retry-After.
spawn python3 "$ROOT/tests/meta_retry.py" --url "$U/whatsapp" --secret "$WA" --messages "$WEBHOOKS" \
    --threads 4 --deadline 120 --record "$T/posts.jsonl" --progress "$T/posts.progress" \
    >"$T/provider.json" 2>"$T/provider.err"
PROVIDER=$SPAWNED
progress() { jq -r "$1" "$T/posts.progress" 2>/dev/null; }
fresh_done() { [ "$(progress .fresh_done)" == true ]; }
imap_cursor() { q "$T/mail.db" "SELECT value FROM state WHERE key = 'imap.cursor'"; }
imap_cursor_is() { [ "$(imap_cursor)" == "$1" ]; }

# --- 1. Held: each spool at its bound, and nothing past it taken. ---------
wait_until 30 fresh_done
wait_until 20 spooled_at_least "$T/wh.db" "$WH_MAX"
wait_until 20 spooled_at_least "$T/tg.db" "$TG_MAX"
wait_until 20 spooled_at_least "$T/mail.db" "$MAIL_MAX"
wait_until 10 grep -q 'spool full' "$T/telegram.err"
wait_until 10 grep -q 'spool full' "$T/mail.err"
UPS_ALL=$(seq $((1000000 + 1)) $((1000000 + UPDATES)))

held_checks() {     # held_checks LABEL: what must hold while the archive is down
    local l=$1
    expect "$l: each spool holds exactly its --spool-max (webhook, telegram, mail)" \
        "$(spooled "$T/wh.db") $(spooled "$T/tg.db") $(spooled "$T/mail.db")" "$WH_MAX $TG_MAX $MAIL_MAX"
    # The webhook: 200 exactly for the messages it spooled, 503 for the rest.
    expect "$l: the webhook answered 200 to exactly the wamids in its spool" \
        "$(jq -r 'select(.status == "200") | .wamid' "$T/posts.jsonl" | sort | md5sum)" \
        "$(q "$T/wh.db" "SELECT src_id FROM spool WHERE channel = 'whatsapp'" | sort | md5sum)"
    expect "$l: every other answer was 503 (no error, no dropped connection)" \
        "$(jq -r 'select(.status != "200") | .status' "$T/posts.jsonl" | sort -u)" "503"
    expect "$l: every 503 says Retry-After: 1 (the webhook's --resend-after)" \
        "$(jq -r 'select(.status == "503") | .retry_after' "$T/posts.jsonl" | sort -u)" "1"
    # Telegram: nothing confirmed past what is spooled; the rest still queued.
    local top
    top=$(q "$T/tg.db" "SELECT max(CAST(src_id AS INTEGER)) FROM spool")
    check "$l: no getUpdates offset past the last spooled update ($top)" jq -e -s --argjson top "$top" \
        '[.[] | select(.path | endswith("/getUpdates")) | (.body | fromjson | .offset // 0)] | all(. <= $top + 1)' \
        "$T/tg.rec"
    check "$l: Telegram confirmed no update the spool does not hold" \
        test "$(tg_state confirmed_offset)" -le $((top + 1))
    expect "$l: every update is either spooled or still queued at Telegram" \
        "$( { q "$T/tg.db" 'SELECT src_id FROM spool'; curl -s "$TGAPI/_control/updates" | jq -r '.[].update_id'; } \
            | sort -u | md5sum)" "$(printf '%s\n' $UPS_ALL | sort -u | md5sum)"
    # IMAP: the cursor, the fetches and the \Seen flags stop at the bound.
    expect "$l: the IMAP cursor stops at the bound" "$(imap_cursor)" "1700000000 $MAIL_MAX"
    expect "$l: only UIDs 1..$MAIL_MAX were fetched, each once" \
        "$(jq -r 'select(.command == "UID FETCH") | .line | split(" ")[3]' "$T/imap.rec" | sort -n | tr '\n' ' ')" \
        "$(seq "$MAIL_MAX" | tr '\n' ' ')"
    expect "$l: only those are \\Seen; the rest of the mailbox is untouched" \
        "$(curl -s "$IMAPCTL/state" | jq -c '[.seen, .exists]')" "[[$(seq -s, "$MAIL_MAX")],$MAILS]"
}
held_checks "archive down"
# Held, not just slow: another full round of retries and polls changes nothing.
posts0=$(progress .posts)
polls0=$(tg_state requests)
searches() { jq -r 'select(.command == "UID SEARCH") | .line' "$T/imap.rec" | wc -l; }
searches0=$(searches)
more_tried() {
    [ "$(progress .posts)" -ge $((posts0 + WEBHOOKS - WH_MAX)) ] && [ "$(progress .acked)" == "$WH_MAX" ]
}
wait_until 30 more_tried
expect "while full, Telegram is not polled and the mailbox not searched" \
    "$(tg_state requests) $(searches)" "$polls0 $searches0"
held_checks "after $(( $(progress .posts) - posts0 )) more retries"

# --- 2. The archive comes back: everything drains, each message once. -----
spawn "$BIN/omni-archive" --db "$T/archive.db" --in "@ipc://$T/arch.in" --acks "@ipc://$T/acks" \
    --out none --dead "$T/archive.dead" 2>"$T/archive.err"
ARPID=$SPAWNED
TOTAL=$((WEBHOOKS + UPDATES + MAILS))
archived() { q "$T/archive.db" 'SELECT count(*) FROM messages'; }
drained() {
    [ "$(archived)" == "$TOTAL" ] && spooled_is "$T/wh.db" 0 && spooled_is "$T/tg.db" 0 \
        && spooled_is "$T/mail.db" 0 && ! kill -0 "$PROVIDER" 2>/dev/null
}
wait_until 90 drained || kill -TERM "$PROVIDER" 2>/dev/null
wait "$PROVIDER"
expect "the provider's every webhook was answered 200 in the end" "$?" "0"
expect "the spools are empty (webhook, telegram, mail)" \
    "$(spooled "$T/wh.db") $(spooled "$T/tg.db") $(spooled "$T/mail.db")" "0 0 0"
"$BIN/omni-archive" export --db "$T/archive.db" 2>"$T/export.err" | "$BIN/omni-tap" >"$T/archive.jsonl" 2>>"$T/export.err"
expect "the archive holds every message once: per channel, messages and distinct src_ids" \
    "$(jq -r '.channel + " " + .src_id' "$T/archive.jsonl" | sort -u | cut -d' ' -f1 | uniq -c | tr -s ' ' | tr '\n' ';')" \
    " $MAILS email; $UPDATES telegram; $WEBHOOKS whatsapp;"
expect "... and no message twice (rows, ids, channel ids)" \
    "$(wc -l <"$T/archive.jsonl") $(jq -r .id "$T/archive.jsonl" | sort -u | wc -l) $(jq -r '.channel + " " + .src_id' "$T/archive.jsonl" | sort -u | wc -l)" \
    "$TOTAL $TOTAL $TOTAL"
expect "every wamid sent is archived" \
    "$(jq -r 'select(.channel == "whatsapp") | .src_id' "$T/archive.jsonl" | sort | md5sum)" \
    "$(seq "$WEBHOOKS" | sed 's/^/wamid.bp-/' | sort | md5sum)"
expect "every update_id queued is archived" \
    "$(jq -r 'select(.channel == "telegram") | .src_id' "$T/archive.jsonl" | sort | md5sum)" \
    "$(printf '%s\n' $UPS_ALL | sort | md5sum)"
expect "every Message-ID of the mailbox is archived" \
    "$(jq -r 'select(.channel == "email") | .src_id' "$T/archive.jsonl" | sort | md5sum)" \
    "$(seq "$MAILS" | sed 's/.*/bp-&@example.com/' | sort | md5sum)"
expect "the archive keeps the webhook's texts, each once" \
    "$(jq -r 'select(.channel == "whatsapp") | .text' "$T/archive.jsonl" | sort -u | wc -l)" "$WEBHOOKS"
tg_confirmed() { [ "$(tg_state confirmed_offset)" == $((1000001 + UPDATES)) ]; }
wait_until 10 tg_confirmed
expect "Telegram: every update confirmed, none left queued" \
    "$(tg_state confirmed_offset) $(tg_state queued)" "$((1000001 + UPDATES)) 0"
expect "IMAP: the cursor at the last UID, each UID fetched once" \
    "$(imap_cursor) $(jq -r 'select(.command == "UID FETCH") | .line | split(" ")[3]' "$T/imap.rec" | sort -n | uniq -c | awk '$1 != 1' | wc -l) $(jq -r 'select(.command == "UID FETCH")' "$T/imap.rec" | grep -c '^{')" \
    "1700000000 $MAILS 0 $MAILS"
check "no dead letters anywhere" sh -c "! test -s '$T/webhook.dead' && ! test -s '$T/telegram.dead' \
    && ! test -s '$T/mail.dead' && ! test -s '$T/identity.dead' && ! test -s '$T/archive.dead'"

# --- 3. SIGTERM: every stage exits 0. --------------------------------------
for s in "omni-ingest-webhook $WHPID" "omni-ingest-telegram $TGPID" "omni-ingest-mail $MPID" \
    "omni-identity $IDPID" "omni-archive $ARPID"; do
    kill -TERM "${s#* }"
    wait "${s#* }"
    expect "SIGTERM: ${s% *} exits 0" "$?" "0"
done
check "no sanitizer report" sh -c "! grep -q -e 'AddressSanitizer' -e 'runtime error' -e 'LeakSanitizer' \
    '$T/webhook.err' '$T/telegram.err' '$T/mail.err' '$T/identity.err' '$T/archive.err'"
