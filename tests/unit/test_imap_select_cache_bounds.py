"""The SelectCache's bound counts every entry, so many small mailboxes cannot grow it unbounded."""

from __future__ import annotations

from array import array

from postroom.store.entries import SelectCache, _Loaded


def _loaded(mailbox_id: int, messages: int) -> _Loaded:
    return _Loaded((mailbox_id, 1, messages + 1, messages), array("I", range(1, messages + 1)),
                   None, ())


def test_empty_mailboxes_are_kept_and_counted_by_their_entry_cost() -> None:
    cache = SelectCache(max_uids=10 * SelectCache.ENTRY_COST)
    for user in range(50):
        cache.put(user, "INBOX", _loaded(user, 0))
    kept = [user for user in range(50) if cache.get(user, "INBOX") is not None]
    assert kept == list(range(40, 50))  # the ten most recent; the others went first in, first out


def test_replacing_an_entry_releases_what_it_held() -> None:
    cache = SelectCache(max_uids=2 * (100 + SelectCache.ENTRY_COST))
    for _ in range(20):
        cache.put(1, "INBOX", _loaded(1, 100))
    cache.put(2, "INBOX", _loaded(2, 100))
    assert cache.get(1, "INBOX") is not None and cache.get(2, "INBOX") is not None


def test_a_mailbox_bigger_than_the_bound_is_not_kept() -> None:
    cache = SelectCache(max_uids=1_000)
    cache.put(1, "INBOX", _loaded(1, 1_000))
    assert cache.get(1, "INBOX") is None
