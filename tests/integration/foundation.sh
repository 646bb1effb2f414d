# foundation — omni-inject, omni-relay and omni-tap as real processes, over
# pipes and ipc:// sockets: nothing lost, nothing changed, bad input named.
. "$(dirname "$0")/../lib.sh"
TRAFFIC=$ROOT/examples/traffic.jsonl

# 1. inject | tap keeps every message and every field of the sample traffic.
"$BIN/omni-inject" "$TRAFFIC" 2>"$T/inject.err" | "$BIN/omni-tap" >"$T/out.jsonl"
expect "inject|tap keeps every message" "$(wc -l <"$T/out.jsonl")" "$(grep -c . "$TRAFFIC")"
jq -s . "$TRAFFIC" >"$T/in.json"
jq -s . "$T/out.jsonl" >"$T/outs.json"
check "inject|tap keeps every field with its value" \
    jq -e -n --slurpfile a "$T/in.json" --slurpfile b "$T/outs.json" \
    '$a[0] as $in | $b[0] as $out | [range(0; $in|length) as $i
        | $in[$i] | to_entries[] | select(.value != null) | .value == $out[$i][.key]] | all'
check "inject fills v, id (ULID), ts and a trace stamp" \
    jq -e -s 'all(.v == 1 and (.id | test("^[0-9A-HJKMNP-TV-Z]{26}$")) and (.ts > 0)
               and .trace[0][0] == "inject")' "$T/out.jsonl"
check "ids are unique and increasing" \
    jq -e -s '[.[].id] as $ids | ($ids | unique | length) == ($ids | length) and $ids == ($ids | sort)' \
    "$T/out.jsonl"

# 2. Unknown keys, nested values and Unicode pass through untouched.
printf '%s\n' '{"channel":"api","dir":"in","from":"api:crm","text":"Não, obrigado — 👍","x_crm":{"score":2.5,"tags":["vip",true,null,-7],"deep":{"a":{"b":[1]}}}}' \
    | "$BIN/omni-inject" 2>/dev/null | "$BIN/omni-relay" | "$BIN/omni-tap" >"$T/unk.jsonl"
check "unknown keys pass through inject, relay and tap" \
    jq -e '.x_crm == {"score":2.5,"tags":["vip",true,null,-7],"deep":{"a":{"b":[1]}}}
           and .text == "Não, obrigado — 👍" and (.trace | length) == 2' "$T/unk.jsonl"

