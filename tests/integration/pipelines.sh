# pipelines — the scripts in pipelines/ run and say what they should:
# local (make run), replay (dry run through a knowledge base), scale (N bot
# workers behind one endpoint). Correctness only; timings are not asserted.
. "$(dirname "$0")/../lib.sh"
export BIN

RUN_DIR=$T/local "$ROOT/pipelines/local" --once >"$T/local.out" 2>"$T/local.err"
expect "pipelines/local --once exits 0" "$?" "0"
check "local: nothing on stderr (it settled)" test ! -s "$T/local.err"
check "local: every inbound message archived (320 sample + 2 webhooks)" \
    grep -q '^archived: 322 messages in, ' "$T/local.out"
bot() { sed -n 's/^bot: \([0-9]*\) answered, \([0-9]*\) handed off; \([0-9]*\) .*/\1 \2 \3/p' "$T/local.out"; }
read -r answered handed queued <<<"$(bot)"
check "local: the bot answered some and handed some off ($(bot))" \
    test "${answered:-0}" -ge 50 -a "${handed:-0}" -ge 10 -a "${queued:-0}" -ge 10
check "local: handoffs go back to omni-route, which assigns agents" \
    grep -qE '^assigned to agents later \(assign events\): [a-z]+ [1-9]' "$T/local.out"
check "local: the answers are printed with their articles" grep -qE '^ +A: .*\[[a-z-]+\]$' "$T/local.out"
check "local: the handoffs are printed with their queues" grep -qE '^[a-z]+ +queue (geral|trocas|financeiro|vip) ' "$T/local.out"
out=$(sqlite3 "$T/local/archive.db" "select count(*) from messages where dir = 'out'")
expect "local: every reply delivered, nothing undeliverable" \
    "$(grep -E '^(delivered|not deliverable):' "$T/local.out")" "delivered: $out sent
not deliverable: none"
check "local: each provider received replies" \
    grep -qE '^the providers received: graph [1-9][0-9]* +twilio [1-9][0-9]* +telegram [1-9][0-9]* +smtp [1-9]' "$T/local.out"
check "local: signed webhooks 200, a forged one 401" \
    grep -q '^webhooks: whatsapp 200, telegram 200, forged signature 401$' "$T/local.out"
check "local: /metrics counted the run" grep -q '^omnibus_messages_total{' "$T/local/metrics.txt"
check "local: one customer's timeline spans channels" \
    sh -c "sed -n '/one customer across channels/,\$p' '$T/local.out' | grep -q ' sms ' && \
           sed -n '/one customer across channels/,\$p' '$T/local.out' | grep -q ' email '"
"$ROOT/pipelines/local" --bogus >/dev/null 2>&1
expect "local: an unknown argument exits 64" "$?" "64"

stored=$(sqlite3 "$T/local/archive.db" 'select count(*) from messages')
"$ROOT/pipelines/replay" "$T/local/archive.db" "$ROOT/examples/kb" >"$T/replay.out" 2>"$T/replay.err"
expect "pipelines/replay exits 0" "$?" "0"
check "replay: every inbound message replayed" grep -q '^inbound messages replayed: 322$' "$T/replay.out"
check "replay: says what it would answer" grep -q '^the bot would answer: ' "$T/replay.out"
expect "replay: nothing was written to the archive" \
    "$(sqlite3 "$T/local/archive.db" 'select count(*) from messages')" "$stored"
"$ROOT/pipelines/replay" >/dev/null 2>&1
expect "replay: usage without arguments exits 64" "$?" "64"

QUESTIONS=40 DELAY_MS=10 "$ROOT/pipelines/scale" 1 3 >"$T/scale.out" 2>"$T/scale.err"
expect "pipelines/scale exits 0" "$?" "0"
expect "scale: a row per worker count" "$(grep -cE '^[13] +[0-9.]+ +[0-9]+$' "$T/scale.out")" "2"
check "scale: every question arrived" sh -c "! grep -q 'only' '$T/scale.err'"

# Without --once, pipelines/local serves until Ctrl-C: SIGINT to its process
# group (what a terminal sends) stops it and everything it started.
python3 - "$ROOT/pipelines/local" "$T/ctrlc" >"$T/ctrlc.out" 2>&1 <<'PY'
import os, signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_DFL)    # as in a terminal, not ignored
out = open(sys.argv[2] + ".log", "w")
p = subprocess.Popen([sys.argv[1]], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                     env=dict(os.environ, RUN_DIR=sys.argv[2]))
end = time.time() + 60
while time.time() < end and "Ctrl-C stops" not in open(sys.argv[2] + ".log").read():
    time.sleep(0.1)
os.killpg(p.pid, signal.SIGINT)
try:
    print("exit", p.wait(timeout=20))
except subprocess.TimeoutExpired:
    print("still running 20 s after SIGINT")
    os.killpg(p.pid, signal.SIGKILL)
time.sleep(0.3)
left = subprocess.run(["pgrep", "-g", str(p.pid)], capture_output=True, text=True).stdout.split()
print("left", len(left))
PY
expect "local: Ctrl-C stops it, and every process it started" "$(cat "$T/ctrlc.out")" "exit 130
left 0"
