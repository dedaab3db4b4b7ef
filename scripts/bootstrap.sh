#!/usr/bin/env bash
# Create .venv and install Postroom into it, after checking the few things a fresh
# Debian machine may lack (python3-venv; PostgreSQL and Redis binaries for `postroom up`).
set -euo pipefail
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
want_servers=${1:-}

log() { printf '[bootstrap] %s\n' "$*" >&2; }

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  log "Python 3.11 or newer is needed ($PY is $("$PY" --version 2>&1))"; exit 1
fi

root_or_sudo() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    log "needs root: run '$*' as root, then make again"; exit 1; fi
}

if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  log "installing python${pyver}-venv (Debian) so that .venv can be created"
  root_or_sudo apt-get update -qq
  root_or_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${pyver}-venv" || \
    root_or_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi

if [ "$want_servers" = "--servers" ]; then
  # `postroom up` runs a private PostgreSQL and Redis from the binaries on PATH when no
  # POSTROOM_DATABASE_URL / POSTROOM_REDIS_URL is configured.
  if [ -z "${POSTROOM_DATABASE_URL:-}" ] && ! command -v initdb >/dev/null 2>&1 && \
     ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    log "installing PostgreSQL binaries (Debian: postgresql) for the private database"
    root_or_sudo apt-get update -qq
    root_or_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
  fi
  if [ -z "${POSTROOM_REDIS_URL:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
    log "installing Redis (Debian: redis-server) for the private queue"
    root_or_sudo apt-get update -qq
    root_or_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
  fi
fi

# `make run` calls us twice: first for .venv (only when it is out of date), then with
# --servers; the second time the install is already current, so only the servers are checked
stamp="$VENV/.installed"
if [ "$want_servers" = "--servers" ] && [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && \
   [ "$stamp" -nt "$0" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
log "installing postroom and its development tools into $VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev]'
touch "$VENV/.installed"
