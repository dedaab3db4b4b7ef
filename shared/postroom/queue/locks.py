"""Leases in Redis: a key set with NX and a TTL that only its holder may refresh or release.

A holder proves itself with a random token; a holder that dies without
releasing loses the lease when the TTL runs out. The pop3 service takes one
per user (``<prefix>pop3:lock:<user id>``) so that every replica honours the
maildrop lock of RFC 1939. Every call blocks on the network and raises redis
errors: run it in a thread pool.
"""

from __future__ import annotations

import redis

_REFRESH = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def acquire(client: redis.Redis, key: str, token: str, ttl: float) -> bool:
    """True when the lease was free and is now held by ``token`` for ``ttl`` seconds."""
    return bool(client.set(key, token, nx=True, px=int(ttl * 1000)))


def refresh(client: redis.Redis, key: str, token: str, ttl: float) -> bool:
    """Extend the lease to ``ttl`` seconds from now; False when ``token`` no longer holds it."""
    return bool(client.eval(_REFRESH, 1, key, token, int(ttl * 1000)))


def release(client: redis.Redis, key: str, token: str) -> None:
    """Give the lease up, if ``token`` still holds it."""
    client.eval(_RELEASE, 1, key, token)
