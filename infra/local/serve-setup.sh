#!/usr/bin/env bash
# What `make serve` needs beyond `make dev`, installed only where missing (idempotent, ~0.1 s warm):
#   1. Debian's nodejs and npm (dynalite and s3rver are Node programs) and nginx-light (the front);
#   2. dynalite and s3rver, at the versions pinned in infra/local/persistent.py, into
#      PREFIX (default .venv/node): a local prefix, nothing global.
#
#   sudo infra/local/serve-setup.sh [PREFIX]
set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"
HERE="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
PREFIX="${1:-$HERE/../../.venv/node}"
# The pins live in one place, persistent.py's NODE_PACKAGES.
PACKAGES=$(sed -n 's/^NODE_PACKAGES = {\(.*\)}$/\1/p' "$HERE/persistent.py" | tr -d '" ' | tr ',' '\n' | sed 's/:/@/')

log() { printf 'serve-setup: %s\n' "$*" >&2; }

missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v nginx >/dev/null || missing+=(nginx-light)
if ((${#missing[@]})); then
    [[ "$(id -u)" -eq 0 ]] || { log "ERROR: must be root to install ${missing[*]}"; exit 1; }
    log "installing ${missing[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
# Debian starts nginx's own service on :80 when it can; the stack runs its own nginx and needs none.

want=$(printf '%s\n' $PACKAGES | sort | tr '\n' ' ')
stamp="$PREFIX/.installed"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
log "installing $want into $PREFIX (npm)"
mkdir -p "$PREFIX"
npm install --prefix "$PREFIX" --no-save --no-audit --no-fund --omit=dev --loglevel=error $PACKAGES >&2
echo "$want" > "$stamp"
