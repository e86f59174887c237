#!/usr/bin/env bash
# Build the OpenDevelop "base" sandbox image without any image registry.
#
#   sudo infra/images/base/build.sh            # build if needed, print image ref
#
# Recipe: `debootstrap --variant=minbase bookworm` + python3 + python-is-python3
# (so both `python` and `python3` are Python 3), an unprivileged user
# `sandbox` (uid/gid 1000, home /sandbox, which is NOT created: the
# dispatcher mounts a tmpfs there), apt lists/caches, docs, man pages and
# translations stripped; then `docker import`ed as
#   opendevelop/base:<tag>   (<tag> = first 12 hex of sha256 of this file)
#   opendevelop/base:latest
# so editing this recipe produces a new tag (and a rebuild), while running it
# again unchanged is a no-op (one docker call, well under a second).
#
# The last line on stdout is always the image reference
# (opendevelop/base:<tag>); all progress goes to stderr.
#
# Environment:
#   DEBIAN_MIRROR                  default http://deb.debian.org/debian
#   OPENDEVELOP_IMAGE_REPO         default opendevelop/base
#   OPENDEVELOP_DEBOOTSTRAP_CACHE  .deb cache kept between builds (~40 MB; a
#                                  rebuild after a recipe edit then downloads
#                                  nothing: debootstrap re-checks each file
#                                  against the mirror's index); default
#                                  /var/cache/opendevelop/debootstrap; set to
#                                  an empty string to disable.
#   OPENDEVELOP_FORCE_REBUILD=1    build even if the tag already exists.
#
# Needs root (debootstrap, chroot), debootstrap and a running Docker engine.
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm   # part of the recipe: change it here, not from outside
REPO="${OPENDEVELOP_IMAGE_REPO:-opendevelop/base}"
CACHE_DIR="${OPENDEVELOP_DEBOOTSTRAP_CACHE-/var/cache/opendevelop/debootstrap}"
PACKAGES="python3,python-is-python3"
SANDBOX_UID=1000
SANDBOX_GID=1000
# Only the recipe (this file) decides the tag: the mirror is not part of it.
TAG="$(sha256sum "$SELF" | cut -c1-12)"
IMAGE="$REPO:$TAG"

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { printf 'build.sh: ERROR: %s\n' "$*" >&2; exit 1; }

# One docker call: "<id> <tag> <tag>..." of IMAGE, or nothing if it is absent.
image_info() {
    docker image inspect --format '{{.Id}}{{range .RepoTags}} {{.}}{{end}}' "$IMAGE" 2>/dev/null || true
}

image_exists() {
    [[ "${OPENDEVELOP_FORCE_REBUILD:-0}" != 1 ]] || return 1
    INFO="$(image_info)"
    [[ -n "$INFO" ]]
}

# Point :latest at IMAGE unless it already does (keeps the warm path to one call).
tag_latest() {
    [[ " $INFO " == *" $REPO:latest "* ]] || docker tag "$IMAGE" "$REPO:latest"
}

# ---- warm path -------------------------------------------------------------
if image_exists; then
    tag_latest
    log "$IMAGE already built (cached)"
    echo "$IMAGE"
    exit 0
fi

# ---- cold path -------------------------------------------------------------
[[ "$(id -u)" -eq 0 ]] || die "must be run as root (debootstrap/chroot need it)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
command -v docker >/dev/null || die "docker CLI is not installed"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is dockerd running?)"

# Serialize concurrent builds; re-check once we hold the lock.
mkdir -p /run/lock
exec 9>/run/lock/opendevelop-base-build.lock
flock 9
if image_exists; then
    tag_latest
    log "$IMAGE was built by a concurrent run"
    echo "$IMAGE"
    exit 0
fi

mkdir -p /var/tmp
WORK="$(mktemp -d /var/tmp/opendevelop-base.XXXXXX)"
ROOTFS="$WORK/rootfs"

# Unmount anything debootstrap may have left mounted under DIR (proc, sys,
# bind-mounted /dev nodes after an interrupted run), deepest first.
unmount_under() {
    local dir="$1" mnt
    [[ -d "$dir" ]] || return 0
    dir="$(readlink -f "$dir")"
    # /proc/self/mounts escapes spaces as \040; our paths have none.
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts \
        | sort -r | while read -r mnt; do
            umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
        done
}

