"""A bounded map whose entries expire: the core of the per-process caches (pure, no lock).

Each entry lives for the TTL it was put with; once full, the least recently
used goes first. It holds no lock of its own: the cache around it
(:class:`postroom.auth.authcache.AuthCache`,
:class:`postroom.mailauth.keycache.DkimKeyCache`,
:class:`postroom_web.dmarc.sources.SourceNames`) calls it under its own, so it
can check something else under that same lock (an invalidation ticket, a
generation) before it inserts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """key -> value, each for its TTL at most, at most ``max_entries`` of them (least
    recently used go first). Not thread-safe: the owner holds its lock around every call."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self._clock = clock
        # key -> (expiry, value); insertion order doubles as least-recently-used order
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value remembered for ``key``, or None (never put, expired or dropped)."""
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        """Remember ``value`` for ``ttl`` seconds, dropping the least recently used when
        full."""
        self._entries[key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def discard_if(self, predicate: Callable[[K], bool]) -> None:
        """Drop every entry whose key ``predicate`` accepts."""
        for key in [k for k in self._entries if predicate(k)]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()

    def items(self) -> list[tuple[K, V]]:
        """Every entry still held (expired ones included), least recently used first."""
        return [(key, found[1]) for key, found in self._entries.items()]

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
