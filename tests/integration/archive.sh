# archive — omni-archive as real processes: every envelope stored once and
# passed on, replays change nothing, acks only after commit (ids already
# stored acked again), the customer's timeline across channels, search with
# accents folded, export and re-import, conversations with first response,
# forget that leaves nothing of the person, retain.
. "$(dirname "$0")/../lib.sh"
TRAFFIC=$ROOT/examples/traffic.jsonl
A=$BIN/omni-archive
export TZ=UTC

# q DB SQL: one sqlite3 query, output as is.
q() { sqlite3 -batch "$1" "$2"; }

# snapshot DB: a digest of every stored column and every conversation.
snapshot() {
    q "$1" "SELECT id, ts, channel, dir, customer, conversation, \"from\", \"to\", text, subject,
               reply_to, hex(env) FROM messages ORDER BY id;
            SELECT * FROM conversations ORDER BY id;
            SELECT count(*) FROM messages_fts_docsize;" | md5sum
}

# 1. A filter in a pipeline: everything passes, everything is stored.
got=$("$BIN/omni-inject" "$TRAFFIC" 2>/dev/null | "$A" --db "$T/a.db" 2>"$T/a.err" | "$BIN/omni-tap" --count)
expect "inject | archive | tap keeps all 340" "$got" "340"
expect "340 rows stored" "$(q "$T/a.db" 'SELECT count(*) FROM messages')" "340"
expect "every dir stored (event, in, out)" "$(q "$T/a.db" 'SELECT group_concat(d) FROM (SELECT DISTINCT dir d FROM messages ORDER BY 1)')" "event,in,out"
expect "texts and subjects indexed" "$(q "$T/a.db" 'SELECT count(*) FROM messages_fts_docsize')" \
    "$(q "$T/a.db" 'SELECT count(*) FROM messages WHERE text IS NOT NULL OR subject IS NOT NULL')"
expect "WAL mode" "$(q "$T/a.db" 'PRAGMA journal_mode')" "wal"
check "the stored msgpack is the envelope (without the archive's trace stamp)" \
    test "$(q "$T/a.db" "SELECT count(*) FROM messages WHERE instr(env, CAST('archive' AS BLOB)) = 0")" = 340
check "FTS index is consistent" q "$T/a.db" "INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')"

# 2. Replays: the same envelopes (same ids) change nothing, and still pass.
"$BIN/omni-inject" "$TRAFFIC" 2>/dev/null >"$T/traffic.mp"
"$A" --db "$T/b.db" <"$T/traffic.mp" >/dev/null 2>&1
before=$(snapshot "$T/b.db")
got=$("$A" --db "$T/b.db" <"$T/traffic.mp" 2>/dev/null | "$BIN/omni-tap" --count)
expect "a replay passes every envelope on again" "$got" "340"
expect "a replay changes no row, conversation or index entry" "$(snapshot "$T/b.db")" "$before"
cat "$T/traffic.mp" "$T/traffic.mp" | "$A" --db "$T/b2.db" --batch 7 >/dev/null 2>&1
expect "duplicates within one run are stored once" "$(q "$T/b2.db" 'SELECT count(*) FROM messages')" "340"

# 3. Acks: a full batch is committed and acked at once, the rest after
#    --batch-ms; nothing is acked or visible before its commit; ids already
#    stored are acked again; SIGTERM commits and acks the open batch.
spawn "$A" acks "ipc://$T/acks" >"$T/acks.txt" 2>"$T/acks.err"
spawn "$A" --db "$T/k.db" --in "@ipc://$T/in" --acks "ipc://$T/acks" --batch 100 --batch-ms 1500ms \
    --out - >/dev/null 2>"$T/k.err"
KPID=$SPAWNED
wait_until 10 test -S "$T/acks"
sleep 0.4      # the subscriber connects (it retries every 100 ms)
acked() { wc -l <"$T/acks.txt"; }
acked_at_least() { [ "$(acked)" -ge "$1" ]; }
"$BIN/omni-inject" --out ">ipc://$T/in" "$TRAFFIC" 2>/dev/null
wait_until 10 acked_at_least 300
expect "three full batches acked at once, the open one neither acked nor visible" \
    "$(acked) $(q "$T/k.db" 'SELECT count(*) FROM messages')" "300 300"
