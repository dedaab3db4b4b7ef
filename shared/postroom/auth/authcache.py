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

A login is checked against what it read (decision 0027), so a login that read
the account before a password change committed verifies the *old* password;
if it finished after the change's announcement had emptied the cache, its
``put`` would bring the old password back for a whole TTL. So every ``put``
carries a :class:`Ticket` taken *before* the login read the account
(:func:`postroom.auth.logincheck.authenticate` takes it), and is skipped when
the account was invalidated (or the cache cleared) since: checked and stored
under the lock that :meth:`AuthCache.invalidate` holds, so a put either lands
before the invalidation (and is dropped by it) or sees it (and is skipped).

The generation is kept per slot of a fixed table (:data:`TICKET_SLOTS`), an
account's slot chosen by the process's randomised string hash: memory is
bounded whatever the number of accounts, nothing has to be evicted (an
evicted per-account counter would start again and let an old ticket match),
and an invalidation only spoils the in-flight puts of the accounts sharing its
slot (they are checked again next time). Not one global counter: every failed
login invalidates, so anyone guessing passwords for any account would keep
every other login from being remembered, turning the limiter-bounded failures
into a scrypt check for everybody.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from postroom.logs import get_logger
from postroom.queue import authevents, loginshare
from postroom.queue.redisclient import RedisClient, RedisError
from postroom.store.addresses import login_name
from postroom.ttlcache import TTLCache

log = get_logger("auth")

T = TypeVar("T")

DEFAULT_TTL = 60.0
DEFAULT_MAX_ENTRIES = 10_000
#: generation counters per cache (see the module docstring): 4 KiB of pointers
TICKET_SLOTS = 1024


class Ticket(NamedTuple):
    """An account's invalidation generation, read before its login read the account."""

    slot: int
    generation: int


class AuthCache(Generic[T]):
    """Successful logins by (account, keyed hash of password) -> the caller's account info."""

    def __init__(self, *, ttl: float = DEFAULT_TTL, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic,
                 secret: bytes | None = None) -> None:
        if ttl <= 0 or max_entries <= 0:
            raise ValueError("ttl and max_entries must be positive")
        self.ttl = ttl
        self.max_entries = max_entries
        # the workers of one process group share theirs (SharedLogins); else drawn here
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        # held around every use of the entries, and by the ticket check before a put
        self._lock = threading.Lock()
        self._entries: TTLCache[tuple[str, bytes], T] = TTLCache(max_entries, clock)
        # moved by every invalidate (the account's slot) and clear (all of them)
        self._generations = [0] * TICKET_SLOTS

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
            return self._entries.get(key)

    def mac(self, account: str, password: str) -> tuple[str, bytes] | None:
        """(canonical account, keyed hash of ``password``): what an entry is found by."""
        return self._key(account, password)

    @staticmethod
    def _slot(name: str | None) -> int:
        return hash(name) % TICKET_SLOTS if name is not None else 0

    def ticket(self, account: str) -> Ticket:
        """Take before the login reads the account; pass to :meth:`put`."""
        slot = self._slot(login_name(account))
        with self._lock:
            return Ticket(slot, self._generations[slot])

    def current(self, account: str, ticket: Ticket) -> bool:
        """Whether ``account`` was neither invalidated nor cleared since ``ticket``."""
        with self._lock:
            return self._current(login_name(account), ticket)

    def _current(self, name: str | None, ticket: Ticket) -> bool:
        # a ticket of another slot is another account's: never good for this one
        return (name is not None and ticket.slot == self._slot(name)
                and self._generations[ticket.slot] == ticket.generation)

    def put(self, account: str, password: str, info: T, *, ticket: Ticket,
            ttl: float | None = None) -> bool:
        """Remember a login that the real check has just accepted (for ``ttl`` seconds at
        most: the cache's own TTL), unless the account was invalidated since ``ticket``
        was taken; whether it was remembered."""
        key = self._key(account, password)
        if key is None:
            return False
        ttl = self.ttl if ttl is None else min(ttl, self.ttl)
        if ttl <= 0:
            return False
        with self._lock:
            if not self._current(key[0], ticket):
                return False
            self._entries.put(key, info, ttl)
            return True

    def invalidate(self, account: str) -> None:
        """Forget every entry of ``account`` and spoil its outstanding tickets (called on
        any failed login for it, and for an announced change)."""
        name = login_name(account)
        if name is None:
            return
        with self._lock:
            self._generations[self._slot(name)] += 1
            self._entries.discard_if(lambda key: key[0] == name)

    def clear(self) -> None:
        """Forget every entry and spoil every ticket (the invalidation listener lost and
        regained Redis)."""
        with self._lock:
            self._generations = [g + 1 for g in self._generations]
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class SharedLookup(Generic[T]):
    """A login's look-up in its group's shared entries (:meth:`SharedLogins.find`)."""

    info: T | None  # another worker verified the password: the account's info
    generation: str | None  # the account's forget counter then (None: Redis failed)
    at: float  # when (wall clock)


