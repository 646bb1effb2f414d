# mail — omni-ingest-mail as real processes. From an MTA pipe (one message
# on stdin): 0 once the message is committed to the spool, 65 when it is
# not a message, 75 when it cannot be stored (read-only directory, locked
# spool, full spool) so that the MTA retries; a re-delivery is one message.
# From an IMAP mailbox (fake_imap, a real IMAP4rev1 server that libcurl
# talks to): every message ingested, new mail on the next poll, the
# (UIDVALIDITY, UID) cursor kept across a restart, a UIDVALIDITY change
# read again without doubling, SIGTERM exits 0.
. "$(dirname "$0")/../lib.sh"
M=$BIN/omni-ingest-mail
MAIL=$ROOT/examples/mail
FAKE=$ROOT/tests/fakes/fake_imap.py

lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
lines_at_least() { [ "$(lines "$1")" -ge "$2" ]; }
# json FILE: the envelopes (msgpack) in FILE as JSON lines.
json() { "$BIN/omni-tap" <"$1"; }

# 1. stdin: each sample is spooled, exit 0, and sent on.
for f in plain html-only alternative latin1-qp base64-utf8 attachment reply-quoted reply-en; do
    "$M" --spool "$T/s.db" <"$MAIL/$f.eml" >>"$T/s.mp" 2>>"$T/s.err"
    expect "stdin: $f.eml is spooled, exit 0" "$?" "0"
done
json "$T/s.mp" >"$T/s.jsonl"
expect "eight messages, eight envelopes" "$(lines "$T/s.jsonl")" "8"
expect "each with its Message-ID as src_id" "$(jq -r .src_id "$T/s.jsonl" | sort | tr '\n' ' ')" \
    "0100018f-html-only-7a1c@email.example.net 20250305140245.51823.alt@example.org 47730.1741288800@example.com.br 9a8b7c6d.attach.20250310@empresa.example CAF1x9k2pQ@mail.example.com CAF1x9k7rT-reply@mail.example.com DB9PR01MB1234.reply-en@example.co.uk b64-7f3e91c2-d4a8@mail.example.jp "
expect "a reply: quotes trimmed, threading kept" \
    "$(jq -c 'select(.src_id == "CAF1x9k7rT-reply@mail.example.com") | {channel, dir, from, to, subject, text, meta}' "$T/s.jsonl")" \
    '{"channel":"email","dir":"in","from":"mailto:ana.souza@example.com","to":"mailto:atendimento@loja.example","subject":"Re: [Chamado #8812] Pedido 48213 ainda não chegou","text":"Oi Marina,\n\nRecebi hoje de manhã, obrigada! Só a tampa da panela veio com um\namassado pequeno.\n\nMando ainda hoje.","meta":{"message_id":"<CAF1x9k7rT-reply@mail.example.com>","in_reply_to":"<8812.2.1741006000@loja.example>","references":"<CAF1x9k2pQ@mail.example.com> <8812.1.1741003000@loja.example> <CAF1x9k4zZ@mail.example.com> <8812.2.1741006000@loja.example>","name":"Ana Souza","date":"2025-03-04T10:27:40-03"}}'
expect "attachments listed" "$(jq -c 'select(.attachments) | .attachments' "$T/s.jsonl")" \
    '[{"type":"document","mime_type":"application/pdf","name":"nota-fiscal-52290.pdf","size":1090},{"type":"image","mime_type":"image/jpeg","name":"etiqueta.jpg","size":2013,"inline":true}]'
expect "every envelope passes the stream's checks (ULID, ts, trace)" \
    "$(jq -r 'select((.id | test("^[0-9A-HJKMNP-TV-Z]{26}$")) and .v == 1 and .ts > 0 and .trace[0][0] == "ingest-mail")' "$T/s.jsonl" | grep -c '^{')" "8"
first=$(jq -r 'select(.src_id == "CAF1x9k2pQ@mail.example.com") | .id' "$T/s.jsonl")

# 2. The MTA delivers the same message again: one message, the first id.
"$M" --spool "$T/s.db" <"$MAIL/plain.eml" >"$T/s2.mp" 2>"$T/s2.err"
expect "a re-delivery exits 0" "$?" "0"
check "... is known by its Message-ID and keeps its id" grep -q "src_id=CAF1x9k2pQ@mail.example.com is spooled already as id=$first" "$T/s2.err"
expect "... and nothing new goes out" "$(json "$T/s2.mp" | wc -l)" "0"