wait_until 10 acked_at_least 340
expect "the last batch acked after --batch-ms" "$(acked) $(q "$T/k.db" 'SELECT count(*) FROM messages')" "340 340"
q "$T/k.db" 'SELECT id FROM messages ORDER BY id' >"$T/k.ids"
expect "every stored id acked, once" "$(sort "$T/acks.txt" | md5sum)" "$(md5sum <"$T/k.ids")"
"$A" export --db "$T/k.db" | "$BIN/omni-relay" --out ">ipc://$T/in" 2>/dev/null
wait_until 10 acked_at_least 680
expect "a re-sent batch is acked again and stored once" \
    "$(acked) $(q "$T/k.db" 'SELECT count(*) FROM messages')" "680 340"
expect "the re-sent ids are the stored ones" "$(tail -n 340 "$T/acks.txt" | sort | md5sum)" "$(md5sum <"$T/k.ids")"
head -n 10 "$TRAFFIC" | "$BIN/omni-inject" --out ">ipc://$T/in" 2>/dev/null
sleep 0.4
expect "ten new envelopes held in an open batch" "$(acked) $(q "$T/k.db" 'SELECT count(*) FROM messages')" "680 340"
kill -TERM "$KPID"
wait "$KPID"
expect "SIGTERM exits 0" "$?" "0"
wait_until 5 acked_at_least 690
expect "SIGTERM commits and acks the open batch" "$(acked) $(q "$T/k.db" 'SELECT count(*) FROM messages')" "690 350"

# 4. A customer's timeline across channels, from their customer id or any
#    handle. The outbound reply arrives first; a close event ends it.
cat >"$T/people.jsonl" <<'LINES'
{"channel":"whatsapp","dir":"out","from":"whatsapp:+551140041234","to":"whatsapp:+5511900000001","ts":1794787500000,"text":"Oi Ana, já vou verificar o seu pedido","customer":"cus-ana","conversation":"conv-ana-1","route":{"target":"suporte","queue":"suporte","agent":"marina"}}
{"channel":"whatsapp","dir":"in","from":"whatsapp:+5511900000001","to":"whatsapp:+551140041234","ts":1794787200000,"text":"Oi, boa noite! Quero meu REEMBOLSO","customer":"cus-ana","conversation":"conv-ana-1","route":{"target":"bot"}}
{"channel":"sms","dir":"in","from":"tel:+5511900000001","to":"tel:+551140041234","ts":1794787260000,"text":"mandei no zap também","customer":"cus-ana","conversation":"conv-ana-1"}
{"channel":"email","dir":"in","from":"mailto:ana@example.com","to":"mailto:atendimento@jabuti.example","ts":1794787400000,"subject":"Comprovante Xilofrango","text":"Segue o comprovante zanzibarquix\n\nAna","customer":"cus-ana","conversation":"conv-ana-1"}
{"channel":"whatsapp","dir":"event","from":"whatsapp:+551140041234","ts":1794788000000,"customer":"cus-ana","conversation":"conv-ana-1","meta":{"event":"close"}}
{"channel":"whatsapp","dir":"in","from":"whatsapp:+5511900000001","to":"whatsapp:+551140041234","ts":1794700000000,"text":"mensagem antiga zanzibarquix sem cliente"}
{"channel":"telegram","dir":"in","from":"telegram:777","to":"telegram:jabuti","ts":1794787300000,"text":"NÃO recebi o produto","customer":"cus-bia","conversation":"conv-bia-1","route":{"target":"bot"}}
{"channel":"api","dir":"in","from":"api:crm","ts":1577836800000,"text":"registro de 2020","customer":"cus-old","conversation":"conv-old-1"}
LINES
"$BIN/omni-inject" "$T/people.jsonl" 2>/dev/null | "$A" --db "$T/p.db" >/dev/null 2>"$T/p.err"
"$A" history cus-ana --db "$T/p.db" >"$T/h.txt"
expect "history: in time order across channels" "$(awk '{print $3 "/" $4}' "$T/h.txt" | tr '\n' ' ')" \
    "whatsapp/in sms/in email/in whatsapp/out whatsapp/event "
