"""postroom.ttlcache: the bounded expiring map the login and DKIM key caches are built on."""

from __future__ import annotations

import pytest

from postroom.ttlcache import TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_for_the_ttl_it_was_put_with() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(10, clock)
    cache.put("a", 1, 5)
    clock.now += 4.9
    assert cache.get("a") == 1
    clock.now += 0.1
    assert cache.get("a") is None
    assert len(cache) == 0  # an expired entry found is dropped


def test_the_least_recently_used_entry_goes_when_full() -> None:
    cache: TTLCache[str, int] = TTLCache(2, Clock())
    cache.put("a", 1, 60)
    cache.put("b", 2, 60)
    assert cache.get("a") == 1  # a is now more recent than b
    cache.put("c", 3, 60)
    assert sorted(cache) == ["a", "c"]


def test_discard_if_drops_only_the_keys_it_accepts() -> None:
    cache: TTLCache[tuple[str, int], str] = TTLCache(10, Clock())
    for key in (("u", 1), ("u", 2), ("v", 1)):
        cache.put(key, "x", 60)
    cache.discard_if(lambda key: key[0] == "u")
    assert list(cache) == [("v", 1)]


def test_a_cache_without_room_is_refused() -> None:
    with pytest.raises(ValueError):
        TTLCache(0, Clock())
