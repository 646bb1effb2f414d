# identity — omni-identity as real processes on real sqlite files: one
# customer across WhatsApp, SMS and e-mail when channel facts and link
# events say so (and not when nothing does), unlink splits them again,
# conflicts of verified handles are refused, replays change nothing, idle and
# close end conversations, forget leaves nothing of the person in the file,
# the CLI edits the graph while the service runs, and the sample traffic
# composes through inject | identity | tap.
. "$(dirname "$0")/../lib.sh"
TRAFFIC=$ROOT/examples/traffic.jsonl
I=$BIN/omni-identity
export TZ=UTC

# q DB SQL: one sqlite3 query, output as is.
q() { sqlite3 -batch "$1" "$2"; }

# run DB [OPTIONS] < JSONL: inject | identity | tap, JSON lines out; the
# identity log goes to $T/id.err.
run() {
    local db=$1; shift
    "$BIN/omni-inject" 2>/dev/null | "$I" --db "$db" "$@" 2>>"$T/id.err" | "$BIN/omni-tap"
}

# id N: a fixed envelope id (a ULID), so that replays can be made.
id() { printf '01JD3%021d' "$1"; }

# counts DB: rows of every table.
counts() {
    q "$1" "SELECT (SELECT count(*) FROM customers) || ' ' || (SELECT count(*) FROM handles) || ' '
            || (SELECT count(*) FROM links) || ' ' || (SELECT count(*) FROM conversations) || ' '
            || (SELECT count(*) FROM processed)"
}

# mentions DB TEXT: rows of any column of any table that contain TEXT.
mentions() {
    local db=$1 text=$2 total=0 t c n
    for t in $(q "$db" "SELECT name FROM sqlite_master WHERE type = 'table'"); do
        for c in $(q "$db" "SELECT name FROM pragma_table_info('$t')"); do
            n=$(q "$db" "SELECT count(*) FROM \"$t\" WHERE instr(CAST(\"$c\" AS TEXT), '$text') > 0")
            total=$((total + n))
        done
    done
    echo "$total"
}

# One person on three channels; in the linked journey a web login links
# the phone and the e-mail before the e-mail arrives.
cat >"$T/journey.jsonl" <<LINES
{"id":"$(id 1)","channel":"whatsapp","dir":"in","from":"whatsapp:+5511987650001","to":"whatsapp:+551140041234","ts":1794800000000,"text":"oi, meu pedido não chegou","meta":{"wa_id":"5511987650001","profile_name":"Carla"}}
{"id":"$(id 2)","channel":"sms","dir":"in","from":"tel:(11) 98765-0001","to":"tel:+551140041234","ts":1794800600000,"text":"mandei no whatsapp tb"}
{"id":"$(id 3)","channel":"webchat","dir":"event","from":"webchat:s-c1","ts":1794801000000,"meta":{"event":"link","handles":["tel:+55 11 98765-0001","mailto:carla@example.com"],"by":"website-login","verified":true}}
{"id":"$(id 4)","channel":"email","dir":"in","from":"mailto:Carla@Example.com","to":"mailto:atendimento@jabuti.example","ts":1794801200000,"subject":"Pedido 48999","text":"segue o comprovante"}
{"id":"$(id 5)","channel":"whatsapp","dir":"out","from":"whatsapp:+551140041234","to":"whatsapp:+5511987650001","ts":1794801500000,"text":"Oi Carla, recebemos!"}
LINES

# 1. Linked by the channel (WhatsApp is the phone) and a link event: one
#    customer, one conversation, on every message and the event.
run "$T/a.db" <"$T/journey.jsonl" >"$T/a.out"
expect "every envelope passes" "$(wc -l <"$T/a.out")" "5"
expect "WhatsApp, SMS, the link event, e-mail and the reply share one customer" \
    "$(jq -r .customer "$T/a.out" | sort -u | wc -l) $(jq -r .customer "$T/a.out" | grep -c '^cus_')" "1 5"
expect "and one conversation" "$(jq -r .conversation "$T/a.out" | sort -u | wc -l) $(jq -r .conversation "$T/a.out" | grep -c '^cnv_')" "1 5"
expect "the customer's handles are normalised in the envelopes" \
    "$(jq -r 'select(.dir == "in") | .from' "$T/a.out" | tr '\n' ' ')" \
    "whatsapp:+5511987650001 tel:+5511987650001 mailto:carla@example.com "