expect "history: a readable line" "$(head -n 1 "$T/h.txt")" \
    "2026-11-16 00:00  whatsapp  in   whatsapp:+5511900000001   Oi, boa noite! Quero meu REEMBOLSO"
check "history: subject shown, text on one line" \
    grep -q 'mailto:ana@example.com    \[Comprovante Xilofrango\] Segue o comprovante zanzibarquix Ana$' "$T/h.txt"
expect "history from a handle: the customers on its messages, and its own without one" \
    "$("$A" history tel:+5511900000001 --db "$T/p.db" | awk '{print $3 "/" $4}' | tr '\n' ' ')" \
    "whatsapp/in sms/in email/in whatsapp/out whatsapp/event "
"$A" history whatsapp:+5511900000001 --db "$T/p.db" --json >"$T/h.json"
check "history --json: one envelope per line, in time order" \
    jq -e -s 'length == 6 and (map(.ts) == (map(.ts) | sort)) and .[0].customer == null
              and .[1].customer == "cus-ana" and (.[4].trace[0][0] == "inject")' "$T/h.json"
"$A" history nobody --db "$T/p.db" >/dev/null 2>&1
expect "history of nobody exits 1" "$?" "1"

# 5. Conversations: status, channels, first inbound, first response, close.
expect "conversation of cus-ana" \
    "$(q "$T/p.db" "SELECT customer, status, channels, first_inbound, first_response, messages, closed_at, last_activity
                    FROM conversations WHERE id = 'conv-ana-1'")" \
    "cus-ana|closed|whatsapp,sms,email|1794787200000|1794787500000|4|1794788000000|1794788000000"
expect "conversation with the bot, no response yet" \
    "$(q "$T/p.db" "SELECT status, first_inbound, ifnull(first_response, '-') FROM conversations WHERE id = 'conv-bia-1'")" \
    "bot|1794787300000|-"

# 6. Search: case and accents folded, ranked, readable or JSON.
check "search 'reembolso' finds 'REEMBOLSO'" \
    sh -c "'$A' search reembolso --db '$T/p.db' | grep -q 'Quero meu REEMBOLSO'"
check "search 'nao' finds 'NÃO'" \
    sh -c "'$A' search nao --db '$T/p.db' --json | jq -e -s 'length == 1 and .[0].text == \"NÃO recebi o produto\"'"
check "search 'NÃO' finds it too, in the sample traffic" \
    sh -c "'$A' search 'NÃO' --db '$T/a.db' | grep -q 'NÃO quero falar com robô'"
check "search matches subjects" sh -c "'$A' search xilofrango --db '$T/p.db' | grep -q 'mailto:ana@example.com'"
check "search finds every match" \
    sh -c "'$A' search zanzibarquix --db '$T/p.db' --json | jq -e -s 'length == 2'"
"$A" search inexistentepalavra --db "$T/p.db" >/dev/null 2>&1
expect "search without a match exits 1" "$?" "1"

# 7. Export: every stored envelope, in ts order; re-imported, the same rows.
expect "export | tap reads every envelope" "$("$A" export --db "$T/a.db" | "$BIN/omni-tap" --count)" "340"
check "export is in ts order" sh -c "'$A' export --db '$T/a.db' | '$BIN/omni-tap' | jq -e -s 'map(.ts) == (map(.ts) | sort)'"
"$A" export --db "$T/a.db" | "$A" --db "$T/c.db" >/dev/null 2>&1
expect "export | archive into a new db gives the same rows" "$(snapshot "$T/c.db")" "$(snapshot "$T/a.db")"
since=$(q "$T/a.db" 'SELECT ts FROM messages ORDER BY ts LIMIT 1 OFFSET 100')
until=$(q "$T/a.db" 'SELECT ts FROM messages ORDER BY ts LIMIT 1 OFFSET 200')
expect "export --since --until (ms)" "$("$A" export --db "$T/a.db" --since "$since" --until "$until" | "$BIN/omni-tap" --count)" \
    "$(q "$T/a.db" "SELECT count(*) FROM messages WHERE ts >= $since AND ts < $until")"
expect "export --since (ISO date)" "$("$A" export --db "$T/a.db" --since 2026-11-18 | "$BIN/omni-tap" --count)" \
    "$(q "$T/a.db" "SELECT count(*) FROM messages WHERE ts >= 1794960000000")"