# 3. Bad JSON lines are reported with their line numbers; good lines pass.
cat >"$T/mixed.jsonl" <<'LINES'
{"channel":"sms","dir":"in","from":"tel:+5511999990001","text":"um"}
{"channel":"sms","dir":"in","from":"tel:+5511999990002","text":"dois"
{"channel":"fax","dir":"in","from":"tel:+5511999990003","text":"três"}
{"channel":"sms","dir":"in","from":"tel:+5511999990004","text":"quatro"}
{"channel":"sms","dir":"in","text":"cinco"}
{"channel":"sms","dir":"in","from":"tel:+5511999990006","text":7}

{"channel":"sms","dir":"in","from":"tel:+5511999990008","text":"oito"}
LINES
printf '{"channel":"sms","dir":"in","from":"tel:+5511999990009","text":"\xff\xfe"}\n' >>"$T/mixed.jsonl"
"$BIN/omni-inject" "$T/mixed.jsonl" 2>"$T/mixed.err" | "$BIN/omni-tap" >"$T/mixed.out"
expect "good lines pass around bad ones" "$(jq -r .text "$T/mixed.out" | tr '\n' ' ')" "um quatro oito "
check "line 2: broken JSON is named" grep -q 'line=2 .*bad JSON' "$T/mixed.err"
check "line 3: unknown channel is named" grep -q "line=3 .*field=channel reason=\"unknown channel 'fax'\"" "$T/mixed.err"
check "line 5: missing from is named" grep -q 'line=5 .*field=from reason="missing' "$T/mixed.err"
check "line 6: wrong type is named" grep -q 'line=6 .*field=text reason="expected string, found number"' "$T/mixed.err"
check "line 9: invalid UTF-8 is named" grep -q 'line=9 .*invalid UTF-8' "$T/mixed.err"
check "the summary counts them" grep -q 'read 9 lines: sent 3, rejected 5' "$T/mixed.err"
"$BIN/omni-inject" --strict "$T/mixed.jsonl" 2>/dev/null >"$T/strict.out"
expect "--strict stops at the first bad line with exit 65" "$?" "65"
expect "--strict sent only what came before" "$("$BIN/omni-tap" --count <"$T/strict.out")" "1"

# 4. Malformed msgpack is counted, logged and written to --dead; the rest flows.
"$BIN/omni-inject" "$TRAFFIC" 2>/dev/null | head -c 100000 >"$T/prefix.mp"
{ printf '\xc1\xc1garbage'; "$BIN/omni-inject" "$TRAFFIC" 2>/dev/null; printf '\x93\x01\x02\x03'; } \
    | "$BIN/omni-relay" --dead "$T/dead.mp" 2>"$T/relay.err" | "$BIN/omni-tap" --count >"$T/relay.count"
expect "relay passes every good envelope around bad bytes" "$(cat "$T/relay.count")" "340"
check "relay names what was wrong" grep -q 'rejected input .*reason="not msgpack"' "$T/relay.err"
check "relay names a non-map" grep -q 'field=envelope reason="not a map (found array)"' "$T/relay.err"
check "dead letters are written with their reason" grep -aq 'not msgpack' "$T/dead.mp"
"$BIN/omni-relay" <"$T/prefix.mp" 2>"$T/trunc.err" >/dev/null
check "a stream cut mid-envelope is reported, not silent" grep -q 'truncated msgpack at end of input' "$T/trunc.err"

# 5. Options: argv, OMNI_* environment, --help, --check, exit codes.
"$BIN/omni-relay" --bogus 2>"$T/opt.err"
expect "unknown option exits 64" "$?" "64"
check "unknown option is named" grep -q 'unknown option --bogus' "$T/opt.err"
"$BIN/omni-relay" --in 'nonsense' --check 2>/dev/null
expect "--check refuses a bad endpoint with exit 78" "$?" "78"
check "--check passes a good configuration" "$BIN/omni-relay" --in @ipc://"$T"/x --out '>tcp://127.0.0.1:5999' --check
OMNI_HWM=abc "$BIN/omni-relay" --check 2>"$T/env.err"
expect "a bad OMNI_* value exits 78" "$?" "78"
check "a bad OMNI_* value is named" grep -q 'OMNI_HWM' "$T/env.err"
check "--help lists the options" sh -c "'$BIN/omni-tap' --help | grep -q -- '--idle-exit'"
echo '{"channel":"sms","dir":"in","from":"tel:+5511999990001","text":"x"}' \
    | OMNI_LOG_LEVEL=debug "$BIN/omni-inject" 2>"$T/dbg.err" >/dev/null
check "OMNI_LOG_LEVEL reaches the tool" grep -q 'omni-inject: debug: ' "$T/dbg.err"

"$BIN/omni-inject" "$TRAFFIC" 2>/dev/null | "$BIN/omni-relay" --out none --log-level debug >"$T/none.out" 2>"$T/none.err"
expect "--out none ends the line: nothing is written" "$(wc -c <"$T/none.out")" "0"
check "--out none still counts what passed" grep -q 'done in=340 out=340' "$T/none.err"

# 6. SIGTERM drains and exits 0; --tap publishes a copy for observers.
spawn "$BIN/omni-relay" --in "@ipc://$T/in" --out - --tap "ipc://$T/tap" >"$T/relay.out"
RELAY=$SPAWNED
spawn "$BIN/omni-tap" --sub --in ">ipc://$T/tap" --idle-exit 3s --tick 100ms >"$T/sub.out"
TAPPER=$SPAWNED
# PUB/SUB drops what is sent before the subscription is up: prime it.
probe() {
    echo '{"channel":"api","dir":"in","from":"api:probe","text":"probe"}' \
        | "$BIN/omni-inject" --out "ipc://$T/in" 2>/dev/null
    [ -s "$T/sub.out" ]
}
wait_until 20 probe
"$BIN/omni-inject" "$TRAFFIC" --out "ipc://$T/in" 2>/dev/null
wait "$TAPPER"
expect "a --tap subscriber saw every envelope" "$(grep -vc '"api:probe"' "$T/sub.out")" "340"
kill -TERM "$RELAY"
wait "$RELAY"
expect "SIGTERM drains and exits 0" "$?" "0"
expect "the main line got every envelope too" "$("$BIN/omni-tap" <"$T/relay.out" | grep -vc '"api:probe"')" "340"

# 7. Backpressure, not loss: a stage frozen mid-stream (SIGSTOP) makes the
#    ones before it wait; when it wakes, everything arrives, in order.
awk 'BEGIN { for (i = 1; i <= 100000; i++)
    printf "{\"channel\":\"api\",\"dir\":\"in\",\"from\":\"api:load\",\"text\":\"m\",\"src_id\":\"%d\"}\n", i }' \
    >"$T/stall.jsonl"
