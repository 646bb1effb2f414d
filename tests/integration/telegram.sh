# telegram — omni-ingest-telegram against fake_telegram (a real HTTP
# server speaking the Bot API): updates become envelopes; the offset that
# confirms updates to Telegram moves only after the spool has committed
# them (a locked spool holds it; kill -9 mid-stream loses and doubles
# nothing in the archive); a full spool holds the offset until acks drain
# it; 429's retry_after and 5xx are waited out; a refused token stops with
# 78; SIGTERM ends a held long poll at once with 0.
. "$(dirname "$0")/../lib.sh"
FAKE=$ROOT/tests/fakes/fake_telegram.py
TG=$BIN/omni-ingest-telegram
echo "123456:TEST-TOKEN" >"$T/token"

# fake NAME [ARGS...]: starts fake_telegram; $API is its base URL.
fake() {
    local name=$1
    shift
    spawn python3 "$FAKE" --ready "$T/$name.port" --record "$T/$name.rec" "$@" 2>>"$T/$name.fake.err"
    FAKEPID=$SPAWNED
    if ! wait_until 10 test -s "$T/$name.port"; then
        not_ok "fake_telegram $name started"
        exit 1
    fi
    API=http://127.0.0.1:$(cat "$T/$name.port")
}
# st KEY: one value of the fake's /_control/state.
st() { curl -s "$API/_control/state" | jq -r ".$1"; }
st_is() { [ "$(st "$1")" == "$2" ]; }
st_at_least() { [ "$(st "$1")" -ge "$2" ]; }
# push: queues the updates on stdin (JSON lines).
push() { curl -s -X POST --data-binary @- "$API/_control/updates" >/dev/null; }
control() { curl -s -X POST -d "$1" "$API/_control" >/dev/null; }
# texts FROM TO: text updates FROM..TO (update_id = 1000000 + n).
texts() {
    local i
    for i in $(seq "$1" "$2"); do
        printf '{"update_id":%d,"message":{"message_id":%d,"date":1741000000,"chat":{"id":%d,"type":"private"},"from":{"id":%d,"first_name":"Cliente %d"},"text":"mensagem %d"}}\n' \
            $((1000000 + i)) "$i" $((500 + i % 7)) $((500 + i % 7)) "$i" "$i"
    done
}
lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
lines_at_least() { [ "$(lines "$1")" -ge "$2" ]; }
# offsets NAME: the offsets the ingestor sent in getUpdates, in order.
offsets() { jq -r 'select(.path | endswith("/getUpdates")) | (.body | fromjson | .offset // 0)' "$T/$1.rec"; }

# 1. Updates become envelopes (text, photo, document, edit, location);
#    service messages are passed over.
cat >"$T/a.ups" <<'UPS'
{"update_id": 5001, "message": {"message_id": 11, "date": 1741000000, "chat": {"id": 777001, "type": "private", "first_name": "Ana"}, "from": {"id": 777001, "is_bot": false, "first_name": "Ana", "last_name": "Souza", "username": "ana_s", "language_code": "pt-br"}, "text": "Oi, meu pedido 48213 não chegou"}}
{"update_id": 5002, "message": {"message_id": 12, "date": 1741000010, "chat": {"id": 777001, "type": "private"}, "from": {"id": 777001, "first_name": "Ana", "username": "ana_s"}, "photo": [{"file_id": "AgAD-small", "file_unique_id": "s1", "file_size": 1200, "width": 90, "height": 67}, {"file_id": "AgAD-big", "file_unique_id": "b1", "file_size": 84211, "width": 1280, "height": 960}], "caption": "a tampa veio amassada"}}
{"update_id": 5003, "message": {"message_id": 13, "date": 1741000011, "chat": {"id": -100200300, "type": "group", "title": "Loja"}, "from": {"id": 9, "first_name": "Admin"}, "new_chat_members": [{"id": 10, "first_name": "Novo"}]}}
{"update_id": 5004, "message": {"message_id": 14, "date": 1741000020, "chat": {"id": 777002, "type": "private"}, "from": {"id": 777002, "first_name": "Bruno"}, "document": {"file_id": "BQAD-doc", "file_unique_id": "d1", "file_name": "nota-fiscal.pdf", "mime_type": "application/pdf", "file_size": 53211}}}
{"update_id": 5005, "edited_message": {"message_id": 11, "date": 1741000000, "edit_date": 1741000100, "chat": {"id": 777001, "type": "private"}, "from": {"id": 777001, "first_name": "Ana"}, "text": "Oi, meu pedido 48213 ainda não chegou"}}
{"update_id": 5006, "message": {"message_id": 15, "date": 1741000030, "chat": {"id": 777003, "type": "private"}, "from": {"id": 777003, "first_name": "Carla"}, "location": {"latitude": -23.5613, "longitude": -46.6565}}}
UPS
fake a --updates "$T/a.ups"
spawn "$BIN/omni-tap" --in "@ipc://$T/a.out" --tick 100ms >"$T/a.jsonl" 2>"$T/a.tap.err"
spawn "$TG" --api "$API" --token-file "$T/token" --spool "$T/a.db" --poll-timeout 2s \
    --out ">ipc://$T/a.out" 2>"$T/a.err"