"$A" export --db "$T/a.db" --since yesterday >/dev/null 2>&1
expect "export rejects a bad time with 64" "$?" "64"

# 8. Forget: nothing of the person remains, in any table or in the file.
q "$T/p.db" 'PRAGMA wal_checkpoint(TRUNCATE)' >/dev/null
check "before forget, the file holds their words" test "$(grep -c -a zanzibarquix "$T/p.db")" -gt 0
q "$T/p.db" "CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab USING fts5vocab('main', 'messages_fts', 'row');
             SELECT count(*) FROM temp.vocab WHERE term IN ('zanzibarquix', 'xilofrango')" >"$T/vocab.before"
expect "before forget, the index holds their words" "$(cat "$T/vocab.before")" "2"
"$A" forget cus-ana --db "$T/p.db" >"$T/forget.out" 2>&1
expect "forget exits 0" "$?" "0"
expect "forget says what it erased" "$(cat "$T/forget.out")" "forgot cus-ana: 6 messages, 1 conversations"
expect "no message of theirs (by customer or handle)" \
    "$(q "$T/p.db" "SELECT count(*) FROM messages WHERE customer = 'cus-ana' OR \"from\" LIKE '%5511900000001'
                    OR \"to\" LIKE '%5511900000001' OR \"from\" = 'mailto:ana@example.com'")" "0"
expect "no conversation of theirs" "$(q "$T/p.db" "SELECT count(*) FROM conversations WHERE customer = 'cus-ana'")" "0"
expect "no index entry of theirs (terms)" \
    "$(q "$T/p.db" "CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab USING fts5vocab('main', 'messages_fts', 'row');
                    SELECT count(*) FROM temp.vocab WHERE term IN ('zanzibarquix', 'xilofrango', 'reembolso')")" "0"
expect "no index entry of theirs (match)" \
    "$(q "$T/p.db" "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'zanzibarquix OR xilofrango'")" "0"
expect "FTS shadow tables hold only the rows left" \
    "$(q "$T/p.db" "SELECT (SELECT count(*) FROM messages_fts_docsize) || '/' ||
                    (SELECT count(*) FROM messages_fts_docsize WHERE id NOT IN (SELECT seq FROM messages))")" "2/0"
check "the index is consistent after forget" q "$T/p.db" "INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')"
for word in zanzibarquix Xilofrango 5511900000001 ana@example.com cus-ana conv-ana-1 "Quero meu"; do
    expect "the database file holds no '$word'" "$(cat "$T/p.db" "$T/p.db-wal" 2>/dev/null | grep -c -a "$word")" "0"
done
expect "the WAL is empty after forget" "$(stat -c %s "$T/p.db-wal" 2>/dev/null || echo 0)" "0"
expect "others are kept" "$("$A" search nao --db "$T/p.db" | grep -c 'NÃO recebi')" "1"
check "the file still holds others' words" test "$(grep -c -a 'recebi o produto' "$T/p.db")" -gt 0

# 9. Retain: what is older than N days goes, with its conversation.
"$A" retain --older-than 365 --db "$T/p.db" >"$T/retain.out" 2>&1
expect "retain deletes what is older" "$(cat "$T/retain.out")" \
    "deleted 1 messages and 1 conversations older than 365 days"
expect "retain keeps the rest" "$(q "$T/p.db" "SELECT group_concat(customer) FROM messages")" "cus-bia"

"$BIN/omni-inject" "$T/people.jsonl" 2>/dev/null | "$A" --db "$T/r.db" >/dev/null 2>&1
spawn "$A" --db "$T/r.db" --retain 365d --tick 100ms --in "@ipc://$T/in4" --out - >/dev/null 2>"$T/r.err"
RPID=$SPAWNED
retained() { [ "$(q "$T/r.db" 'SELECT count(*) FROM messages')" = 7 ]; }
check "the service's --retain deletes what is older" wait_until 10 retained
kill -TERM "$RPID"
wait "$RPID"
check "and says so" grep -q 'retention: deleted 1 messages and 1 conversations' "$T/r.err"