DB_PID=""
# Stop a running debootstrap and everything it started (its own session).
stop_debootstrap() {
    [[ -n "$DB_PID" ]] && kill -0 "$DB_PID" 2>/dev/null || return 0
    kill -TERM -- "-$DB_PID" 2>/dev/null || true
    for _ in $(seq 40); do
        kill -0 "$DB_PID" 2>/dev/null || break
        sleep 0.25
    done
    kill -KILL -- "-$DB_PID" 2>/dev/null || true
    wait "$DB_PID" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    stop_debootstrap
    unmount_under "$WORK"
    # --one-file-system: never descend into something still mounted.
    rm -rf --one-file-system "$WORK" 2>/dev/null || log "warning: could not fully remove $WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

run_debootstrap() {
    local args=(--variant=minbase --include="$PACKAGES" --components=main)
    if [[ -n "$CACHE_DIR" ]]; then
        mkdir -p "$CACHE_DIR"
        args+=(--cache-dir="$(readlink -f "$CACHE_DIR")")
    fi
    # In the background, in its own session, so that a signal to this script
    # is handled at once (bash defers traps while a foreground child runs) and
    # cleanup can stop debootstrap together with the dpkg it started.
    setsid debootstrap "${args[@]}" "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 </dev/null &
    DB_PID=$!
    local rc=0
    wait "$DB_PID" || rc=$?
    DB_PID=""
    return "$rc"
}

START=$SECONDS
log "building $IMAGE from $SUITE ($MIRROR) in $WORK"
if ! run_debootstrap; then
    log "debootstrap failed (last lines below); retrying once"
    tail -n 15 "$WORK/debootstrap.log" >&2 || true
    unmount_under "$ROOTFS"
    rm -rf --one-file-system "$ROOTFS"
    sleep 3
    if ! run_debootstrap; then
        tail -n 40 "$WORK/debootstrap.log" >&2 || true
        die "debootstrap failed twice (mirror $MIRROR); see the log lines above"
    fi
fi
unmount_under "$ROOTFS"
log "debootstrap done in $((SECONDS - START)) s"

# ---- customise -------------------------------------------------------------
# Unprivileged user; home folder intentionally not created (tmpfs at run time).
chroot "$ROOTFS" /usr/sbin/groupadd --gid "$SANDBOX_GID" sandbox
chroot "$ROOTFS" /usr/sbin/useradd --uid "$SANDBOX_UID" --gid "$SANDBOX_GID" \
    --home-dir /sandbox --no-create-home --shell /bin/sh \
    --comment "OpenDevelop sandbox" sandbox

# Keep later package installs (in derived images) small too.
mkdir -p "$ROOTFS/etc/dpkg/dpkg.cfg.d" "$ROOTFS/etc/apt/apt.conf.d"
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/01-opendevelop-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
EOF
cat >"$ROOTFS/etc/apt/apt.conf.d/01-opendevelop-clean" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF

# Strip: apt lists and caches, docs (licences kept), man/info pages,
# translations, logs, debootstrap leftovers, host-specific files.
rm -rf "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/var/cache/apt/* \
       "$ROOTFS"/var/cache/debconf/*-old \
       "$ROOTFS"/var/lib/dpkg/*-old \
       "$ROOTFS"/usr/share/man/* \
       "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/usr/share/lintian \
       "$ROOTFS"/usr/share/locale/* \
       "$ROOTFS"/var/log/* \
       "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
       "$ROOTFS"/debootstrap
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
# Smoke test inside the chroot (before /dev is emptied) and before importing.
chroot "$ROOTFS" /bin/sh -c 'python -c "import sys, json, sqlite3, ssl; assert sys.version_info[0] == 3" \
    && python3 -V >/dev/null && command -v head tar >/dev/null && id sandbox >/dev/null' \
    || die "smoke test of the root filesystem failed"

# Docker provides /dev, /etc/hosts, /etc/hostname and /etc/resolv.conf.
find "$ROOTFS/dev" -mindepth 1 -delete
: >"$ROOTFS/etc/resolv.conf"
: >"$ROOTFS/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOTFS/etc/hosts"
rm -f "$ROOTFS/etc/machine-id" && : >"$ROOTFS/etc/machine-id"
chmod 1777 "$ROOTFS/tmp"

# ---- import ----------------------------------------------------------------
log "importing into Docker as $IMAGE"
# Set only on a forced rebuild: the image this one replaces.
OLD_ID="$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
tar --numeric-owner --xattrs -C "$ROOTFS" -c . \
    | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/sh"]' \
        --change "LABEL org.opendevelop.image=base org.opendevelop.recipe=$TAG org.opendevelop.suite=$SUITE" \
        --message "opendevelop base ($SUITE, recipe $TAG)" \
        - "$IMAGE" >/dev/null
docker tag "$IMAGE" "$REPO:latest"
if [[ -n "$OLD_ID" && "$OLD_ID" != "$(docker image inspect --format '{{.Id}}' "$IMAGE")" ]]; then
    # Now untagged; fails harmlessly if a container still uses it.
    docker rmi "$OLD_ID" >/dev/null 2>&1 || true
fi
SIZE="$(docker image inspect --format '{{.Size}}' "$IMAGE")"
log "built $IMAGE ($((SIZE / 1000000)) MB) in $((SECONDS - START)) s; also tagged $REPO:latest"
echo "$IMAGE"
