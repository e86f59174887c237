#!/usr/bin/env bash
# Prepare this machine to be an OpenDevelop Docker server for the local stack.
#
#   sudo infra/local/host-setup.sh
#
# Idempotent; in the warm case (everything already done) it makes a few docker
# calls and finishes in about a second. Steps:
#   1. installs docker.io, debootstrap and runsc with apt, only if missing;
#   2. starts dockerd (no systemd needed: setsid/nohup, log in
#      /var/log/opendevelop-dockerd.log) if `docker info` does not answer, and
#      waits up to 60 s for it;
#   3. registers gVisor as the Docker runtime `runsc` with `--network=none`
#      in /etc/docker/daemon.json (merged into any existing content), applied
#      with a SIGHUP config reload (dockerd reloads `runtimes` live; a restart
#      is only the fallback), and only when it is not registered yet;
#   4. builds the `base` image (infra/images/base/build.sh, cached by recipe),
#      then the rest of the catalogue (infra/images/build.py --all: base plus
#      Debian packages per recipe, also cached by recipe hash);
#   5. when the runtime was just (re)registered, checks that a runsc
#      container really runs here; if it does not, it tries the other gVisor
#      platform and otherwise warns (runsc stays optional: runc works).
#
# The last stdout line is the base image reference (opendevelop/base:<tag>);
# progress and warnings go to stderr.
#
# Environment:
#   OPENDEVELOP_DOCKERD_LOG     default /var/log/opendevelop-dockerd.log
#   OPENDEVELOP_DOCKER_CONFIG   default /etc/docker/daemon.json
#   OPENDEVELOP_RECHECK_RUNSC=1 probe runsc again even if it was checked before
#   OPENDEVELOP_SKIP_IMAGE=1    do not build the base image (nor the catalogue)
#   OPENDEVELOP_SKIP_CATALOGUE=1  build base only
#   DEBIAN_MIRROR               passed to the image build
set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"
# This script sets up the engine on *this* machine.
unset DOCKER_HOST DOCKER_CONTEXT

HERE="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
BUILD_SH="$HERE/../images/base/build.sh"
DOCKERD_LOG="${OPENDEVELOP_DOCKERD_LOG:-/var/log/opendevelop-dockerd.log}"
DAEMON_JSON="${OPENDEVELOP_DOCKER_CONFIG:-/etc/docker/daemon.json}"
STATE_DIR=/var/lib/opendevelop
RUNSC_STATUS="$STATE_DIR/runsc.status"   # "ok <args>" or "broken <why>"
START_TIMEOUT=60
# Candidate gVisor runtimeArgs, tried in order when the first does not run.
# (runsc 20221219 in Debian 12 knows the platforms ptrace (default) and kvm;
# newer releases default to systrap.) --ignore-cgroups is deliberately not a
# candidate: it would silently drop the memory/CPU/pids limits.
RUNSC_CANDIDATES=(
    "--network=none"
    "--network=none --platform=ptrace"
    "--network=none --platform=systrap"
)

log()  { printf 'host-setup: %s\n' "$*" >&2; }
warn() { printf 'host-setup: WARNING: %s\n' "$*" >&2; }
die()  { printf 'host-setup: ERROR: %s\n' "$*" >&2; exit 1; }

[[ "$(id -u)" -eq 0 ]] || die "must be run as root"

