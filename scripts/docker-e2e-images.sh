#!/usr/bin/env bash
# Images for the Docker end-to-end test (tests/deploy/docker_e2e), made without any image
# registry: a Debian bookworm root made by debootstrap and `docker import`ed, PostgreSQL
# and Redis images on it from Debian's packages, and Postroom's own image built by
# deploy/Dockerfile on that base from wheels built here on the host.
#
#   scripts/docker-e2e-images.sh plugin            # compose v2 CLI plugin into the cache
#   scripts/docker-e2e-images.sh rootfs            # the debootstrap tarball (cached)
#   scripts/docker-e2e-images.sh filter-rootfs     # the scanners' tarball (cached)
#   DOCKER_HOST=unix://... scripts/docker-e2e-images.sh images PROJECT_DIR
#                                                  # base, postgres, redis, postroom images
#   DOCKER_HOST=unix://... scripts/docker-e2e-images.sh filter-images
#                                                  # rspamd and clamav (compose's filter profile)
#
# Everything lands in POSTROOM_E2E_CACHE (default /var/cache/postroom-e2e), outside the
# clone, and is reused: the root tarball while its package list is unchanged and it is
# younger than 30 days, wheels while pyproject.toml is unchanged. Needs root (debootstrap).
set -euo pipefail

log() { printf '[docker-e2e-images] %s\n' "$*" >&2; }

