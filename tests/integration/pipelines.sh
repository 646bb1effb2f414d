# pipelines — the scripts in pipelines/ run and say what they should:
# local (make run), replay (dry run through a knowledge base), scale (N bot
# workers behind one endpoint). Correctness only; timings are not asserted.
. "$(dirname "$0")/../lib.sh"
export BIN

RUN_DIR=$T/local "$ROOT/pipelines/local" >"$T/local.out" 2>"$T/local.err"
expect "pipelines/local exits 0" "$?" "0"
check "local: every message went through" grep -q '^messages: 320 in, 11 out, 9 events$' "$T/local.out"
check "local: the archive stored them" grep -q '^archive: 340 messages stored$' "$T/local.out"
check "local: one customer's timeline spans channels" \
    sh -c "sed -n '/one customer across channels/,\$p' '$T/local.out' | grep -q ' sms ' && \
           sed -n '/one customer across channels/,\$p' '$T/local.out' | grep -q ' email '"

"$ROOT/pipelines/replay" "$T/local/archive.db" "$ROOT/examples/kb" >"$T/replay.out" 2>"$T/replay.err"
expect "pipelines/replay exits 0" "$?" "0"
check "replay: every inbound message replayed" grep -q '^inbound messages replayed: 320$' "$T/replay.out"
check "replay: says what it would answer" grep -q '^the bot would answer: ' "$T/replay.out"
expect "replay: nothing was written to the archive" \
    "$(sqlite3 "$T/local/archive.db" 'select count(*) from messages')" "340"
"$ROOT/pipelines/replay" >/dev/null 2>&1
expect "replay: usage without arguments exits 64" "$?" "64"

QUESTIONS=40 DELAY_MS=10 "$ROOT/pipelines/scale" 1 3 >"$T/scale.out" 2>"$T/scale.err"
expect "pipelines/scale exits 0" "$?" "0"
expect "scale: a row per worker count" "$(grep -cE '^[13] +[0-9.]+ +[0-9]+$' "$T/scale.out")" "2"
check "scale: every question arrived" sh -c "! grep -q 'only' '$T/scale.err'"
