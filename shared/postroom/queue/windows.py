"""Sliding-window event logs in Redis: one sorted set per subject, scored by the event's time.

The failed-login limits (``postroom.auth.ratelimit``) keep one set per client
network and one per account. Every call blocks on the network and raises redis
errors: run it in a thread pool, never on the reactor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis


def counts_since(client: redis.Redis, keys: Sequence[str], oldest: float) -> list[int]:
    """How many events each set holds after ``oldest``, dropping older ones (one round trip)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.zremrangebyscore(key, "-inf", oldest)
        pipe.zcard(key)
    replies: list[Any] = pipe.execute()
    return [int(count) for count in replies[1::2]]


def record(client: redis.Redis, keys: Sequence[str], member: str, now: float, window: float,
           keep: int) -> None:
    """Add one event (a unique ``member`` at ``now``) to each set, atomically.

    Each set keeps only events younger than ``window`` seconds and at most the
    newest ``keep`` of them (bounded memory), and expires ``window`` after its
    last event.
    """
    ttl_ms = max(1, int(window * 1000))
    pipe = client.pipeline(transaction=True)
    for key in keys:
        pipe.zadd(key, {member: now})
        pipe.zremrangebyscore(key, "-inf", now - window)
        pipe.zremrangebyrank(key, 0, -(keep + 1))
        pipe.pexpire(key, ttl_ms)
    pipe.execute()


def forget(client: redis.Redis, key: str) -> None:
    """Drop every event of one set."""
    client.delete(key)