expect "the database: 1 customer, 3 handles, 2 links, 1 conversation, 5 ids" "$(counts "$T/a.db")" "1 3 2 1 5"
expect "WAL mode" "$(q "$T/a.db" 'PRAGMA journal_mode')" "wal"
expect "links keep their provenance" \
    "$(q "$T/a.db" "SELECT kind || ' ' || made_by || ' ' || verified || ' ' || envelope FROM links ORDER BY id")" \
    "channel channel:whatsapp 1 $(id 1)
event website-login 1 $(id 3)"
"$I" show mailto:carla@example.com --db "$T/a.db" >"$T/show.txt"
check "show prints the handles" grep -q '^  whatsapp:+5511987650001 .* verified' "$T/show.txt"
check "show prints the links with provenance" grep -q '#2 mailto:carla@example.com -- tel:+5511987650001  active  event by website-login verified' "$T/show.txt"
"$I" show "$(jq -r .customer "$T/a.out" | head -1)" --db "$T/a.db" --json >"$T/show.json"
check "show --json: 3 handles, 2 links with provenance, 1 conversation" \
    jq -e '(.handles | length) == 3 and (.links | map(.by) | sort) == ["channel:whatsapp", "website-login"]
           and (.conversations | length) == 1 and .conversations[0].closed == null' "$T/show.json"

# 2. Nothing links them: a WhatsApp business-scoped id without a phone, an
#    SMS, an e-mail are three customers.
cat >"$T/apart.jsonl" <<'LINES'
{"channel":"whatsapp","dir":"in","from":"whatsapp:BR.1a2b3c4d5e","to":"whatsapp:+551140041234","ts":1794800000000,"text":"oi"}
{"channel":"sms","dir":"in","from":"tel:+5511987650002","to":"tel:+551140041234","ts":1794800600000,"text":"oi de novo"}
{"channel":"email","dir":"in","from":"mailto:dani@example.com","to":"mailto:atendimento@jabuti.example","ts":1794801200000,"text":"e por e-mail"}
LINES
run "$T/b.db" <"$T/apart.jsonl" >"$T/b.out"
expect "unlinked handles are three customers with three conversations" \
    "$(jq -r .customer "$T/b.out" | sort -u | wc -l) $(jq -r .conversation "$T/b.out" | sort -u | wc -l)" "3 3"
expect "and no links" "$(counts "$T/b.db")" "3 3 0 3 3"
printf '%s\n' '{"channel":"whatsapp","dir":"in","from":"whatsapp:BR.1a2b3c4d5e","ts":1794802000000,"text":"meu número","meta":{"wa_id":"5511987650002"}}' \
    | run "$T/b.db" >"$T/b2.out"
expect "a business-scoped id that comes with its phone joins the phone's customer" \
    "$(q "$T/b.db" "SELECT count(DISTINCT customer) FROM handles WHERE handle IN
        ('whatsapp:BR.1a2b3c4d5e', 'whatsapp:+5511987650002', 'tel:+5511987650002')")" "1"
expect "the envelope says so" "$(jq -r .customer "$T/b2.out")" \
    "$(q "$T/b.db" "SELECT customer FROM handles WHERE handle = 'tel:+5511987650002'")"

# 3. Replays: the same envelopes (same ids) get the same customer and
#    conversation, and change no row; duplicates within one run too.
before=$(counts "$T/a.db")
run "$T/a.db" <"$T/journey.jsonl" >"$T/a2.out"
expect "a replay gets the same customer and conversation" \
    "$(jq -c '[.id, .customer, .conversation]' "$T/a2.out")" "$(jq -c '[.id, .customer, .conversation]' "$T/a.out")"
expect "a replay changes no row" "$(counts "$T/a.db")" "$before"
cat "$T/journey.jsonl" "$T/journey.jsonl" | run "$T/a3.db" --batch 3 >"$T/a3.out"
expect "duplicates within one run get the same answer" \
    "$(jq -r '[.id, .customer, .conversation] | join(" ")' "$T/a3.out" | sort -u | wc -l) $(counts "$T/a3.db")" \
    "5 1 3 2 1 5"

