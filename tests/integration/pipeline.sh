# pipeline — identity and archive together, as real processes: a customer
# who writes on WhatsApp, SMS, web chat and e-mail is one customer with one
# timeline in the archive, and forgetting her leaves nothing in either db.
. "$(dirname "$0")/../lib.sh"
TRAFFIC=$ROOT/examples/traffic.jsonl
export TZ=UTC

# Ana's phone and e-mail are linked by an agent; WhatsApp gives her phone,
# a signed web-chat login gives her e-mail.
"$BIN/omni-identity" link tel:+5511987654321 mailto:ana.souza@example.com \
    --by agent:marina --reason "cliente confirmou por telefone" --db "$T/id.db" >/dev/null 2>&1
"$BIN/omni-inject" "$TRAFFIC" 2>/dev/null \
    | "$BIN/omni-identity" --db "$T/id.db" 2>"$T/id.err" \
    | "$BIN/omni-archive" --db "$T/a.db" 2>"$T/a.err" \
    | "$BIN/omni-tap" >"$T/out.jsonl"
expect "every message goes through identity and archive" "$(wc -l <"$T/out.jsonl")" "340"
expect "the archive stored every message" "$(sqlite3 "$T/a.db" 'select count(*) from messages')" "340"
check "every message and reply has a customer and a conversation" \
    jq -e -s 'map(select(.dir != "event")) | all(.customer != null and .conversation != null)' "$T/out.jsonl"

ANA=$(jq -r 'select(.from == "whatsapp:+5511987654321") | .customer' "$T/out.jsonl" | head -1)
expect "Ana's channels are one customer" \
    "$(jq -r --arg c "$ANA" 'select(.customer == $c) | .channel' "$T/out.jsonl" | sort -u | tr '\n' ' ')" \
    "api email sms webchat whatsapp "
ADRIANA=$(jq -r 'select(.from == "whatsapp:+5511977780045") | .customer' "$T/out.jsonl" | head -1)
check "someone else is someone else" test -n "$ADRIANA" -a "$ADRIANA" != "$ANA"

"$BIN/omni-archive" history whatsapp:+5511987654321 --db "$T/a.db" --json >"$T/hist.jsonl"
check "history by a handle shows the cross-channel timeline" \
    jq -e -s --arg c "$ANA" 'map(.channel) | unique == ["api","email","sms","webchat","whatsapp"]' "$T/hist.jsonl"
check "history is in time order" jq -e -s 'map(.ts) | . == sort' "$T/hist.jsonl"
check "history holds the replies to her as well" jq -e -s 'any(.dir == "out")' "$T/hist.jsonl"
"$BIN/omni-archive" history "$ANA" --db "$T/a.db" >"$T/hist.txt"
check "history reads as text too" grep -q 'Cadê meu pedido' "$T/hist.txt"
expect "the same timeline by customer id and by handle" \
    "$(grep -c . "$T/hist.txt")" "$(grep -c . "$T/hist.jsonl")"

# Replaying the same envelopes changes nothing.
"$BIN/omni-archive" export --db "$T/a.db" >"$T/export.mp"
"$BIN/omni-identity" --db "$T/id.db" <"$T/export.mp" 2>/dev/null \
    | "$BIN/omni-archive" --db "$T/a.db" 2>/dev/null | "$BIN/omni-tap" >"$T/replay.jsonl"
expect "a replay keeps every customer" \
    "$(jq -r '.id + " " + (.customer // "-") + " " + (.conversation // "-")' "$T/replay.jsonl" | sort | md5sum)" \
    "$(jq -r '.id + " " + (.customer // "-") + " " + (.conversation // "-")' "$T/out.jsonl" | sort | md5sum)"
expect "a replay stores nothing twice" "$(sqlite3 "$T/a.db" 'select count(*) from messages')" "340"

# The right to erasure: forget her in both databases.
check "identity forgets her" "$BIN/omni-identity" forget "$ANA" --db "$T/id.db"
check "archive forgets her" "$BIN/omni-archive" forget "$ANA" --db "$T/a.db"
for db in id.db a.db; do
    sqlite3 "$T/$db" 'pragma wal_checkpoint(truncate)' >/dev/null
    expect "$db: no table holds her handles or id" "$(sqlite3 "$T/$db" .dump \
        | grep -c -e 'ana.souza@example.com' -e '5511987654321' -e "$ANA" -e 's-7f3a9c')" "0"
    expect "$db: no byte of the file holds them" "$(cat "$T/$db"* \
        | grep -a -c -e 'ana.souza@example.com' -e '5511987654321' -e '48213')" "0"
done
expect "nobody else was forgotten" "$(sqlite3 "$T/a.db" "select count(*) from messages where customer = '$ADRIANA'")" \
    "$(jq -r --arg c "$ADRIANA" 'select(.customer == $c) | .id' "$T/out.jsonl" | wc -l)"
check "search no longer finds her words" sh -c "! '$BIN/omni-archive' search 'chaleira 48213' --db '$T/a.db' | grep -q ."
