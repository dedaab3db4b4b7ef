"""A cache shared by a service's processes: string values under prefixed keys, expiring in Redis.

Used for what is costly to fetch and may be lost (the mta's MTA-STS
policies): a miss only means fetching again. Every call blocks on the network
and raises redis errors; callers that treat the cache as optional catch them.
"""

from __future__ import annotations

import redis


def get(client: redis.Redis, key: str) -> bytes | str | None:
    """The value under ``key``, or None when it is absent or expired."""
    value = client.get(key)
    return value  # type: ignore[return-value]


def put(client: redis.Redis, key: str, value: str, ttl: int) -> None:
    """Store ``value`` under ``key`` for ``ttl`` seconds (> 0)."""
    client.set(key, value, ex=ttl)
