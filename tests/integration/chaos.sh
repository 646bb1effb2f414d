# chaos — the short form of tests/chaos/run (`make chaos` runs the long
# one): the whole pipeline (webhook, identity, route, bot, archive, send) as
# separate processes on ipc, signed WhatsApp webhooks retried as Meta
# retries, and kill -9 of random stages under load, each restarted as
# systemd would. Nothing acknowledged to the channel is lost, nothing is
# archived twice, every reply reaches the fake provider, and a reply is
# delivered twice at most once per omni-send kill (DESIGN.md, "Delivery").
# CHAOS_SEED=S repeats a run; the seed is printed either way.
. "$(dirname "$0")/../lib.sh"
seed=${CHAOS_SEED:-$(( $(date +%s%N) % 1000000 ))}
BIN=$BIN "$ROOT/tests/chaos/run" --messages "${CHAOS_MESSAGES:-1500}" --kills "${CHAOS_KILLS:-10}" \
    --rate 60 --seed "$seed" >"$T/chaos.out" 2>&1
rc=$?
cat "$T/chaos.out"
if [ "$rc" -ne 0 ] && ! grep -q '^not ok ' "$T/chaos.out"; then
    not_ok "tests/chaos/run --seed $seed exited with status $rc"
fi
