# tests/lib.sh — sourced by integration tests. Real processes, real sockets:
# every test gets a fresh directory $T for ipc sockets and databases, and
# every process started with `spawn` is killed when the test ends.
# Results are TAP lines ("ok - name" / "not ok - name") counted by tests/run.
# KEEP=1 leaves $T in place (its path is printed) to look at the logs.
set -u
: "${BIN:?BIN must name the directory of the omni-* binaries}"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T=$(mktemp -d /tmp/omni-it.XXXXXX)
PIDS=()

cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null
    done
    sleep 0.1
    for p in "${PIDS[@]}"; do
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    if [ -n "${KEEP:-}" ]; then
        echo "# kept $T"
    else
        rm -rf "$T"
    fi
}
trap cleanup EXIT

ok() { echo "ok - $*"; }
not_ok() { echo "not ok - $*"; }

# check NAME CMD...: passes when CMD exits 0; shows its output when not.
check() {
    local name=$1; shift
    if "$@" >"$T/.check" 2>&1; then
        ok "$name"
    else
        not_ok "$name"
        sed 's/^/#   /' "$T/.check" | head -30
    fi
}

# expect NAME GOT WANT: passes when the two strings are equal.
expect() {
    if [ "$2" == "$3" ]; then
        ok "$1"
    else
        not_ok "$1"
        echo "#   got:  $(printf '%s' "$2" | head -c 400)"
        echo "#   want: $(printf '%s' "$3" | head -c 400)"
    fi
}

# spawn CMD...: starts CMD in the background, to be killed at the end.
# The pid is in $SPAWNED.
spawn() {
    "$@" &
    SPAWNED=$!
    PIDS+=("$SPAWNED")
}

# wait_until SECONDS CMD...: polls CMD every 50 ms until it succeeds.
wait_until() {
    local limit=$1; shift
    local end=$((SECONDS + limit))
    while ! "$@" 2>/dev/null; do
        [ $SECONDS -ge $end ] && return 1
        sleep 0.05
    done
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