# 3. Not a message: 65 (the MTA bounces it), with a reason, to --dead.
"$M" --spool "$T/s.db" --dead "$T/s.dead" <"$MAIL/malformed.eml" >/dev/null 2>"$T/bad.err"
expect "a malformed message exits 65" "$?" "65"
check "... saying why" grep -q 'rejected stdin reason="not an RFC 5322 message: no header fields"' "$T/bad.err"
check "... and it is in the dead letters" test -s "$T/s.dead"
printf 'To: atendimento@loja.example\nSubject: sem remetente\n\noi\n' | "$M" --spool "$T/s.db" >/dev/null 2>"$T/nofrom.err"
expect "a message with no sender exits 65" "$?" "65"
expect "nothing of them is spooled" "$(sqlite3 "$T/s.db" 'SELECT count(*) FROM seen')" "8"

# 4. Cannot store: 75, so that the MTA keeps the message and retries.
mkdir "$T/ro"
chmod 555 "$T/ro"
RUN=()
if [ "$(id -u)" = 0 ]; then
    # root writes anywhere: run as nobody to meet a read-only directory.
    chmod 755 "$T"
    RUN=(setpriv --reuid=65534 --regid=65534 --clear-groups)
fi
"${RUN[@]}" "$M" --spool "$T/ro/m.db" <"$MAIL/plain.eml" >/dev/null 2>"$T/ro.err"
expect "the spool's directory is read-only: exit 75" "$?" "75"
"$M" --spool "$T/missing/m.db" <"$MAIL/plain.eml" >/dev/null 2>"$T/missing.err"
expect "the spool's directory is missing: exit 75" "$?" "75"
printf 'BEGIN IMMEDIATE;\n.shell sleep 4\nCOMMIT;\n' | sqlite3 "$T/s.db" &
LOCK=$!
sleep 0.3
"$M" --spool "$T/s.db" <"$MAIL/plain.eml" >/dev/null 2>"$T/locked.err"
expect "the spool is locked by another writer past its busy time: exit 75" "$?" "75"
wait "$LOCK"
"$M" --spool "$T/f.db" --spool-max 1 --acks "ipc://$T/nobody.acks" <"$MAIL/plain.eml" >/dev/null 2>"$T/f1.err"
expect "with --spool-max 1 the first message is taken" "$?" "0"
"$M" --spool "$T/f.db" --spool-max 1 --acks "ipc://$T/nobody.acks" <"$MAIL/alternative.eml" >/dev/null 2>"$T/f2.err"
expect "... the next one, unacknowledged, finds it full: 75" "$?" "75"
check "... saying so" grep -q "spool full (1 unacknowledged, --spool-max 1): try again later" "$T/f2.err"
"$M" --spool "$T/cut.db" --max-size 2k <"$MAIL/attachment.eml" >"$T/cut.mp" 2>"$T/cut.err"
expect "a message past --max-size is taken, cut" "$?" "0"
expect "... and marked truncated" "$(json "$T/cut.mp" | jq -c '[.src_id, .meta.truncated]')" \
    '["9a8b7c6d.attach.20250310@empresa.example",true]'

# 5. IMAP: every message of the mailbox, in UID order.
spawn python3 "$FAKE" --mailbox "$MAIL" --user ana --password 's3cr3t pw' --ready "$T/imap.port" \
    --control-ready "$T/imap.ctl" --record "$T/imap.rec" 2>"$T/imap.fake.err"
wait_until 10 test -s "$T/imap.ctl" || { not_ok "fake_imap started"; exit 1; }
IMAP=imap://127.0.0.1:$(cat "$T/imap.port")/INBOX
CTL=http://127.0.0.1:$(cat "$T/imap.ctl")/_control
printf 's3cr3t pw\n' >"$T/pw"
spawn "$BIN/omni-tap" --in "@ipc://$T/i.out" --tick 100ms >"$T/i.jsonl" 2>"$T/i.tap.err"
ingest() {
    spawn "$M" --imap "$IMAP" --user ana --password-file "$T/pw" --interval 300ms --spool "$T/i.db" \
        --batch 4 --out ">ipc://$T/i.out" --dead "$T/i.dead" "$@" 2>>"$T/i.err"
    IPID=$SPAWNED
}
cursor() { sqlite3 "$T/i.db" "SELECT value FROM state WHERE key = 'imap.cursor'" 2>/dev/null; }
cursor_is() { [ "$(cursor)" == "$1" ]; }
fetches() { jq -r 'select(.command == "UID FETCH") | .line' "$T/imap.rec" | wc -l; }
ingest
wait_until 15 cursor_is "1700000000 9"
wait_until 5 lines_at_least "$T/i.jsonl" 8
expect "nine messages in the mailbox, one not a message: eight envelopes" "$(lines "$T/i.jsonl")" "8"
expect "the same eight as from stdin" "$(jq -r .src_id "$T/i.jsonl" | sort | md5sum)" "$(jq -r .src_id "$T/s.jsonl" | sort | md5sum)"
expect "in UID order (file name order)" "$(jq -r .src_id "$T/i.jsonl" | head -n 2 | tr '\n' ' ')" \
    "20250305140245.51823.alt@example.org 9a8b7c6d.attach.20250310@empresa.example "
