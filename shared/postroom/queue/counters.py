"""Counters in Redis that expire on their own: read several at once, bump several in one MULTI.

The msa's per-account sending limits keep one counter per fixed time bucket
(see ``postroom_msa.limits``); this module is their Redis side. Every call
blocks on the network and raises redis errors: run it in a thread pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis


def read(client: redis.Redis, keys: Sequence[str]) -> list[int]:
    """The counters' values in ``keys``' order (0 for a counter that does not exist)."""
    values: list[Any] = list(client.mget(list(keys)))  # type: ignore[arg-type]
    return [int(v) if v is not None else 0 for v in values]


def add(client: redis.Redis, increments: Sequence[tuple[str, int, int]]) -> None:
    """For each (key, amount, ttl seconds): add ``amount`` and expire after ``ttl``, atomically."""
    pipe = client.pipeline(transaction=True)
    queue_add(pipe, increments)
    pipe.execute()


def queue_add(pipe: Any, increments: Sequence[tuple[str, int, int]]) -> None:
    """:func:`add`'s commands queued on ``pipe`` (its caller's round trip), two per counter.

    On a plain pipeline (not a MULTI) a connection cut between an INCRBY and its
    EXPIRE can leave that counter without a TTL. Counters are named by their time
    bucket and read only while the bucket is current or previous, so such a key
    is never counted again: it costs memory until the next increment of the same
    bucket sets the TTL, not a wrong count.
    """
    for key, amount, ttl in increments:
        pipe.incrby(key, amount)
        pipe.expire(key, ttl)