# ---- 1. packages -----------------------------------------------------------
ensure_packages() {
    local missing=()
    if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
        missing+=(docker.io)
    fi
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v runsc >/dev/null || missing+=(runsc)
    command -v python3 >/dev/null || missing+=(python3)
    [[ ${#missing[@]} -eq 0 ]] && return 0

    log "installing ${missing[*]} with apt"
    apt-get update -qq >&2 || die "apt-get update failed"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
        # runsc is optional: retry without it rather than failing the set-up.
        local required=() p
        for p in "${missing[@]}"; do [[ "$p" == runsc ]] || required+=("$p"); done
        [[ ${#required[@]} -gt 0 ]] || { warn "could not install runsc; gVisor will not be available"; return 0; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${required[@]}" >&2 \
            || die "apt-get install ${required[*]} failed"
        warn "could not install runsc; gVisor will not be available"
    fi
    command -v dockerd >/dev/null || die "dockerd still missing after installing docker.io"
    command -v debootstrap >/dev/null || die "debootstrap still missing after installing it"
}

# ---- 2. the Docker engine --------------------------------------------------
# `docker info --format '{{json .Runtimes}}'` doubles as the liveness check.
RUNTIMES_JSON=""
docker_answers() {
    RUNTIMES_JSON="$(timeout 10 docker info --format '{{json .Runtimes}}' 2>/dev/null)" \
        && [[ -n "$RUNTIMES_JSON" ]]
}

dockerd_pidfile() {
    python3 - "$DAEMON_JSON" <<'EOF' 2>/dev/null || echo /var/run/docker.pid
import json, sys
try:
    with open(sys.argv[1]) as f:
        print(json.load(f).get("pidfile") or "/var/run/docker.pid")
except FileNotFoundError:
    print("/var/run/docker.pid")
EOF
}

# PID of a live dockerd (from its pid file), or nothing.
dockerd_pid() {
    local pf pid
    pf="$(dockerd_pidfile)"
    [[ -s "$pf" ]] || return 0
    pid="$(tr -dc 0-9 <"$pf")"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
        && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]]; then
        echo "$pid"
    fi
}

using_systemd() {
    [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null
}

# Wait until docker answers; $1 = pid to watch (dies => give up early).
wait_for_docker() {
    local pid="${1:-}" deadline=$((SECONDS + START_TIMEOUT))
    while (( SECONDS < deadline )); do
        docker_answers && return 0
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 0.25
    done
    return 1
}

launch_dockerd() {
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    printf '\n==== %s host-setup.sh: dockerd %s\n' "$(date -u +%FT%TZ)" "$*" >>"$DOCKERD_LOG"
    # New session, detached from our terminal and pipes. (Without job control
    # the child is not a process-group leader, so setsid and nohup exec in
    # place and $! is dockerd's own pid.)
    setsid nohup dockerd "$@" >>"$DOCKERD_LOG" 2>&1 </dev/null &
    DOCKERD_STARTED_PID=$!
}

start_dockerd() {
    local pid
    pid="$(dockerd_pid)"
    if [[ -n "$pid" ]]; then
        log "dockerd (pid $pid) is running but not answering yet; waiting up to ${START_TIMEOUT}s"
        wait_for_docker "$pid" && return 0
        die "dockerd (pid $pid) did not answer within ${START_TIMEOUT}s; see its log (${DOCKERD_LOG} if started by this script)"
    fi
    if using_systemd; then
        log "starting docker with systemctl"
        systemctl start docker >&2 || true
        wait_for_docker "" && return 0
        die "docker.service did not answer within ${START_TIMEOUT}s (journalctl -u docker)"
    fi

    log "starting dockerd (log: $DOCKERD_LOG)"
    launch_dockerd
    wait_for_docker "$DOCKERD_STARTED_PID" && { log "dockerd is up (pid $DOCKERD_STARTED_PID)"; return 0; }
    if ! kill -0 "$DOCKERD_STARTED_PID" 2>/dev/null; then
        # The commonest failure on stripped-down hosts is the default bridge
        # (no bridge module / iptables). Sandboxes use --network none, so a
        # daemon without the default bridge is enough.
        warn "dockerd exited during start-up; last log lines:"
        tail -n 8 "$DOCKERD_LOG" >&2 || true
        warn "retrying once with --bridge=none --iptables=false"
        launch_dockerd --bridge=none --iptables=false
        wait_for_docker "$DOCKERD_STARTED_PID" && { log "dockerd is up without the default bridge (pid $DOCKERD_STARTED_PID)"; return 0; }
    fi
    tail -n 20 "$DOCKERD_LOG" >&2 || true
    die "the Docker engine did not answer within ${START_TIMEOUT}s; see $DOCKERD_LOG"
}

# Restart dockerd (only used when a config reload did not take).
restart_dockerd() {
    local pid
    if using_systemd; then
        systemctl restart docker >&2 || true
        wait_for_docker "" || die "docker did not come back after systemctl restart"
        return 0
    fi
    pid="$(dockerd_pid)"
    if [[ -n "$pid" ]]; then
        log "stopping dockerd (pid $pid)"
        kill -TERM "$pid"
        local deadline=$((SECONDS + 40))
        while kill -0 "$pid" 2>/dev/null; do
            (( SECONDS < deadline )) || die "dockerd (pid $pid) did not stop within 40 s"
            sleep 0.25
        done
    fi
    start_dockerd
}

# ---- 3. gVisor runtime -----------------------------------------------------
# Prints "yes" when the running daemon has runsc registered at the installed
# runsc's path with --network=none (and, if given, exactly the runtimeArgs
# in $1). Also warns when daemon.json is unreadable, since dockerd would then
# refuse to start next time.
runsc_registered() {
    python3 - "$RUNTIMES_JSON" "$(command -v runsc)" "${1:-}" "$DAEMON_JSON" <<'EOF'
import json, sys
try:
    rt = (json.loads(sys.argv[1]) or {}).get("runsc") or {}
except ValueError:
    rt = {}
args = rt.get("runtimeArgs") or []
want = sys.argv[3].split()
ok = (rt.get("path") == sys.argv[2] and "--network=none" in args
      and (not want or args == want))
print("yes" if ok else "no")
try:
    with open(sys.argv[4]) as f:
        text = f.read()
    if text.strip():
        json.loads(text)
except FileNotFoundError:
    pass
except (OSError, ValueError) as e:
    print(f"host-setup: WARNING: {sys.argv[4]} is not valid JSON ({e});"
          " dockerd will not start with it", file=sys.stderr)
EOF
}

# Merge runtimes.runsc into daemon.json (keeping everything else). $1 = args.
write_daemon_json() {
    mkdir -p "$(dirname "$DAEMON_JSON")"
    python3 - "$DAEMON_JSON" "$(command -v runsc)" "$1" <<'EOF'
import json, os, sys, tempfile
path, runsc, args = sys.argv[1], sys.argv[2], sys.argv[3].split()
conf = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read()
    if text.strip():
        try:
            conf = json.loads(text)
        except ValueError as e:
            sys.exit(f"host-setup: ERROR: {path} is not valid JSON ({e}); fix it by hand")
        if not isinstance(conf, dict):
            sys.exit(f"host-setup: ERROR: {path} must hold a JSON object")
runtimes = conf.setdefault("runtimes", {})
if not isinstance(runtimes, dict):
    sys.exit(f'host-setup: ERROR: "runtimes" in {path} must be an object')
want = {"path": runsc, "runtimeArgs": args}
if runtimes.get("runsc") == want:
    sys.exit(0)
runtimes["runsc"] = want
fd, tmp = tempfile.mkstemp(prefix=".daemon.json.", dir=os.path.dirname(path) or ".")
with os.fdopen(fd, "w") as f:
    json.dump(conf, f, indent=2, sort_keys=True)
    f.write("\n")
os.chmod(tmp, 0o644)
os.replace(tmp, path)
EOF
}

# Register runsc with runtimeArgs $1 and make the daemon pick it up.
register_runsc() {
    local args="$1" pid
    write_daemon_json "$args" || die "could not update $DAEMON_JSON"
    pid="$(dockerd_pid)"
    if [[ -n "$pid" ]]; then
        log "reloading dockerd configuration (SIGHUP to pid $pid)"
        kill -HUP "$pid"
        for _ in $(seq 20); do
            docker_answers && [[ "$(runsc_registered "$args")" == yes ]] && return 0
            sleep 0.25
        done
    fi
    log "configuration reload did not register runsc; restarting dockerd"
    restart_dockerd
    [[ "$(runsc_registered "$args")" == yes ]] \
        || die "dockerd does not list the runsc runtime after a restart; check $DAEMON_JSON and $DOCKERD_LOG"
}

# Run a small locked-down container under runsc. $1 = image.
probe_runsc() {
    local image="$1" name="opendevelop-runsc-probe-$$" out rc=0
    out="$(timeout -k 5 45 docker run --rm --name "$name" --runtime runsc \
        --network none --read-only --user 1000:1000 --cap-drop ALL \
        --security-opt no-new-privileges --memory 128m --memory-swap 128m \
        "$image" python3 -c 'print(6*7)' 2>&1)" || rc=$?
    if (( rc == 124 || rc == 137 )); then
        # A hung runtime keeps the container; make sure it goes.
        timeout 20 docker rm -f "$name" >/dev/null 2>&1 || true
        out="timed out after 45 s"
    fi
    # One line for messages and the status file: the first non-empty line.
    PROBE_OUTPUT="$(printf '%s\n' "$out" | awk 'NF { print; exit }' | cut -c1-400)"
    [[ "$out" == 42 ]]
}

check_runsc() {
    local image="$1" args first_error="" platforms
    # Only try platforms this runsc knows (its flag help lists them).
    platforms="$(runsc flags 2>&1 | grep -A1 -- '-platform ' || true)"
    for args in "${RUNSC_CANDIDATES[@]}"; do
        if [[ "$args" == *--platform=* && "$platforms" != *"${args##*--platform=}"* ]]; then
            continue
        fi
        if [[ "$(runsc_registered "$args")" != yes ]]; then
            register_runsc "$args"
        fi
        if probe_runsc "$image"; then
            mkdir -p "$STATE_DIR"
            echo "ok $args" >"$RUNSC_STATUS"
            log "runsc works here with runtimeArgs: $args"
            return 0
        fi
        warn "runsc with runtimeArgs '$args' does not run containers here: $PROBE_OUTPUT"
        first_error="${first_error:-$PROBE_OUTPUT}"
    done
    # Leave the plain registration in place (a server configured for runsc
    # then fails loudly instead of silently running under runc).
    if [[ "$(runsc_registered "${RUNSC_CANDIDATES[0]}")" != yes ]]; then
        register_runsc "${RUNSC_CANDIDATES[0]}"
    fi
    mkdir -p "$STATE_DIR"
    echo "broken $first_error" >"$RUNSC_STATUS"
    warn "gVisor (runsc) is registered but cannot run containers on this machine;" \
         "use runtime runc for this server (re-check: OPENDEVELOP_RECHECK_RUNSC=1 $0)"
}

# ---- main ------------------------------------------------------------------
ensure_packages
docker_answers || start_dockerd

RUNSC_CHANGED=0
if command -v runsc >/dev/null; then
    if [[ "$(runsc_registered)" != yes ]]; then
        log "registering gVisor runtime 'runsc' in $DAEMON_JSON"
        register_runsc "${RUNSC_CANDIDATES[0]}"
        RUNSC_CHANGED=1
    fi
else
    warn "runsc is not installed; only the runc runtime is available"
fi

IMAGE=""
if [[ "${OPENDEVELOP_SKIP_IMAGE:-0}" != 1 ]]; then
    IMAGE="$("$BUILD_SH" | tail -n 1)" || die "the base image build failed (see above)"
    [[ -n "$IMAGE" ]] || die "the base image build did not report an image"
    # The rest of the catalogue (infra/images/*/image.json): base plus Debian packages each, built
    # once per recipe hash (later runs: a few docker inspects).  A recipe that fails to build is
    # reported and left out; base and the others still serve.
    if [[ "${OPENDEVELOP_SKIP_CATALOGUE:-0}" != 1 ]]; then
        python3 "$HERE/../images/build.py" --all >/dev/null \
            || warn "some catalogue images were not built (see above); re-run to retry"
    fi
fi

if command -v runsc >/dev/null; then
    if [[ -n "$IMAGE" ]] && { (( RUNSC_CHANGED )) || [[ ! -s "$RUNSC_STATUS" ]] \
            || [[ "${OPENDEVELOP_RECHECK_RUNSC:-0}" == 1 ]]; }; then
        log "checking that runsc containers run here"
        check_runsc "$IMAGE"
    elif [[ -s "$RUNSC_STATUS" && "$(cut -d' ' -f1 "$RUNSC_STATUS")" != ok ]]; then
        warn "runsc was found not to work here earlier ($(cut -d' ' -f2- "$RUNSC_STATUS"));" \
             "re-check with OPENDEVELOP_RECHECK_RUNSC=1"
    fi
fi

log "ready"
[[ -z "$IMAGE" ]] || echo "$IMAGE"
