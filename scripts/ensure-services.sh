#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis the tests talk to are installed and running on
# 127.0.0.1, and that the Debian packages the tests drive as real clients are present.
# Idempotent and quick when everything is already there; needs root to install.
set -euo pipefail

log() { printf '[ensure-services] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO=""; fi
fi

apt_updated=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
    log "missing Debian packages: ${missing[*]} (run as root or install them: apt-get install ${missing[*]})"
    return 1
  fi
  if [ $apt_updated -eq 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  log "installing ${missing[*]}"
  # Package installs must not start daemons here (postfix in particular stays stopped):
  # policy-rc.d answering 101 tells invoke-rc.d to leave services alone.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created_policy=1
  fi
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ $created_policy -eq 1 ] && $SUDO rm -f "$policy"
  return 0
}

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  command -v pg_isready >/dev/null 2>&1 || apt_install postgresql-client
  if pg_up; then return 0; fi
  log "starting PostgreSQL"
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$version" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    $SUDO pg_createcluster "$version" main >/dev/null
  fi
  local conf=/etc/postgresql/$version/main
  # trust on loopback for the test user, as the development machines have it
  if ! $SUDO grep -q "postroom-ci" "$conf/pg_hba.conf" 2>/dev/null; then
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust # postroom-ci\nhost all all ::1/128 trust # postroom-ci' "$conf/pg_hba.conf"
  fi
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || $SUDO pg_ctlcluster "$version" main start
  for _ in $(seq 1 30); do pg_up && return 0; sleep 1; done
  log "PostgreSQL did not come up on 127.0.0.1:5432"
  return 1
}

ensure_redis() {
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  if redis_up; then return 0; fi
  log "starting Redis"
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do redis_up && return 0; sleep 1; done
  log "Redis did not come up on 127.0.0.1:6379"
  return 1
}

ensure_clients() {
  # real clients the tests drive; postfix only for its smtp-source load tool (daemon stays stopped)
  apt_install swaks libnet-ssleay-perl curl fetchmail getmail6 isync postfix docker-compose haproxy
  # a ManageSieve client (tests/integration/test_managesieve_service.py)
  apt_install sieve-connect
  # the Dovecot that tests/e2e/test_import_dovecot.py moves a domain from (started by the test
  # on loopback; the package's own daemon stays stopped)
  apt_install dovecot-core dovecot-imapd dovecot-pop3d
  # a real ManageSieve client (RFC 5804) for the managesieve service's tests
  apt_install sieve-connect
}

ensure_scanners() {
  # rspamd and clamd for the content filtering tests (tests/support/scanners.py starts its
  # own daemons on loopback with their own configuration; the packaged services stay stopped)
  apt_install rspamd clamav-daemon clamav
}

ensure_browser() {
  # the web console's browser tests drive Debian's headless Chromium through its driver
  # (nothing may download a browser on these machines)
  apt_install chromium chromium-driver fonts-dejavu-core
}

ensure_acme() {
  # the ACME tests run Debian's pebble (a test ACME server) on loopback
  apt_install pebble
}

ensure_docker_e2e() {
  # the real compose/Swarm test (tests/deploy/docker_e2e) starts its own dockerd from
  # Debian's docker.io and makes its images with debootstrap; the compose v2 CLI plugin
  # and the Debian root tarball are fetched into the cache now, not during the test
  apt_install docker.io debootstrap
  bash "$(dirname "$0")/docker-e2e-images.sh" plugin >/dev/null
  bash "$(dirname "$0")/docker-e2e-images.sh" rootfs >/dev/null
  bash "$(dirname "$0")/docker-e2e-images.sh" filter-rootfs >/dev/null
}

case "${1:-all}" in
  postgres) ensure_postgres ;;
  redis) ensure_redis ;;
  clients) ensure_clients ;;
  scanners) ensure_scanners ;;
  browser) ensure_browser ;;
  acme) ensure_acme ;;
  docker-e2e) ensure_docker_e2e ;;
  all) ensure_postgres; ensure_redis; ensure_clients; ensure_scanners; ensure_browser; ensure_acme; ensure_docker_e2e ;;
  *) echo "usage: $0 [all|postgres|redis|clients|scanners|browser|acme|docker-e2e]" >&2; exit 2 ;;
esac
