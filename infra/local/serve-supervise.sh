#!/bin/sh
# Keep `make serve` running on a host without systemd: what infra/local/opendevelop.service does.
#
#   infra/local/serve-supervise.sh start    the supervisor in the background (no-op if running)
#   infra/local/serve-supervise.sh stop     SIGTERM to the stack (warm stop), then the supervisor
#   infra/local/serve-supervise.sh status   exit 0 if running (prints its pid)
#   infra/local/serve-supervise.sh run      the supervisor itself (what `start` runs under setsid nohup)
#
# Like Restart=always: a stack that exits (or is killed, with -9 even: its children die with
# it) is started again after 2 s.  The supervisor's pid file and log are in the state folder
# (OPENDEVELOP_STATE_DIR, default .opendevelop): run/serve-supervise.pid, logs/serve.log.
set -u
HERE="$(cd "$(dirname "$0")" && pwd -P)"
ROOT="$(cd "$HERE/../.." && pwd)"
STATE="${OPENDEVELOP_STATE_DIR:-$ROOT/.opendevelop}"
PIDFILE="$STATE/run/serve-supervise.pid"
LOG="$STATE/logs/serve.log"
STOP_TIMEOUT=90

running_pid() {
    [ -s "$PIDFILE" ] || return 1
    pid="$(cat "$PIDFILE")"
    case "$pid" in ''|*[!0-9]*) return 1 ;; esac
    kill -0 "$pid" 2>/dev/null || return 1
    grep -q "serve-supervise.sh" "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

run() {
    stopping=0
    child=""
    trap 'stopping=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT
    while [ "$stopping" = 0 ]; do
        (cd "$ROOT" && exec "$ROOT/.venv/bin/python" -m infra.local.serve) &
        child=$!
        while kill -0 "$child" 2>/dev/null; do wait "$child"; done
        [ "$stopping" = 0 ] || break
        echo "serve-supervise.sh: the stack exited; starting it again in 2 s" >&2
        sleep 2
    done
}

case "${1:-}" in
    run) run ;;
    start)
        if pid="$(running_pid)"; then echo "running $pid"; exit 0; fi
        mkdir -p "$STATE/run" "$STATE/logs"
        setsid nohup "$HERE/serve-supervise.sh" run >>"$LOG" 2>&1 </dev/null &
        echo $! >"$PIDFILE"
        echo "started $!"
        ;;
    stop)
        pid="$(running_pid)" || { echo "stopped"; exit 0; }
        kill -TERM "$pid"
        waited=0
        while kill -0 "$pid" 2>/dev/null; do
            if [ "$waited" -ge $((STOP_TIMEOUT * 4)) ]; then
                echo "serve-supervise.sh: still running after ${STOP_TIMEOUT} s; killing it" >&2
                kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
                break
            fi
            sleep 0.25
            waited=$((waited + 1))
        done
        rm -f "$PIDFILE"
        echo "stopped"
        ;;
    status)
        if pid="$(running_pid)"; then echo "running $pid"; else echo "stopped"; exit 3; fi
        ;;
    *) echo "usage: serve-supervise.sh start|stop|status|run" >&2; exit 2 ;;
esac
