"""postroom.mailauth.keycache: the msa's per-domain DKIM key cache, with a clock of the test's."""

from __future__ import annotations

from postroom.mailauth.keycache import DkimKeyCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_at_most_its_ttl():
    clock = Clock()
    cache: DkimKeyCache[str] = DkimKeyCache(ttl=30, clock=clock)
    cache.put("Example.ORG", ("k1",), cache.generation)
    assert cache.get("example.org") == ("k1",)
    clock.now += 29.9
    assert cache.get("example.org") == ("k1",)
    clock.now += 0.1
    assert cache.get("example.org") is None


def test_a_dkim_announcement_forgets_everything_an_account_announcement_nothing():
    cache: DkimKeyCache[str] = DkimKeyCache(ttl=30, clock=Clock())
    cache.put("example.org", ("k1",), cache.generation)
    cache.put("sub.example.net", (), cache.generation)
    cache.invalidate("alice@example.org")
    assert cache.get("example.org") == ("k1",)
    cache.invalidate("@example.net")
    assert cache.get("example.org") is None
    assert cache.get("sub.example.net") is None


def test_a_read_that_raced_an_invalidation_is_not_kept():
    cache: DkimKeyCache[str] = DkimKeyCache(ttl=30, clock=Clock())
    generation = cache.generation  # the store is asked ...
    cache.invalidate("@example.org")  # ... a change is announced meanwhile
    cache.put("example.org", ("old",), generation)
    assert cache.get("example.org") is None


def test_no_ttl_no_caching():
    cache: DkimKeyCache[str] = DkimKeyCache(ttl=0, clock=Clock())
    cache.put("example.org", ("k1",), cache.generation)
    assert cache.get("example.org") is None


def test_the_oldest_entries_go_first_beyond_the_bound():
    cache: DkimKeyCache[str] = DkimKeyCache(ttl=30, max_entries=2, clock=Clock())
    for name in ("a.example", "b.example", "c.example"):
        cache.put(name, (name,), cache.generation)
    assert cache.get("a.example") is None
    assert cache.get("c.example") == ("c.example",)