# 4. unlink splits them again, without losing anything: the ids keep
#    their answer, and the next e-mail is someone else's.
cp "$T/a.db" "$T/u.db"
out=$("$I" unlink tel:+5511987650001 mailto:carla@example.com --by agent:test --reason "wrong person" --db "$T/u.db")
expect "unlink exits 0 and says the customer is two" "$?:$(echo "$out" | grep -c 'is now 2 customers')" "0:1"
expect "the phone and the e-mail are two customers again" \
    "$(q "$T/u.db" "SELECT count(DISTINCT customer) FROM handles")" "2"
expect "WhatsApp and SMS stay together (the channel's link)" \
    "$(q "$T/u.db" "SELECT count(DISTINCT customer) FROM handles WHERE handle LIKE '%98765000%'")" "1"
expect "the link is kept as removed, with who and why" \
    "$(q "$T/u.db" "SELECT state || ' ' || removed_by || ' ' || removed_reason FROM links WHERE made_by = 'website-login'")" \
    "removed agent:test wrong person"
expect "no processed id lost" "$(q "$T/u.db" 'SELECT count(*) FROM processed')" "5"
printf '%s\n' '{"channel":"email","dir":"in","from":"mailto:carla@example.com","ts":1794801300000,"text":"de novo"}' \
    | run "$T/u.db" >"$T/u.out"
check "the next e-mail belongs to the e-mail's own customer" \
    test "$(jq -r .customer "$T/u.out")" != "$(jq -r .customer "$T/a.out" | head -1)"
run "$T/u.db" <"$T/journey.jsonl" >"$T/u2.out"
expect "old envelopes replayed keep the answer they had" \
    "$(jq -c '[.customer, .conversation]' "$T/u2.out" | sort -u | wc -l)" "1"
"$I" unlink 999 --by agent:test --db "$T/u.db" 2>"$T/unlink.err"
expect "unlinking an unknown link exits 65" "$?" "65"
"$I" link tel:+5511987650001 mailto:carla@example.com --by agent:test --db "$T/u.db" >"$T/relink.out"
expect "an agent may link them again" "$?:$(q "$T/u.db" "SELECT count(DISTINCT customer) FROM handles")" "0:1"

# 5. Conflict: two people, each logged in on the website (verified
#    e-mails); a link event joining their sessions is refused, logged with
#    both ids and counted; an agent needs --force.
cat >"$T/conflict.jsonl" <<'LINES'
{"channel":"webchat","dir":"event","from":"webchat:s-1","ts":1794800000000,"meta":{"event":"link","handles":["webchat:s-1","mailto:eva@example.com"],"by":"website-login","verified":true}}
{"channel":"webchat","dir":"event","from":"webchat:s-2","ts":1794800000001,"meta":{"event":"link","handles":["webchat:s-2","mailto:ivo@example.com"],"by":"website-login","verified":true}}
{"channel":"webchat","dir":"event","from":"agent:bot","ts":1794800000002,"meta":{"event":"link","handles":["webchat:s-1","webchat:s-2"],"by":"agent:bot","reason":"same browser"}}
{"channel":"email","dir":"in","from":"mailto:ivo@example.com","ts":1794800000003,"text":"oi"}
LINES
: >"$T/id.err"
run "$T/c.db" <"$T/conflict.jsonl" >"$T/c.out"
eva=$(q "$T/c.db" "SELECT customer FROM handles WHERE handle = 'mailto:eva@example.com'")
ivo=$(q "$T/c.db" "SELECT customer FROM handles WHERE handle = 'mailto:ivo@example.com'")
check "the two stay two customers" test -n "$eva" -a -n "$ivo" -a "$eva" != "$ivo"
check "the refusal is logged as a warning with both customer ids" \
    grep -q "warn: link refused: $eva and $ivo each hold a different verified" "$T/id.err"
check "and counted" grep -q 'conflicts=1 ' "$T/id.err"
expect "and kept as a refused link" "$(q "$T/c.db" "SELECT state || ' ' || made_by FROM links WHERE a = 'webchat:s-1' AND b = 'webchat:s-2'")" "refused agent:bot"
expect "the event still passes, with the first handle's customer" \
    "$(jq -r 'select(.meta.by == "agent:bot") | .customer' "$T/c.out")" "$eva"
