# systemd — every service unit passes systemd-analyze verify, carries the
# settings DESIGN.md and STYLE.md ask for, and the tools speak sd_notify:
# READY=1 only once their sockets and databases are up, WATCHDOG=1 after.
. "$(dirname "$0")/../lib.sh"
UNITS=$ROOT/systemd

for tool in omni-identity omni-route omni-bot@ omni-archive omni-send omni-ingest-webhook \
            omni-ingest-telegram omni-ingest-mail omni-metrics; do
    check "$tool has a unit" test -f "$UNITS/$tool.service"
done
mkdir -p "$T/units"
for u in "$UNITS"/*.service "$UNITS"/*.target; do
    name=$(basename "$u")
    # verify checks that ExecStart exists: point it at this build.
    sed -e "s|/usr/local/bin/|$BIN/|" -e "s|^EnvironmentFile=/etc/omnibus/|EnvironmentFile=-$T/|" \
        "$u" >"$T/units/$name"
    if out=$(systemd-analyze verify --man=no "$T/units/$name" 2>&1) && [ -z "$out" ]; then
        ok "$name passes systemd-analyze verify"
    else
        not_ok "$name passes systemd-analyze verify"
        printf '%s\n' "$out" | sed 's/^/#   /' | head -10
    fi
    case $name in *.service)
        for want in '^Type=notify$' '^WatchdogSec=' '^Restart=on-failure$' '^RestartPreventExitStatus=64 78$' \
                    '^DynamicUser=yes$' '^ProtectSystem=strict$' '^PrivateTmp=yes$' '^NoNewPrivileges=yes$' \
                    '^RestrictAddressFamilies=' '^SystemCallFilter=@system-service$' \
                    '^MemoryDenyWriteExecute=yes$' '^EnvironmentFile=/etc/omnibus/'; do
            grep -q "$want" "$u" || { not_ok "$name has $want"; continue; }
        done
        ok "$name has the required settings"
    esac
done

# sd_notify: READY=1 after the database and sockets are up, then watchdog pings.
python3 "$ROOT/tests/notify_listen.py" "$T/notify.sock" "$T/notify.log" 20 &
LISTENER=$!
PIDS+=("$LISTENER")
wait_until 5 test -S "$T/notify.sock"
NOTIFY_SOCKET=$T/notify.sock WATCHDOG_USEC=2000000 spawn "$BIN/omni-archive" --db "$T/a.db" \
    --in "@ipc://$T/in" --out "ipc://$T/out" --tick 100ms
ARCHIVE=$SPAWNED
check "READY=1 arrives" wait_until 10 grep -q 'READY=1' "$T/notify.log"
check "the database exists once READY=1 is sent" test -f "$T/a.db"
check "the input socket is bound once READY=1 is sent" test -S "$T/in"
check "WATCHDOG=1 keeps coming" wait_until 10 sh -c "[ \$(grep -c 'WATCHDOG=1' '$T/notify.log') -ge 3 ]"
kill -TERM "$ARCHIVE"
wait "$ARCHIVE"
expect "SIGTERM exits 0" "$?" "0"
check "STOPPING=1 is sent on SIGTERM" grep -q 'STOPPING=1' "$T/notify.log"
NOTIFY_SOCKET=$T/notify.sock "$BIN/omni-archive" --in "@ipc://$T/in2" 2>/dev/null
expect "a missing --db exits 64 before READY" "$?" "64"
check "no READY=1 from a tool that did not start" test "$(grep -c 'READY=1' "$T/notify.log")" = 1
