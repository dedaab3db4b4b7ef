"""A short-lived in-process cache of successful password checks, like Dovecot's auth cache.

scrypt is deliberately slow (tens of milliseconds of CPU a check), and mail
clients log in again and again with the same password. The cache remembers
that ``(account, password)`` was right for ``ttl`` seconds, so a repeated
login skips the hash; the hashing itself is never weakened.

Nothing stored can give the password back: the key is the canonical account
(:func:`postroom.store.addresses.login_name`, as login resolution and the
failed-login limiter read it, so every spelling of one account shares its
entries) and HMAC-SHA256 of the password under a secret drawn at random when
the cache is made, which never leaves the process. A name that is no
account's is never cached. Any failed login for an account
drops its entries (the password may have just changed), the cache holds at
most ``max_entries`` (least recently used go first), and a password change
takes effect everywhere within ``ttl`` seconds at worst, the same trade-off
Dovecot's ``auth_cache_ttl`` makes. Thread-safe: MSA and POP3 may call it from
worker threads.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from postroom.store.addresses import login_name

T = TypeVar("T")

DEFAULT_TTL = 60.0
DEFAULT_MAX_ENTRIES = 10_000


class AuthCache(Generic[T]):
    """Successful logins by (account, keyed hash of password) -> the caller's account info."""

    def __init__(self, *, ttl: float = DEFAULT_TTL, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0 or max_entries <= 0:
            raise ValueError("ttl and max_entries must be positive")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        # key -> (expiry, info); insertion order doubles as least-recently-used order
        self._entries: OrderedDict[tuple[str, bytes], tuple[float, T]] = OrderedDict()

    def _key(self, account: str, password: str) -> tuple[str, bytes] | None:
        name = login_name(account)
        if name is None:
            return None
        digest = hmac.new(self._secret, password.encode("utf-8", "surrogatepass"),
                          hashlib.sha256).digest()
        return name, digest

    def get(self, account: str, password: str) -> T | None:
        """The info remembered for this account and password, or None (unknown or expired)."""
        key = self._key(account, password)
        if key is None:
            return None
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            if found[0] <= self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return found[1]

    def put(self, account: str, password: str, info: T) -> None:
        """Remember a login that the real check has just accepted."""
        key = self._key(account, password)
        if key is None:
            return
        with self._lock:
            self._entries[key] = (self._clock() + self.ttl, info)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def invalidate(self, account: str) -> None:
        """Forget every entry of ``account`` (called on any failed login for it)."""
        name = login_name(account)
        if name is None:
            return
        with self._lock:
            for key in [k for k in self._entries if k[0] == name]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