# 10. Options and errors.
"$A" --check >/dev/null 2>&1
expect "--db is required (64)" "$?" "64"
check "--check passes with --db and --acks" "$A" --check --db "$T/x.db" --acks "ipc://$T/x"
"$A" --db "$T/x.db" --batch 0 </dev/null >/dev/null 2>&1
expect "--batch 0 is refused (64)" "$?" "64"
"$A" history cus-ana --db "$T/missing.db" >/dev/null 2>&1
expect "a missing database is 66" "$?" "66"
printf 'not a db' >"$T/junk.db"
"$A" --db "$T/junk.db" </dev/null >/dev/null 2>&1
check "a file that is not a database is refused" test "$?" -ne 0
sqlite3 "$T/other.db" 'CREATE TABLE t (x)'
"$A" --db "$T/other.db" </dev/null >/dev/null 2>&1
expect "another program's database is refused (78)" "$?" "78"
check "CLI reads while the service writes" sh -c "
    '$BIN/omni-inject' '$TRAFFIC' 2>/dev/null | '$A' --db '$T/live.db' --batch 1 >/dev/null 2>&1 &
    n=0; until '$A' export --db '$T/live.db' >/dev/null 2>&1; do n=\$((n + 1)); [ \$n -lt 500 ] || exit 1; sleep 0.01; done
    for i in 1 2 3 4 5 6 7 8 9 10; do '$A' export --db '$T/live.db' >/dev/null || exit 1; sleep 0.02; done
    wait"

# 11. Someone else holds the write lock for 2 s: the archive retries (it
#     does not block its loop, drop or ack), then stores and passes everything.
spawn "$A" --db "$T/l.db" --in "@ipc://$T/in3" --batch 10 --out - >"$T/l.out" 2>"$T/l.err"
LPID=$SPAWNED
schema_ready() { [ "$(q "$T/l.db" 'PRAGMA user_version')" = 1 ]; }
wait_until 10 schema_ready
{ echo ".timeout 5000"; echo "BEGIN IMMEDIATE;"; sleep 2; echo "ROLLBACK;"; } | sqlite3 "$T/l.db" &
LOCKER=$!
sleep 0.3
"$BIN/omni-inject" --out ">ipc://$T/in3" "$TRAFFIC" 2>/dev/null
sleep 0.5
expect "nothing is stored while the lock is held" "$(q "$T/l.db" 'SELECT count(*) FROM messages')" "0"
wait "$LOCKER"
stored_l() { [ "$(q "$T/l.db" 'SELECT count(*) FROM messages')" = 340 ]; }
check "all stored once the lock is released" wait_until 15 stored_l
kill -TERM "$LPID"
wait "$LPID"
expect "all passed on, once" "$("$BIN/omni-tap" --count <"$T/l.out")" "340"
check "the wait is logged" grep -q 'database is locked' "$T/l.err"

# 12. kill -9 under load: every id acked before the kill is stored.
for i in $(seq 20); do cat "$TRAFFIC"; done >"$T/big.jsonl"
spawn "$A" acks "ipc://$T/acks2" >"$T/acks2.txt" 2>/dev/null
spawn "$A" --db "$T/m.db" --in "@ipc://$T/in2" --acks "ipc://$T/acks2" --batch 64 --out - >/dev/null 2>&1
MPID=$SPAWNED
wait_until 10 test -S "$T/acks2"
sleep 0.4
spawn "$BIN/omni-inject" --out ">ipc://$T/in2" "$T/big.jsonl" 2>/dev/null
acked2_at_least() { [ "$(wc -l <"$T/acks2.txt")" -ge "$1" ]; }
wait_until 20 acked2_at_least 1000
kill -KILL "$MPID"
wait "$MPID" 2>/dev/null
sleep 0.2
sort -u "$T/acks2.txt" >"$T/acked2.ids"
q "$T/m.db" 'SELECT id FROM messages ORDER BY id' >"$T/m.ids"
check "some were acked before the kill" test "$(wc -l <"$T/acked2.ids")" -ge 1000
expect "every acked id is stored after kill -9" "$(comm -23 "$T/acked2.ids" "$T/m.ids" | wc -l)" "0"
check "the database is sound after kill -9" \
    test "$(q "$T/m.db" "PRAGMA integrity_check; INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")" = ok