TGPID=$SPAWNED
wait_until 10 st_is confirmed_offset 5007
wait_until 5 lines_at_least "$T/a.jsonl" 5
expect "six updates, one a service message: five envelopes" "$(lines "$T/a.jsonl")" "5"
expect "a text message" "$(jq -c 'select(.src_id == "5001") | {channel, dir, from, to, text, meta}' "$T/a.jsonl")" \
    '{"channel":"telegram","dir":"in","from":"telegram:777001","to":"telegram:omnibus_test_bot","text":"Oi, meu pedido 48213 não chegou","meta":{"username":"ana_s","first_name":"Ana","last_name":"Souza","language_code":"pt-br","user_id":777001,"chat_type":"private","message_id":"11","date":1741000000}}'
expect "a photo: its largest size, with the caption as text" \
    "$(jq -c 'select(.src_id == "5002") | [.text, .attachments]' "$T/a.jsonl")" \
    '["a tampa veio amassada",[{"type":"image","file_id":"AgAD-big","mime_type":"image/jpeg","size":84211,"width":1280,"height":960}]]'
expect "a document: name, type and size" \
    "$(jq -c 'select(.src_id == "5004") | [.from, .text, .attachments]' "$T/a.jsonl")" \
    '["telegram:777002",null,[{"type":"document","file_id":"BQAD-doc","name":"nota-fiscal.pdf","mime_type":"application/pdf","size":53211}]]'
expect "an edit is a message of its own, marked" \
    "$(jq -c 'select(.src_id == "5005") | [.text, .meta.edited, .meta.edit_date]' "$T/a.jsonl")" \
    '["Oi, meu pedido 48213 ainda não chegou",true,1741000100]'
expect "a location: a geo: URI" "$(jq -c 'select(.src_id == "5006") | [.text, .attachments]' "$T/a.jsonl")" \
    '[null,[{"type":"location","url":"geo:-23.5613,-46.6565"}]]'
expect "every envelope has a ULID id, ts and the ingestor's trace" \
    "$(jq -r 'select((.id | test("^[0-9A-HJKMNP-TV-Z]{26}$")) and .v == 1 and .ts > 0 and .trace[0][0] == "ingest-telegram") | .src_id' "$T/a.jsonl" | tr '\n' ' ')" \
    "5001 5002 5004 5005 5006 "
expect "the offset is kept in the spool" "$(sqlite3 "$T/a.db" "SELECT value FROM state WHERE key = 'telegram.offset'")" "5007"
check "the token never reaches a log line" bash -c "! grep -q TEST-TOKEN '$T/a.err'"

# 2. SIGTERM while a long poll is held: exit 0 at once.
control '{"reset": true}'
wait_until 5 st_is polls_held 1
t0=$(date +%s%N)
kill -TERM "$TGPID"
wait "$TGPID"
rc=$?
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
expect "SIGTERM during a long poll exits 0" "$rc" "0"
check "... within 1 s (took ${ms} ms)" test "$ms" -lt 1000
# A held poll is recorded when it ends (here: its timeout).
offsets_are() { [ "$(offsets a | uniq | tr '\n' ' ')" == "$1" ]; }
wait_until 5 offsets_are "0 5007 "
expect "getUpdates asked for offset 0, then 5007" "$(offsets a | uniq | tr '\n' ' ')" "0 5007 "

# 3. A refused token stops the tool with 78 (systemd does not restart it).
"$TG" --api "$API" --token "123456:WRONG" --spool "$T/bad.db" >/dev/null 2>"$T/bad.err"
expect "a wrong token exits 78" "$?" "78"
check "... saying why" grep -q "Telegram refuses the token (401 Unauthorized)" "$T/bad.err"
"$TG" --api "$API" --spool "$T/bad.db" >/dev/null 2>"$T/bad2.err"
expect "no token exits 78" "$?" "78"

