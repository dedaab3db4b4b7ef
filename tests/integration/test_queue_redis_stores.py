"""The Redis stores services call through postroom.queue: leases, counters, the cache, greylist."""

from __future__ import annotations

import time

import redis

from postroom.queue import cache, counters, locks
from postroom.queue.greylist import PASS_TTL, RETRY_WINDOW, check_triplet, triplet_key


def test_a_lease_is_held_by_one_token_until_released(redis_client: redis.Redis,
                                                      redis_prefix: str) -> None:
    key = f"{redis_prefix}lease"
    assert locks.acquire(redis_client, key, "a", 30)
    assert not locks.acquire(redis_client, key, "b", 30)
    assert locks.refresh(redis_client, key, "a", 60) and redis_client.pttl(key) > 30_000
    assert not locks.refresh(redis_client, key, "b", 60)
    locks.release(redis_client, key, "b")  # not the holder: nothing happens
    assert redis_client.get(key) == "a"
    locks.release(redis_client, key, "a")
    assert locks.acquire(redis_client, key, "b", 30)


def test_a_lease_lapses_after_its_ttl(redis_client: redis.Redis, redis_prefix: str) -> None:
    key = f"{redis_prefix}lease"
    assert locks.acquire(redis_client, key, "a", 0.05)
    redis_client.pexpire(key, 1)
    time.sleep(0.05)
    assert locks.acquire(redis_client, key, "b", 30)
    assert not locks.refresh(redis_client, key, "a", 30)


def test_counters_add_together_and_expire(redis_client: redis.Redis, redis_prefix: str) -> None:
    one, two = f"{redis_prefix}c1", f"{redis_prefix}c2"
    assert counters.read(redis_client, [one, two]) == [0, 0]
    counters.add(redis_client, [(one, 1, 100), (two, 5, 200)])
    counters.add(redis_client, [(one, 1, 100), (two, 5, 200)])
    assert counters.read(redis_client, [two, one]) == [10, 2]
    assert 0 < redis_client.ttl(one) <= 100 and 100 < redis_client.ttl(two) <= 200


def test_the_cache_keeps_a_value_for_its_ttl(redis_client: redis.Redis, redis_prefix: str) -> None:
    key = f"{redis_prefix}cached"
    assert cache.get(redis_client, key) is None
    cache.put(redis_client, key, '{"x": 1}', 50)
    assert cache.get(redis_client, key) == '{"x": 1}'
    assert 0 < redis_client.ttl(key) <= 50


def test_a_triplet_passes_only_when_retried_after_the_delay(redis_client: redis.Redis,
                                                             redis_prefix: str) -> None:
    key = triplet_key(redis_prefix, "192.0.2.7", "a@remote.test", "b@example.test")
    assert key == triplet_key(redis_prefix, "192.0.2.99", "A@remote.test", "b@example.test")
    assert not check_triplet(redis_client, key, 300, now=1000.0)
    assert 0 < redis_client.ttl(key) <= RETRY_WINDOW
    assert not check_triplet(redis_client, key, 300, now=1100.0)
    assert check_triplet(redis_client, key, 300, now=1400.0)
    assert RETRY_WINDOW < redis_client.ttl(key) <= PASS_TTL