"$I" link mailto:eva@example.com mailto:ivo@example.com --by agent:ana --db "$T/c.db" >/dev/null 2>"$T/c.err"
expect "an agent's link is refused too (exit 65)" "$?" "65"
check "saying why and how to override" grep -q 'refused: .* --force merges them' "$T/c.err"
"$I" link mailto:eva@example.com mailto:ivo@example.com --by agent:ana --force --db "$T/c.db" >"$T/c.force" 2>&1
expect "--force merges them" "$?:$(q "$T/c.db" "SELECT count(DISTINCT customer) FROM handles")" "0:1"

# 6. Conversations: idle longer than --idle starts a new one; so does the
#    message after a close event.
cat >"$T/idle.jsonl" <<'LINES'
{"channel":"telegram","dir":"in","from":"telegram:777","ts":1794800000000,"text":"um"}
{"channel":"telegram","dir":"in","from":"telegram:777","ts":1794801800000,"text":"dois, meia hora depois"}
{"channel":"telegram","dir":"in","from":"telegram:777","ts":1794809000000,"text":"três, duas horas depois"}
{"channel":"telegram","dir":"out","from":"telegram:jabuti_bot","to":"telegram:777","ts":1794809100000,"text":"resposta"}
{"channel":"telegram","dir":"event","from":"agent:marina","ts":1794809200000,"meta":{"event":"close","conversation_of":"telegram:777","by":"agent:marina","reason":"resolvido"}}
{"channel":"telegram","dir":"in","from":"telegram:777","ts":1794809300000,"text":"quatro, depois do fechamento"}
LINES
run "$T/i.db" --idle 1h <"$T/idle.jsonl" >"$T/i.out"
mapfile -t conv < <(jq -r .conversation "$T/i.out")
expect "within --idle the conversation continues" "${conv[1]}" "${conv[0]}"
check "idle longer than --idle starts a new one" test "${conv[2]}" != "${conv[1]}"
expect "a reply continues it, and the close event names it" "${conv[3]} ${conv[4]}" "${conv[2]} ${conv[2]}"
check "after a close the next message starts another" test "${conv[5]}" != "${conv[4]}"
expect "one customer throughout" "$(jq -r .customer "$T/i.out" | sort -u | wc -l)" "1"
expect "the database says why each ended" \
    "$(q "$T/i.db" "SELECT coalesce(closed_by || ':' || close_reason, 'open') FROM conversations ORDER BY opened")" \
    "identity:idle
agent:marina:resolvido
open"

# 7. Bad handles are rejected, named, counted and written to --dead; the
#    rest passes.
cat >"$T/bad.jsonl" <<'LINES'
{"channel":"sms","dir":"in","from":"tel:+5511987650009","text":"ok"}
{"channel":"sms","dir":"in","from":"tel:12","text":"curto demais"}
{"channel":"email","dir":"in","from":"mailto:sem-arroba","text":"sem arroba"}
{"channel":"webchat","dir":"event","from":"webchat:s-9","meta":{"event":"link","handles":["webchat:s-9","tel:abc"],"by":"site"}}
LINES
: >"$T/id.err"
run "$T/bad.db" --dead "$T/dead.mp" <"$T/bad.jsonl" >"$T/bad.out"
expect "only the good envelope passes" "$(jq -r .from "$T/bad.out")" "tel:+5511987650009"
check "the phone is named" grep -q "field=from reason=\"'tel:12': a Brazilian number has 10 or 11 digits" "$T/id.err"
check "the e-mail is named" grep -q "field=from reason=\"'mailto:sem-arroba': no '@'" "$T/id.err"
check "the link's handle is named" grep -q 'field=meta.handles\[1\]' "$T/id.err"
check "they are counted" grep -q 'rejected=3 ' "$T/id.err"
check "and written to --dead" grep -aq 'tel:12' "$T/dead.mp"
expect "nothing of them is stored" "$(counts "$T/bad.db")" "1 1 0 1 1"

# 8. forget: nothing of the person stays in the database, not even in the
#    file's free pages or the log; the others stay.
cp "$T/a.db" "$T/f.db"
printf '%s\n' '{"channel":"email","dir":"in","from":"mailto:outra@example.com","ts":1794801200000,"text":"outra pessoa"}' \
    | run "$T/f.db" >/dev/null