spawn "$BIN/omni-tap" --in "ipc://$T/s3" --idle-exit 4s >"$T/stall.out"
STAP=$SPAWNED
spawn "$BIN/omni-relay" --in "ipc://$T/s2" --out "ipc://$T/s3"
FROZEN=$SPAWNED
spawn "$BIN/omni-relay" --in "ipc://$T/s1" --out "ipc://$T/s2"
"$BIN/omni-inject" "$T/stall.jsonl" --out "ipc://$T/s1" 2>/dev/null &
INJ=$!
sleep 0.3
kill -STOP "$FROZEN"
sleep 1.5
kill -CONT "$FROZEN"
wait "$INJ"
wait "$STAP"
expect "a frozen stage loses nothing" "$(wc -l <"$T/stall.out")" "100000"
check "a frozen stage reorders nothing" sh -c \
    "grep -o '\"src_id\":\"[0-9]*\"' '$T/stall.out' | tr -dc '0-9\n' | awk '\$1 != NR { bad++ } END { exit bad > 0 }'"

# 8. 1,000,000 envelopes across three processes over ipc:// arrive whole and in order.
N=${FOUNDATION_N:-1000000}
awk -v n="$N" 'BEGIN { for (i = 1; i <= n; i++)
    printf "{\"channel\":\"api\",\"dir\":\"in\",\"from\":\"api:load\",\"text\":\"m\",\"src_id\":\"%d\"}\n", i }' \
    >"$T/load.jsonl"
spawn "$BIN/omni-tap" --in "ipc://$T/b" --idle-exit 5s >"$T/load.out"
TAP=$SPAWNED
spawn "$BIN/omni-relay" --in "ipc://$T/a" --out "ipc://$T/b"
RELAY=$SPAWNED
"$BIN/omni-inject" "$T/load.jsonl" --out "ipc://$T/a" 2>/dev/null
expect "inject sent all $N" "$?" "0"
wait "$TAP"
kill -TERM "$RELAY"
wait "$RELAY"
expect "relay exits 0 on SIGTERM after the load" "$?" "0"
expect "all $N arrived" "$(wc -l <"$T/load.out")" "$N"
check "they arrived in order, none doubled" sh -c \
    "grep -o '\"src_id\":\"[0-9]*\"' '$T/load.out' | tr -dc '0-9\n' | awk '\$1 != NR { bad++ } END { exit bad > 0 }'"
check "every field arrived" sh -c \
    "grep -c '\"channel\":\"api\",\"dir\":\"in\",\"from\":\"api:load\",\"text\":\"m\"' '$T/load.out' | grep -qx $N"
rm -f "$T/load.jsonl" "$T/load.out"