CACHE=${POSTROOM_E2E_CACHE:-/var/cache/postroom-e2e}
HERE=$(cd "$(dirname "$0")/.." && pwd)
SUITE=bookworm
MIRROR=${POSTROOM_E2E_MIRROR:-http://deb.debian.org/debian}
# python3 + venv for Postroom, the two servers compose.yaml needs (their clients come
# with them), HAProxy for proxy mode, tini as PID 1 for them
PACKAGES=python3,python3-venv,ca-certificates,postgresql-15,redis-server,haproxy,tini
ROOTFS_REV=1
KEY=$(printf '%s %s %s' "$SUITE" "$PACKAGES" "$ROOTFS_REV" | sha256sum | cut -c1-12)
BASE_TAG=postroom-e2e/debian:$SUITE-$KEY
# the filter profile's scanners get a root of their own (their packages pull in a few
# hundred MB the other images do not need; the base's key, and so its images, stay as
# they are): Debian's rspamd and clamd, as the content tests run them
FILTER_PACKAGES=ca-certificates,rspamd,clamav-daemon,tini
FILTER_KEY=$(printf '%s %s %s' "$SUITE" "$FILTER_PACKAGES" "$ROOTFS_REV" | sha256sum | cut -c1-12)
FILTER_TAG=postroom-e2e/debian-filter:$SUITE-$FILTER_KEY
IMAGES_DIR=$HERE/tests/deploy/docker_e2e/images
mkdir -p "$CACHE"

# --- the compose v2 CLI plugin: bookworm only ships compose v1, trixie's docker-compose
# package is compose v2 (a static Go binary). Fetched with apt from a private state folder
# (the system's sources and lists are untouched), unpacked, never installed with dpkg.
plugin_path() { echo "$CACHE/compose-v2/usr/libexec/docker/cli-plugins/docker-compose"; }
ensure_plugin() {
  local bin; bin=$(plugin_path)
  if [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; then echo "$bin"; return 0; fi
  local apt="$CACHE/apt-trixie"
  mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/etc"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie main" \
    > "$apt/etc/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt/etc/sources.list" -o Dir::Etc::SourceParts=/nonexistent
              -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt" -o "Dir::Cache::archives=$apt/archives"
              -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
  log "fetching compose v2 (Debian trixie's docker-compose package)"
  apt-get "${opts[@]}" -qq update >&2
  (cd "$apt/archives" && rm -f docker-compose_*.deb && apt-get "${opts[@]}" -qq download docker-compose >&2)
  rm -rf "$CACHE/compose-v2" && mkdir -p "$CACHE/compose-v2"
  dpkg -x "$apt"/archives/docker-compose_*.deb "$CACHE/compose-v2"
  "$bin" version >&2
  echo "$bin"
}

# --- a Debian root, as a tarball `docker import` reads: NAME (the cache file's prefix)
# KEY PACKAGES
build_rootfs() {
  local name=$1 key=$2 packages=$3
  local tar="$CACHE/$name-$SUITE-$key.tar"
  if [ -s "$tar" ] && [ -z "$(find "$tar" -mtime +30)" ]; then echo "$tar"; return 0; fi
  command -v debootstrap >/dev/null || { log "debootstrap is missing (scripts/ensure-services.sh installs it)"; return 1; }
  local dir="$CACHE/$name.build"
  rm -rf "$dir"
  log "debootstrap $SUITE ($packages); a few minutes the first time"
  debootstrap --variant=minbase --include="$packages" "$SUITE" "$dir" "$MIRROR" >"$CACHE/debootstrap-$name.log" 2>&1 \
    || { tail -n 30 "$CACHE/debootstrap-$name.log" >&2; return 1; }
  # the packages' own clusters, databases and caches are not part of an image
  rm -rf "$dir"/var/lib/postgresql/15/main "$dir"/etc/postgresql/15/main "$dir"/var/cache/apt/archives/*.deb \
         "$dir"/var/lib/apt/lists/*_Packages
  tar -C "$dir" --numeric-owner -cf "$tar.tmp" .
  mv "$tar.tmp" "$tar"
  rm -rf "$dir"
  find "$CACHE" -maxdepth 1 -name "$name-*.tar" ! -name "$(basename "$tar")" -delete
  echo "$tar"
}
rootfs_path() { echo "$CACHE/rootfs-$SUITE-$KEY.tar"; }
ensure_rootfs() { build_rootfs rootfs "$KEY" "$PACKAGES"; }
ensure_filter_rootfs() { build_rootfs filterfs "$FILTER_KEY" "$FILTER_PACKAGES"; }

# --- wheels for Postroom's dependencies (and its build backend), built with the host's
# python (3.11, the same cp311 ABI as bookworm's python3)
ensure_wheels() {
  local python=${PYTHON:-$HERE/.venv/bin/python}
  [ -x "$python" ] || python=python3
  local key; key=$(cat "$HERE/pyproject.toml" | sha256sum | cut -c1-12)
  local dir="$CACHE/wheels-$key"
  if [ -f "$dir/.complete" ]; then echo "$dir"; return 0; fi
  rm -rf "$dir" && mkdir -p "$dir"
  log "building wheels into $dir"
  # async-timeout: redis-py wants it below python 3.11.3 (bookworm has 3.11.2), which a
  # newer host python would not fetch
  "$python" -m pip wheel -q --wheel-dir "$dir" "$HERE" 'setuptools>=77' wheel 'async-timeout>=4.0.3' >&2
  rm -f "$dir"/postroom-*.whl
  touch "$dir/.complete"
  find "$CACHE" -maxdepth 1 -name "wheels-*" ! -name "wheels-$key" -exec rm -rf {} +
  echo "$dir"
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

ensure_images() {
  local project=${1:?usage: images PROJECT_DIR (a copy of the repository to build from)}
  : "${DOCKER_HOST:?DOCKER_HOST must name the test daemon}"
  if ! have_image "$BASE_TAG"; then
    local tar; tar=$(ensure_rootfs)
    log "docker import $BASE_TAG"
    docker import "$tar" "$BASE_TAG" >/dev/null
  fi
  docker tag "$BASE_TAG" postroom-e2e/debian:latest
  # legacy builder, no network: everything the builds need is in the base or the context
  # (BuildKit would fetch its Dockerfile frontend from a registry)
  export DOCKER_BUILDKIT=0
  local name
  for name in postgres redis haproxy; do
    log "docker build postroom-e2e/$name"
    docker build -q --network none --build-arg BASE_IMAGE="$BASE_TAG" \
      -t "postroom-e2e/$name:latest" "$IMAGES_DIR/$name" >/dev/null
  done
  local wheels; wheels=$(ensure_wheels)
  cp "$wheels"/*.whl "$project/deploy/wheels/"
  log "docker build postroom-e2e/postroom (deploy/Dockerfile, base $BASE_TAG, offline wheels)"
  docker build -q --network none -f "$project/deploy/Dockerfile" \
    --build-arg BASE_IMAGE="$BASE_TAG" \
    --build-arg PIP_ARGS="--no-index --find-links=/wheels" \
    -t postroom-e2e/postroom:test "$project" >/dev/null
}

# --- rspamd and clamd for compose's filter profile, on their own root
ensure_filter_images() {
  : "${DOCKER_HOST:?DOCKER_HOST must name the test daemon}"
  if ! have_image "$FILTER_TAG"; then
    local tar; tar=$(ensure_filter_rootfs)
    log "docker import $FILTER_TAG"
    docker import "$tar" "$FILTER_TAG" >/dev/null
  fi
  export DOCKER_BUILDKIT=0
  local name
  for name in rspamd clamav; do
    log "docker build postroom-e2e/$name"
    docker build -q --network none --build-arg BASE_IMAGE="$FILTER_TAG" \
      -t "postroom-e2e/$name:latest" "$IMAGES_DIR/$name" >/dev/null
  done
}

case "${1:-}" in
  plugin) ensure_plugin ;;
  rootfs) ensure_rootfs ;;
  filter-rootfs) ensure_filter_rootfs ;;
  filter-images) ensure_filter_images ;;
  wheels) ensure_wheels ;;
  images) ensure_images "${2:-}" ;;
  *) echo "usage: $0 plugin|rootfs|filter-rootfs|wheels|images PROJECT_DIR|filter-images" >&2; exit 2 ;;
esac