check "the malformed one (UID 6) went to --dead with its reason" \
    grep -q 'rejected uidvalidity=1700000000 uid=6 reason="not an RFC 5322 message: no header fields"' "$T/i.err"
check "... and the dead letters" test -s "$T/i.dead"
expect "each message fetched once" "$(fetches)" "9"

# 6. New mail is picked up on the next poll.
cat >"$T/new.eml" <<'EOF'
From: Paula Reis <paula.reis@example.com>
To: atendimento@loja.example
Subject: Cupom não funciona
Date: Thu, 13 Mar 2025 19:02:11 -0300
Message-ID: <new-1@example.com>
Content-Type: text/plain; charset=utf-8

O cupom PRIMEIRACOMPRA dá erro no checkout.
EOF
curl -s -X POST --data-binary @"$T/new.eml" "$CTL/append" >/dev/null
wait_until 10 cursor_is "1700000000 10"
wait_until 5 lines_at_least "$T/i.jsonl" 9
expect "new mail arrives on the next poll" "$(tail -n 1 "$T/i.jsonl" | jq -c '[.src_id, .from, .text]')" \
    '["new-1@example.com","mailto:paula.reis@example.com","O cupom PRIMEIRACOMPRA dá erro no checkout."]'

# 7. The cursor survives a restart: nothing is fetched again.
kill -TERM "$IPID"
wait "$IPID"
expect "SIGTERM exits 0" "$?" "0"
before=$(fetches)
searches() { jq -r 'select(.command == "UID SEARCH") | .line' "$T/imap.rec" | grep -c 'UID 11:\*$'; }
s0=$(searches)
ingest
searched_again() { [ "$(searches)" -ge $((s0 + 2)) ]; }
wait_until 10 searched_again
expect "after a restart the search starts above the cursor, and nothing is fetched again" \
    "$(fetches) $(lines "$T/i.jsonl")" "$before 9"

# 8. UIDVALIDITY changes (the mailbox was re-created: the same messages
#    under new UIDs), and one new message: the mailbox is read again from
#    UID 1, and only the new message is new.
curl -s -X POST -d '{"uidvalidity": 1800000000}' "$CTL/uidvalidity" >/dev/null
sed 's/new-1@example.com/new-2@example.com/; s/Cupom não funciona/Cupom ainda não funciona/' "$T/new.eml" \
    | curl -s -X POST --data-binary @- "$CTL/append" >/dev/null
wait_until 15 cursor_is "1800000000 11"
wait_until 5 lines_at_least "$T/i.jsonl" 10
sleep 0.5
expect "after the UIDVALIDITY change: one new envelope, none doubled" \
    "$(lines "$T/i.jsonl") $(jq -r .src_id "$T/i.jsonl" | sort -u | wc -l) $(tail -n 1 "$T/i.jsonl" | jq -r .src_id)" \
    "10 10 new-2@example.com"
check "... said in the log" grep -q "UIDVALIDITY of $IMAP changed from 1700000000 to 1800000000" "$T/i.err"
expect "the spool knows each Message-ID once" "$(sqlite3 "$T/i.db" 'SELECT count(*), count(DISTINCT src_id) FROM seen')" "10|10"
kill -TERM "$IPID"
wait "$IPID"
expect "SIGTERM exits 0" "$?" "0"

# 9. A wrong password is waited out (logged), and SIGTERM still exits 0.
printf 'wrong\n' >"$T/badpw"
spawn "$M" --imap "$IMAP" --user ana --password-file "$T/badpw" --interval 300ms --spool "$T/w.db" \
    --out ">ipc://$T/w.out" 2>"$T/w.err"
WPID=$SPAWNED
wait_until 10 grep -q "UID SEARCH $IMAP" "$T/w.err"
kill -TERM "$WPID"
wait "$WPID"
expect "a refused login is logged and waited out; SIGTERM exits 0" "$?" "0"
check "... and the password never reaches the log" bash -c "! grep -q 's3cr3t\|wrong' '$T/w.err' '$T/i.err'"