carla=$(jq -r .customer "$T/a.out" | head -1)
cnv=$(jq -r .conversation "$T/a.out" | head -1)
out=$("$I" forget mailto:carla@example.com --db "$T/f.db")
expect "forget exits 0 and says what it erased" \
    "$?:$out" "0:forgot $carla: 1 customer ids, 3 handles, 2 links, 1 conversations, 5 envelope ids"
total=0
for s in 98765000 carla@example.com "$carla" "$cnv" "$(id 1)" "$(id 4)" website-login; do
    total=$((total + $(mentions "$T/f.db" "$s")))
done
expect "no table mentions her handles, ids, links or envelopes" "$total" "0"
expect "the other customer stays" "$(counts "$T/f.db")" "1 1 0 1 1"
grep_file() { grep -a -c "$2" "$1" 2>/dev/null || true; }
expect "the write-ahead log was emptied" "$(stat -c %s "$T/f.db-wal" 2>/dev/null || echo 0)" "0"
expect "grep finds nothing of her in the file" \
    "$(grep_file "$T/f.db" carla@example.com) $(grep_file "$T/f.db" 5511987650001) $(grep_file "$T/f.db" "$carla") $(grep_file "$T/f.db" "$cnv") $(grep_file "$T/f.db" "$(id 1)")" \
    "0 0 0 0 0"
check "but finds the other customer" grep -aq 'outra@example.com' "$T/f.db"
"$I" show mailto:carla@example.com --db "$T/f.db" >/dev/null 2>&1
expect "show no longer knows her (exit 65)" "$?" "65"

# 9. The CLI edits the graph while the service runs (WAL): the service
#    notices (data_version) and passes on nothing it has not committed.
spawn "$I" --db "$T/s.db" --in "@ipc://$T/in" --out "@ipc://$T/out" --batch-ms 10ms --busy 100ms \
    2>"$T/s.err"
SPID=$SPAWNED
wait_until 10 test -S "$T/in"
spawn "$BIN/omni-tap" --in ">ipc://$T/out" >"$T/s.out" 2>/dev/null
lines() { [ "$(wc -l <"$T/s.out")" -ge "$1" ]; }
printf '%s\n' \
    '{"channel":"whatsapp","dir":"in","from":"whatsapp:+5511987650003","ts":1794800000000,"text":"oi","meta":{"wa_id":"5511987650003"}}' \
    '{"channel":"email","dir":"in","from":"mailto:gil@example.com","ts":1794800001000,"text":"oi"}' \
    | "$BIN/omni-inject" --out ">ipc://$T/in" 2>/dev/null
wait_until 10 lines 2
mapfile -t ids < <(jq -r .id "$T/s.out")
expect "what the service passed on is committed" \
    "$(q "$T/s.db" "SELECT count(*) FROM processed WHERE id IN ('${ids[0]}', '${ids[1]}')")" "2"
expect "two customers" "$(jq -r .customer "$T/s.out" | sort -u | wc -l)" "2"
"$I" link whatsapp:+5511987650003 mailto:gil@example.com --by agent:marina --reason "same person" --db "$T/s.db" >"$T/s.link"
expect "the CLI links them while the service runs" "$?:$(grep -c 'merged' "$T/s.link")" "0:1"
printf '%s\n' '{"channel":"email","dir":"in","from":"mailto:gil@example.com","ts":1794800002000,"text":"de novo"}' \
    | "$BIN/omni-inject" --out ">ipc://$T/in" 2>/dev/null
wait_until 10 lines 3
expect "the service sees the merge at once" \
    "$(sed -n 3p "$T/s.out" | jq -r .customer)" "$(head -1 "$T/s.out" | jq -r .customer)"
# Another writer holds the database past --busy: the service waits
# (SQLITE_BUSY: retry), passes nothing on meanwhile, loses nothing.
( printf 'BEGIN IMMEDIATE;\n'; sleep 2; printf 'COMMIT;\n' ) | sqlite3 "$T/s.db" &
LOCK=$!
sleep 0.3
for n in 1 2 3; do
    printf '{"channel":"sms","dir":"in","from":"tel:+551198765010%s","ts":1794800003000,"text":"%s"}\n' "$n" "$n"