class SharedLogins(Generic[T]):
    """The verified logins of one process group's workers, shared through Redis.

    Around one worker's :class:`AuthCache` (made with the group's key as its
    secret, so every worker computes the same keyed hash of a password): a
    login its cache misses is looked up in the group's entry for the account
    (postroom.queue.loginshare) before scrypt is run, and a password it has
    checked is stored there for the others. A hit is remembered locally for
    what is left of the entry's TTL only, so a verification is trusted for
    ``ttl`` seconds at most in any worker, as with one process. Every method
    blocks (a Redis call): run them in the Redis thread pool. Redis errors are
    a miss (``get``) or logged (the rest): the entries are only a cache. Also
    an :class:`Invalidated` cache for :class:`CacheInvalidation`: an announced
    credential change drops the account's entry.

    A login that verified an old password (it read the account before the
    change committed) must not leave it here either (see the module
    docstring). Every worker's listener, on the announcement, spoils the
    account's local tickets, deletes the shared entry, and spoils them again
    (:meth:`invalidate`). :meth:`put` stores only with a ticket still good,
    and since the Redis write is not atomic with that check, checks the ticket
    again after storing and deletes the entry when it moved in between
    (store, then re-check). So a stale login's entry cannot outlive its own
    worker's listener: stored before that listener's delete, the delete
    removes it; stored after, the first spoiling came before the store, so
    the re-check sees it. Nor can another worker keep it: stored before that
    worker's listener processed the announcement, that listener's delete
    removes it, and a copy the worker took into its own cache (:meth:`get`,
    ticket taken before the Redis read, so before the delete and the second
    spoiling) is refused or dropped. That leaves a worker whose listener has
    processed the announcement reading an entry that another worker, whose
    listener has not yet, stored in between: Redis closes that one. The
    login's lookup (:meth:`find`, before the check) reads the account's
    forget counter with the entry, and the put stores only while it is
    unchanged (postroom.queue.loginshare), so once any worker's listener has
    deleted the entry, no login looked up before can store it again. (The
    local steps above still hold should Redis lose the counter, evicted under
    memory pressure; only this cross-worker case then depends on it.)
    """

    def __init__(self, cache: AuthCache[T], client: RedisClient, prefix: str,
                 group_key: bytes, encode: Callable[[T], str],
                 decode: Callable[[str], T], *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.client = client
        self.prefix = prefix
        self._group_key = group_key
        self._encode = encode
        self._decode = decode
        self._wall_clock = wall_clock

    def get(self, account: str, password: str) -> T | None:
        """The account's info when another worker verified this password within the TTL."""
        return self.find(account, password).info

    def find(self, account: str, password: str) -> SharedLookup[T]:
        """:meth:`get`'s answer, and what :meth:`put` needs should the login be checked here
        (look up before checking)."""
        at = self._wall_clock()
        found = self.cache.mac(account, password)
        if found is None:
            return SharedLookup(None, None, at)
        name, mac = found
        # before the read: an entry deleted by an announcement while we read is not kept
        ticket = self.cache.ticket(account)
        try:
            payload, generation = loginshare.lookup(self.client, self.prefix,
                                                    self._group_key, name, mac)
        except RedisError as exc:
            log.warning("shared login lookup failed", error=str(exc))
            return SharedLookup(None, None, at)
        return SharedLookup(self._remember(account, password, payload, ticket), generation,
                            at)

    def _remember(self, account: str, password: str, payload: str | None,
                  ticket: Ticket) -> T | None:
        if payload is None:
            return None
        expires, sep, encoded = payload.partition(" ")
        try:
            left = float(expires) - self._wall_clock()
            info = self._decode(encoded) if sep else None
        except (ValueError, TypeError, KeyError):
            return None
        if info is None or left <= 0:
            return None
        if not self.cache.put(account, password, info, ticket=ticket, ttl=left):
            return None
        return info

    def put(self, account: str, password: str, info: T, ticket: Ticket,
            looked: SharedLookup[T]) -> None:
        """Share a login this worker's real check has just accepted: ``ticket`` taken and
        ``looked`` up before it read the account (see the class docstring)."""
        found = self.cache.mac(account, password)
        if (found is None or looked.generation is None
                or self._wall_clock() - looked.at > self.cache.ttl
                or not self.cache.current(account, ticket)):
            return
        name, mac = found
        ttl = self.cache.ttl
        payload = f"{self._wall_clock() + ttl:.3f} {self._encode(info)}"
        try:
            stored = loginshare.store(self.client, self.prefix, self._group_key, name, mac,
                                      payload, ttl, looked.generation)
            if stored and not self.cache.current(account, ticket):
                loginshare.forget(self.client, self.prefix, self._group_key, name,
                              2 * self.cache.ttl)
        except RedisError as exc:
            log.warning("shared login not stored", error=str(exc))

    def invalidate(self, account: str) -> None:
        """Drop the account's shared entry and spoil its tickets before and after (a failed
        login, an announced change; see the class docstring)."""
        name = login_name(account)
        if name is None:
            return
        # (the spoiling before the delete matters only if Redis lost the forget counter)
        self.cache.invalidate(account)
        try:
            loginshare.forget(self.client, self.prefix, self._group_key, name,
                              2 * self.cache.ttl)
        except RedisError as exc:
            log.warning("shared login not dropped", error=str(exc))
        self.cache.invalidate(account)

    def clear(self) -> None:
        """Drop every shared entry and every local one and ticket, before and after (the
        invalidation listener was away from Redis)."""
        self.cache.clear()
        try:
            loginshare.forget_all(self.client, self.prefix)
        except RedisError as exc:
            log.warning("shared logins not dropped", error=str(exc))
        self.cache.clear()


class Invalidated(Protocol):
    """A cache the listener serves: an :class:`AuthCache`, or the msa's DKIM key cache
    (postroom.mailauth.keycache), which reads the ``@domain`` announcements."""

    def invalidate(self, subject: str, /) -> None: ...

    def clear(self) -> None: ...


class CacheInvalidation:
    """One thread per process: listens for credential (and DKIM key) changes and drops the
    entries concerned from every cache it serves (see the module docstring)."""

    RETRY_SECONDS = 2.0

    def __init__(self, client: RedisClient, prefix: str, caches: list[Invalidated], *,
                 metrics: Any = None) -> None:
        self.client = client
        self.prefix = prefix
        self.caches = caches
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter = None
        if metrics is not None:
            from postroom.metrics import auth_cache_invalidations_total

            self._counter = auth_cache_invalidations_total(metrics)
        # set once subscribed (tests wait for it before announcing)
        self.subscribed = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="auth-invalidation",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _count(self, reason: str) -> None:
        if self._counter is not None:
            self._counter.labels(reason=reason).inc()

    def forget(self, address: str) -> None:
        for cache in self.caches:
            cache.invalidate(address)
        if authevents.is_dkim_subject(address):
            self._count("dkim_keys")
            log.info("cached dkim keys forgotten", domain=address[1:254])
            return
        self._count("announced")
        log.info("cached logins forgotten", account=address[:254])

    def _subscribed(self) -> None:
        # anything announced while we were not listening could be missed: start afresh
        for cache in self.caches:
            cache.clear()
        self._count("resubscribed")
        self.subscribed.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                authevents.listen(self.client, self.prefix, self._stop, self.forget,
                                  on_subscribed=self._subscribed)
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("credential change listener lost redis", error=str(exc))
                self._stop.wait(self.RETRY_SECONDS)