# 4. The offset moves only after the spool commits: while another process
#    holds the spool's write lock, updates are fetched, not stored, and
#    not confirmed (the same offset is asked again and Telegram sends them
#    again); once the lock goes they are stored and confirmed.
fake b
spawn "$BIN/omni-tap" --in "@ipc://$T/b.out" --tick 100ms >"$T/b.jsonl" 2>"$T/b.tap.err"
spawn "$TG" --api "$API" --token-file "$T/token" --spool "$T/b.db" --poll-timeout 2s \
    --backoff-max 1s --out ">ipc://$T/b.out" 2>"$T/b.err"
BPID=$SPAWNED
texts 1 2 | push
wait_until 10 st_is confirmed_offset 1000003
printf 'BEGIN IMMEDIATE;\n.shell sleep 10\nCOMMIT;\n' | sqlite3 "$T/b.db" &
LOCK=$!
sleep 0.3
texts 3 5 | push
# getUpdates answers that carried updates 3..5 (from offset 1000003).
delivered() {
    jq -r 'select((.path | endswith("/getUpdates")) and ((.body | fromjson | .offset) == 1000003)
        and ((.response.result // []) | length) == 3) | .t' "$T/b.rec" | wc -l
}
delivered_twice() { [ "$(delivered)" -ge 2 ]; }
wait_until 9 delivered_twice
expect "while the spool is locked, updates fetched are not confirmed: Telegram sends them again" \
    "$(delivered) $(st confirmed_offset)" "2 1000003"
check "... and the ingestor says why" grep -q "cannot spool updates (offset stays 1000003)" "$T/b.err"
wait "$LOCK"
wait_until 10 st_is confirmed_offset 1000006
wait_until 5 lines_at_least "$T/b.jsonl" 5
expect "after the lock, all five stored once" \
    "$(jq -r .src_id "$T/b.jsonl" | sort | uniq | tr '\n' ' ')" "1000001 1000002 1000003 1000004 1000005 "
expect "... and confirmed" "$(sqlite3 "$T/b.db" "SELECT value FROM state WHERE key = 'telegram.offset'")" "1000006"

# 5. 429: retry_after is honoured, then polling goes on.
control '{"rate_limit": 1, "retry_after": 2}'
texts 6 6 | push
wait_until 10 st_is confirmed_offset 1000007
gap_429() {
    jq -rs '[.[] | select(.path | endswith("/getUpdates"))] | . as $r
        | [range(1; length) | select($r[. - 1].status == 429) | $r[.].t - $r[. - 1].t] | .[0]' "$T/b.rec"
}
gap_known() { [ "$(gap_429)" != "null" ]; }
wait_until 5 gap_known
gap=$(gap_429)
check "after a 429 with retry_after 2 the next getUpdates waits 2 s (waited ${gap} s)" \
    awk -v g="$gap" 'BEGIN { exit !(g >= 1.9 && g < 4) }'
check "... and says so" grep -q "rate limited (429 Too Many Requests: retry after 2); again in 2 s" "$T/b.err"

# 6. 5xx and a dead server are waited out; nothing is lost.
control '{"fail": 502, "count": 2}'
texts 7 7 | push
wait_until 15 st_is confirmed_offset 1000008
check "502s are waited out" grep -q "getUpdates: 502 Bad Gateway; again in" "$T/b.err"
wait_until 5 lines_at_least "$T/b.jsonl" 7
expect "... and the update arrives" "$(jq -r .src_id "$T/b.jsonl" | tail -n 2 | tr '\n' ' ')" "1000006 1000007 "
# The API goes away (connection refused) and comes back on the same port.
port=$(cat "$T/b.port")
kill -TERM "$FAKEPID"
wait "$FAKEPID"
sleep 2
check "a dead API is waited out" grep -q "getUpdates: Failed to connect to 127.0.0.1 port $port" "$T/b.err"
rm -f "$T/b.port"
fake b --port "$port"
texts 8 8 | push
wait_until 15 st_is confirmed_offset 1000009
wait_until 5 lines_at_least "$T/b.jsonl" 8
expect "... and when it is back, polling goes on from the same offset" \
    "$(jq -r .src_id "$T/b.jsonl" | tail -n 1)" "1000008"
kill -TERM "$BPID"
wait "$BPID"
expect "SIGTERM exits 0" "$?" "0"

# 7. kill -9 mid-stream, then a restart: every update in the archive once.
#    The ingestor sends through its spool to omni-archive, which acks.
fake c
control '{"delay_ms": 30}'
spawn "$BIN/omni-archive" --db "$T/c.arch.db" --in "@ipc://$T/c.in" --acks "ipc://$T/c.acks" \
    --batch-ms 50ms >/dev/null 2>"$T/c.arch.err"
texts 1 400 | push
ingest_c() {
    spawn "$TG" --api "$API" --token-file "$T/token" --spool "$T/c.db" --poll-timeout 2s --limit 7 \
        --out ">ipc://$T/c.in" --acks "ipc://$T/c.acks" --resend-after 1s 2>>"$T/c.err"
    CPID=$SPAWNED
}
ingest_c
wait_until 20 st_at_least confirmed_offset 1000120
{ kill -KILL "$CPID"; wait "$CPID"; } 2>/dev/null
killed_at=$(st confirmed_offset)
check "killed mid-stream (confirmed up to $killed_at of 1000401)" test "$killed_at" -lt 1000401
ingest_c
wait_until 30 st_is confirmed_offset 1000401
archived() { sqlite3 "$T/c.arch.db" 'SELECT count(*) FROM messages'; }
archived_is() { [ "$(archived)" == "$1" ]; }
wait_until 20 archived_is 400
expect "after kill -9 and a restart: 400 updates, 400 archived, each once" \
    "$(sqlite3 "$T/c.arch.db" "SELECT count(*), count(DISTINCT text), count(DISTINCT id) FROM messages WHERE channel = 'telegram'")" \
    "400|400|400"
expect "the spool remembers each update_id once" \
    "$(sqlite3 "$T/c.db" "SELECT count(*), count(DISTINCT src_id) FROM seen")" "400|400"
spooled_empty() { [ "$(sqlite3 "$T/c.db" 'SELECT count(*) FROM spool')" == 0 ]; }
wait_until 10 spooled_empty
expect "... and holds nothing unacknowledged" "$(sqlite3 "$T/c.db" 'SELECT count(*) FROM spool')" "0"
kill -TERM "$CPID"
wait "$CPID"
expect "the restarted ingestor exits 0 on SIGTERM" "$?" "0"

# 8. A full spool holds the offset: with --spool-max 3 and no archive
#    acking, three updates are stored and the rest stay with Telegram
#    (getUpdates asks for no more than the spool has room for, whatever
#    --limit says); when the archive comes and acks, polling resumes.
fake d
spawn "$TG" --api "$API" --token-file "$T/token" --spool "$T/d.db" --poll-timeout 1s --limit 100 \
    --spool-max 3 --out ">ipc://$T/d.in" --acks "ipc://$T/d.acks" --resend-after 1s 2>"$T/d.err"
DPID=$SPAWNED
texts 1 8 | push
d_spooled_is() { [ "$(sqlite3 "$T/d.db" 'SELECT count(*) FROM spool' 2>/dev/null)" == "$1" ]; }
wait_until 10 d_spooled_is 3
sleep 2
expect "the spool full: three stored, none confirmed to Telegram, no more fetched" \
    "$(sqlite3 "$T/d.db" 'SELECT count(*) FROM spool') $(st confirmed_offset) $(st queued) $(st 'by_path["/bot123456:TEST-TOKEN/getUpdates"]')" \
    "3 0 8 1"
check "... and the ingestor says so" grep -q "spool full (3 unacknowledged, --spool-max 3): holding offset 1000004" "$T/d.err"
spawn "$BIN/omni-archive" --db "$T/d.arch.db" --in "@ipc://$T/d.in" --acks "ipc://$T/d.acks" \
    --batch-ms 50ms >/dev/null 2>"$T/d.arch.err"
wait_until 20 st_is confirmed_offset 1000009
d_archived_is() { [ "$(sqlite3 "$T/d.arch.db" 'SELECT count(*) FROM messages' 2>/dev/null)" == "$1" ]; }
wait_until 20 d_archived_is 8
expect "acks drain the spool and polling resumes: all eight archived once" \
    "$(sqlite3 "$T/d.arch.db" 'SELECT count(*), count(DISTINCT text) FROM messages')" "8|8"
kill -TERM "$DPID"
wait "$DPID"
expect "exits 0" "$?" "0"
