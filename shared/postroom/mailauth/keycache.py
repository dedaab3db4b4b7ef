"""The msa's per-process cache of each sender domain's DKIM signing keys.

Every submitted message needs the active keys of its From: domain (or of its
nearest parent that has any). They change only when an operator generates,
rotates, activates, retires or re-encrypts keys, so the msa remembers the
answer per domain for ``ttl`` seconds and forgets it:

* at once when the change is announced: ``postroom dkim ...`` and the web
  console publish ``@<domain>`` on the credentials channel after their commit
  (:func:`postroom.queue.authevents.publish_dkim`), and the msa's one
  listener (:class:`postroom.auth.authcache.CacheInvalidation`) calls
  :meth:`DkimKeyCache.invalidate`, which drops every entry (key changes are
  rare; a subdomain's entry may hold its parent's keys);
* whenever that listener (re)subscribes (anything announced meanwhile is lost);
* at worst ``ttl`` seconds after it was read (Redis away: the announcement
  never arrives).

The loaded private keys are cached beside (``postroom.secretbox.Keyring.
open_cached`` and ``postroom.mailauth.dkimsign``'s LRU, both keyed by the
stored text), so a message served from here neither queries the store nor
opens or parses a key. Thread-safe; the values are the caller's (immutable)
lists.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from postroom.ttlcache import TTLCache

T = TypeVar("T")

DEFAULT_TTL = 30.0
DEFAULT_MAX_ENTRIES = 10_000


class DkimKeyCache(Generic[T]):
    """domain -> the keys that sign its mail, each entry for at most ``ttl`` seconds."""

    def __init__(self, *, ttl: float = DEFAULT_TTL, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        # ttl <= 0: no caching (every message reads the store)
        self.ttl = ttl
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: TTLCache[str, tuple[T, ...]] = TTLCache(max_entries, clock)
        # bumped by every invalidation: a read that started before one is not stored
        self._generation = 0

    @property
    def generation(self) -> int:
        """Read before asking the store; pass to :meth:`put` (a read racing an invalidation
        is not kept)."""
        return self._generation

    def get(self, domain: str) -> tuple[T, ...] | None:
        """The keys remembered for ``domain``, or None (never read, expired or forgotten)."""
        if self.ttl <= 0:
            return None
        with self._lock:
            return self._entries.get(domain.lower())

    def put(self, domain: str, keys: tuple[T, ...], generation: int) -> None:
        """Remember what the store said for ``domain``, unless an invalidation came since
        ``generation`` was read."""
        if self.ttl <= 0:
            return
        with self._lock:
            if generation != self._generation:
                return
            self._entries.put(domain.lower(), keys, self.ttl)

    def invalidate(self, subject: str) -> None:
        """An announcement on the credentials channel: ``@domain`` (DKIM keys changed)
        forgets every entry; an account's address is not ours."""
        if subject.startswith("@"):
            self.clear()

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
