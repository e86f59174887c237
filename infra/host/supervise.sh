#!/bin/sh
# Keep the dispatcher running on a host without systemd: what the systemd unit
# (opendevelop-dispatcher.service) does, for containers and minimal hosts.
#
#   supervise.sh PREFIX start    start the supervisor in the background (no-op if running)
#   supervise.sh PREFIX stop     warm-stop the dispatcher (running sandboxes finish), then the supervisor
#   supervise.sh PREFIX restart
#   supervise.sh PREFIX status   exit 0 if running (prints its pid)
#   supervise.sh PREFIX run      the supervisor itself (what `start` runs under setsid nohup)
#
# Like Restart=always: a dispatcher that exits is started again after 2 s (as the unit's RestartSec;
# OPENDEVELOP_SUPERVISE_RESTART_S sets another delay, in seconds), except after exit 4
# (its server was retired: RestartPreventExitStatus=4).  It runs
# with a clean environment plus PREFIX/etc/dispatcher.env; the log is PREFIX/log/dispatcher.log.
set -u
PREFIX="${1:?usage: supervise.sh PREFIX start|stop|restart|status|run}"
ACTION="${2:?usage: supervise.sh PREFIX start|stop|restart|status|run}"
PIDFILE="$PREFIX/run/supervise.pid"
LOG="$PREFIX/log/dispatcher.log"
SELF="$PREFIX/app/infra/host/supervise.sh"
STOP_TIMEOUT=90   # as the unit's TimeoutStopSec
RESTART_S="${OPENDEVELOP_SUPERVISE_RESTART_S:-2}"

running_pid() {
    [ -s "$PIDFILE" ] || return 1
    pid="$(cat "$PIDFILE")"
    case "$pid" in ''|*[!0-9]*) return 1 ;; esac
    kill -0 "$pid" 2>/dev/null || return 1
    grep -q "supervise.sh" "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

run() {
    case "$RESTART_S" in
        .|*[!0-9.]*|*.*.*)
            echo "supervise.sh: OPENDEVELOP_SUPERVISE_RESTART_S=$RESTART_S is not a number of seconds" >&2
            exit 2
            ;;
    esac
    stopping=0
    child=""
    trap 'stopping=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT
    while [ "$stopping" = 0 ]; do
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
            sh -c 'set -a; . "$1"; set +a; cd "$2/app" && exec "$2/venv/bin/python" -m dispatcher' \
            dispatcher "$PREFIX/etc/dispatcher.env" "$PREFIX" &
        child=$!
        # `wait` returns early when a signal arrives: wait again until the child is gone.
        status=0
        while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done
        [ "$stopping" = 0 ] || break
        if [ "$status" = 4 ]; then
            # As the unit's RestartPreventExitStatus=4: the server was retired (scale-in), so the
            # dispatcher must not come back for it.
            echo "supervise.sh: the dispatcher's server was retired (exit 4); not starting it again" >&2
            break
        fi
        echo "supervise.sh: the dispatcher exited; starting it again in $RESTART_S s" >&2
        sleep "$RESTART_S"
    done
}

case "$ACTION" in
    run)
        run
        ;;
    start)
        if pid="$(running_pid)"; then echo "running $pid"; exit 0; fi
        mkdir -p "$PREFIX/run" "$PREFIX/log"
        # A new session, detached from the caller's terminal and SSH channel.
        setsid nohup "$SELF" "$PREFIX" run >>"$LOG" 2>&1 </dev/null &
        echo $! >"$PIDFILE"
        echo "started $!"
        ;;
    stop)
        pid="$(running_pid)" || { echo "stopped"; exit 0; }
        kill -TERM "$pid"
        waited=0
        while kill -0 "$pid" 2>/dev/null; do
            if [ "$waited" -ge $((STOP_TIMEOUT * 4)) ]; then
                echo "supervise.sh: still running after ${STOP_TIMEOUT} s; killing it" >&2
                kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
                break
            fi
            sleep 0.25
            waited=$((waited + 1))
        done
        rm -f "$PIDFILE"
        echo "stopped"
        ;;
    restart)
        "$SELF" "$PREFIX" stop >/dev/null && "$SELF" "$PREFIX" start
        ;;
    status)
        if pid="$(running_pid)"; then echo "running $pid"; else echo "stopped"; exit 3; fi
        ;;
    *)
        echo "usage: supervise.sh PREFIX start|stop|restart|status|run" >&2
        exit 2
        ;;
esac
