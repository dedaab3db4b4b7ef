#!/bin/sh
# As the official image: no config file means no protected mode (the compose network
# is the boundary), and the server runs as the redis user in /data.
set -eu
if [ "$1" = redis-server ]; then
  shift
  chown redis:redis /data
  exec setpriv --reuid=redis --regid=redis --init-groups redis-server --protected-mode no "$@"
fi
exec "$@"