done | "$BIN/omni-inject" --out ">ipc://$T/in" 2>/dev/null
sleep 1
expect "nothing passes while the database is locked" "$(wc -l <"$T/s.out")" "3"
wait "$LOCK"
wait_until 15 lines 6
expect "everything passes, in order, once it is free" "$(tail -n 3 "$T/s.out" | jq -r .text | tr '\n' ' ')" "1 2 3 "
check "the wait is logged" grep -q 'cannot begin a batch (database busy): trying again' "$T/s.err"
kill -TERM "$SPID"
wait "$SPID"
expect "SIGTERM exits 0" "$?" "0"
check "the service counted what it did" grep -q 'done: assigned=6 replays=0 rejected=0 customers=5 ' "$T/s.err"

# 10. Pipe composition on the sample traffic: every message gets a customer
#     and a conversation; with the agent's link of Ana's phone and e-mail,
#     her WhatsApp, SMS, web chat and e-mail share one customer.
"$I" link tel:+5511987654321 mailto:ana.souza@example.com --by agent:marina \
    --reason "Ana mandou a foto da chaleira pelo WhatsApp (e-mail de 18/11)" --db "$T/t.db" >/dev/null
"$BIN/omni-inject" "$TRAFFIC" 2>/dev/null | "$I" --db "$T/t.db" 2>"$T/t.err" | "$BIN/omni-tap" >"$T/t.out"
expect "all 340 envelopes pass" "$(wc -l <"$T/t.out")" "340"
expect "every message in and out has a customer and a conversation" \
    "$(jq -r 'select(.dir != "event") | select((.customer | startswith("cus_") | not) or (.conversation | startswith("cnv_") | not)) | .id' "$T/t.out" | wc -l)" "0"
expect "Ana's WhatsApp, SMS, web chat and e-mail messages share one customer" \
    "$(jq -r 'select(.dir == "in" and (.from == "whatsapp:+5511987654321" or .from == "tel:+5511987654321"
              or .from == "webchat:s-7f3a9c" or .from == "mailto:ana.souza@example.com")) | .channel + " " + .customer' \
        "$T/t.out" | sort -u | awk '{print $2}' | sort | uniq -c | awk '{print $1}')" "4"
ana=$(jq -r 'select(.from == "whatsapp:+5511987654321") | .customer' "$T/t.out" | head -1)
expect "her replies and the close event of her conversation are hers too" \
    "$(jq -r 'select(.to == "whatsapp:+5511987654321" or .to == "mailto:ana.souza@example.com" or .meta.conversation_of == "whatsapp:+5511987654321") | .customer' "$T/t.out" | sort -u)" "$ana"
check "Adriana Souza (another phone) is someone else" \
    test "$(jq -r 'select(.from == "whatsapp:+5511977780045") | .customer' "$T/t.out" | sort -u)" != "$ana"
expect "the order API's note about Ana is hers (meta.customer)" \
    "$(jq -r 'select(.from == "api:orders" and .meta.customer == "mailto:ana.souza@example.com") | .customer' "$T/t.out")" "$ana"
check "the trace says identity ran" jq -e -s 'all(.trace[-1][0] == "identity")' "$T/t.out"

# 11. Usage.
"$I" --in /dev/null 2>/dev/null </dev/null
expect "--db is required (exit 64)" "$?" "64"
"$I" --db "$T/x.db" --check >/dev/null
expect "--check passes a good configuration" "$?" "0"
"$I" link tel:+5511987650001 --by x --db "$T/x.db" 2>/dev/null
expect "link needs two handles (exit 64)" "$?" "64"
"$I" link tel:+5511987650001 mailto:x@example.com --db "$T/x.db" 2>/dev/null
expect "link needs --by (exit 64)" "$?" "64"
"$I" link tel:1 mailto:x@example.com --by x --db "$T/x.db" 2>"$T/u.err"
expect "an unreadable handle is bad data (exit 65)" "$?" "65"
"$I" show mailto:x@example.com --db "$T/nope.db" 2>/dev/null
expect "show on a missing database exits 69" "$?" "69"
check "omni-identity link --help" "$I" link --help
