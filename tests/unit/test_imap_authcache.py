"""postroom.auth.authcache: the in-process cache of successful password checks."""

from __future__ import annotations

import pytest

from postroom.auth.authcache import AuthCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_remembered_login_is_found_with_the_same_password() -> None:
    cache: AuthCache[int] = AuthCache()
    cache.put("u@example.org", "secret", 7, ticket=cache.ticket("u@example.org"))
    assert cache.get("u@example.org", "secret") == 7


def test_another_password_is_not_found() -> None:
    cache: AuthCache[int] = AuthCache()
    cache.put("u@example.org", "secret", 7, ticket=cache.ticket("u@example.org"))
    assert cache.get("u@example.org", "Secret") is None


def test_account_names_are_compared_without_case() -> None:
    cache: AuthCache[int] = AuthCache()
    cache.put("U@Example.org", "secret", 7, ticket=cache.ticket("U@Example.org"))
    assert cache.get("u@example.ORG", "secret") == 7


def test_an_entry_expires_after_the_ttl() -> None:
    clock = FakeClock()
    cache: AuthCache[int] = AuthCache(ttl=60, clock=clock)
    cache.put("u@example.org", "secret", 7, ticket=cache.ticket("u@example.org"))
    clock.now += 59.9
    assert cache.get("u@example.org", "secret") == 7
    clock.now += 0.2
    assert cache.get("u@example.org", "secret") is None
    assert len(cache) == 0


def test_a_failure_forgets_every_entry_of_the_account() -> None:
    cache: AuthCache[int] = AuthCache()
    cache.put("u@example.org", "old", 7, ticket=cache.ticket("u@example.org"))
    cache.put("other@example.org", "old", 8, ticket=cache.ticket("other@example.org"))
    cache.invalidate("U@example.org")
    assert cache.get("u@example.org", "old") is None
    assert cache.get("other@example.org", "old") == 8


def test_the_least_recently_used_entry_goes_when_full() -> None:
    cache: AuthCache[int] = AuthCache(max_entries=2)
    cache.put("a@x", "p", 1, ticket=cache.ticket("a@x"))
    cache.put("b@x", "p", 2, ticket=cache.ticket("b@x"))
    assert cache.get("a@x", "p") == 1  # a is now more recent than b
    cache.put("c@x", "p", 3, ticket=cache.ticket("c@x"))
    assert len(cache) == 2
    assert cache.get("b@x", "p") is None
    assert cache.get("a@x", "p") == 1 and cache.get("c@x", "p") == 3


def test_the_password_is_not_kept_in_the_cache() -> None:
    cache: AuthCache[int] = AuthCache()
    cache.put("u@example.org", "hunter2-very-secret", 7, ticket=cache.ticket("u@example.org"))
    stored = repr(cache._entries.items()).encode() + b"".join(k[1] for k in cache._entries)
    assert b"hunter2" not in stored


def test_two_caches_key_the_same_password_differently() -> None:
    one: AuthCache[int] = AuthCache()
    two: AuthCache[int] = AuthCache()
    assert one._key("u@x", "p") != two._key("u@x", "p")


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        AuthCache(ttl=0)
    with pytest.raises(ValueError):
        AuthCache(max_entries=0)


def test_clear_forgets_every_account() -> None:
    cache: AuthCache[int] = AuthCache()
    cache.put("u@example.org", "secret", 7, ticket=cache.ticket("u@example.org"))
    cache.put("v@example.org", "other", 8, ticket=cache.ticket("v@example.org"))
    cache.clear()
    assert len(cache) == 0 and cache.get("v@example.org", "other") is None


def test_an_announced_change_drops_only_that_account() -> None:
    from postroom.auth.authcache import CacheInvalidation

    first: AuthCache[int] = AuthCache()
    second: AuthCache[int] = AuthCache()
    for cache in (first, second):
        cache.put("u@example.org", "secret", 7, ticket=cache.ticket("u@example.org"))
        cache.put("v@example.org", "other", 8, ticket=cache.ticket("v@example.org"))
    # forget() is what the listener thread calls for each announcement
    CacheInvalidation(None, "p:", [first, second]).forget("U@Example.org")  # type: ignore[arg-type]
    for cache in (first, second):
        assert cache.get("u@example.org", "secret") is None
        assert cache.get("v@example.org", "other") == 8


# --- tickets: a login that read the account before a change does not put it back

def test_a_login_whose_account_was_invalidated_since_its_ticket_is_not_remembered() -> None:
    cache: AuthCache[int] = AuthCache()
    ticket = cache.ticket("u@example.org")  # taken before the login reads the account
    cache.invalidate("U@Example.org")  # the password changed and was announced meanwhile
    assert not cache.put("u@example.org", "old", 7, ticket=ticket)
    assert cache.get("u@example.org", "old") is None
    # the next login's ticket is good again
    assert cache.put("u@example.org", "new", 7, ticket=cache.ticket("u@example.org"))
    assert cache.get("u@example.org", "new") == 7


def test_a_ticket_with_no_invalidation_since_is_remembered() -> None:
    cache: AuthCache[int] = AuthCache()
    ticket = cache.ticket("u@example.org")
    assert cache.current("u@example.org", ticket)
    assert cache.put("u@example.org", "secret", 7, ticket=ticket)
    assert cache.get("u@example.org", "secret") == 7


def test_clear_spoils_every_outstanding_ticket() -> None:
    cache: AuthCache[int] = AuthCache()
    tickets = {name: cache.ticket(name) for name in ("u@example.org", "v@example.org")}
    cache.clear()
    for name, ticket in tickets.items():
        assert not cache.put(name, "secret", 7, ticket=ticket)
    assert len(cache) == 0


def test_another_accounts_ticket_or_invalidation_does_not_count() -> None:
    cache: AuthCache[int] = AuthCache()
    names = (f"user{i}@example.org" for i in range(10_000))
    mine = "u@example.org"
    other = next(n for n in names if cache.ticket(n).slot != cache.ticket(mine).slot)
    ticket = cache.ticket(mine)
    cache.invalidate(other)
    assert not cache.put(other, "secret", 8, ticket=ticket)  # not the account's own ticket
    assert cache.put(mine, "secret", 7, ticket=ticket)  # another slot's invalidation
