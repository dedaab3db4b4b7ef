"""Failed-login state in Redis: a counter per (client, account) pair and a sliding window per
client (``postroom.auth.ratelimit`` decides what they mean).

Every call blocks on the network and raises redis errors: run it in a thread
pool, never on the reactor.
"""

from __future__ import annotations

from typing import Any

import redis

# keys one unlock may delete; an account has one pair per client it failed from
MAX_UNLOCK_KEYS = 100_000


def read(client: redis.Redis, pair_key: str | None, address_key: str | None,
         oldest: float) -> tuple[int, int]:
    """(failures of the pair, failures from the client after ``oldest``), in one round trip;
    0 for a key not given."""
    pipe = client.pipeline(transaction=False)
    if pair_key is not None:
        pipe.get(pair_key)
    if address_key is not None:
        pipe.zremrangebyscore(address_key, "-inf", oldest)
        pipe.zcard(address_key)
    replies: list[Any] = pipe.execute() if pair_key or address_key else []
    pair = int(replies[0] or 0) if pair_key is not None else 0
    address = int(replies[-1]) if address_key is not None else 0
    return pair, address


def record(client: redis.Redis, pair_key: str | None, address_key: str | None, member: str,
           now: float, window: float, keep: int) -> int:
    """Count one failure on both, atomically; the pair's new count (0 without a pair).

    The pair counter and the client's window expire ``window`` after this
    failure; the window keeps at most its newest ``keep`` members (bounded memory).
    """
    ttl_ms = max(1, int(window * 1000))
    pipe = client.pipeline(transaction=True)
    if pair_key is not None:
        pipe.incr(pair_key)
        pipe.pexpire(pair_key, ttl_ms)
    if address_key is not None:
        pipe.zadd(address_key, {member: now})
        pipe.zremrangebyscore(address_key, "-inf", now - window)
        pipe.zremrangebyrank(address_key, 0, -(keep + 1))
        pipe.pexpire(address_key, ttl_ms)
    replies: list[Any] = pipe.execute()
    return int(replies[0]) if pair_key is not None else 0


def counters(client: redis.Redis, pattern: str, limit: int = 1000) -> list[tuple[str, int, int]]:
    """(key, value, milliseconds to live) of up to ``limit`` counters matching ``pattern``."""
    keys: list[str] = []
    for key in client.scan_iter(match=pattern, count=1000):
        keys.append(key.decode() if isinstance(key, bytes) else key)
        if len(keys) >= limit:
            break
    if not keys:
        return []
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
        pipe.pttl(key)
    replies: list[Any] = pipe.execute()
    return [(key, int(replies[2 * i] or 0), int(replies[2 * i + 1]))
            for i, key in enumerate(keys) if replies[2 * i] is not None]


def window_size(client: redis.Redis, key: str, oldest: float) -> tuple[int, int]:
    """(events after ``oldest``, milliseconds to live) of one sliding window."""
    pipe = client.pipeline(transaction=False)
    pipe.zcount(key, f"({oldest}", "+inf")
    pipe.pttl(key)
    count, ttl = pipe.execute()
    return int(count), int(ttl)


def forget(client: redis.Redis, *keys: str) -> int:
    """Delete the given keys; how many existed."""
    return int(client.delete(*keys)) if keys else 0


def forget_matching(client: redis.Redis, pattern: str) -> int:
    """Delete every key matching ``pattern`` (SCAN, never KEYS: the server is not blocked)."""
    found = []
    for key in client.scan_iter(match=pattern, count=1000):
        found.append(key)
        if len(found) >= MAX_UNLOCK_KEYS:
            break
    deleted = 0
    for start in range(0, len(found), 1000):
        deleted += int(client.delete(*found[start:start + 1000]))
    return deleted
