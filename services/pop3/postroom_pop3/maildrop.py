"""The POP3 maildrop over the store: login, the per-user Redis lock, the INBOX snapshot, RETR, QUIT.

The maildrop is the user's INBOX as it was at login (RFC 1939: message
numbers do not change during a session). A Redis lease on
``<prefix>pop3:lock:<user id>`` (``postroom.queue.locks``) is the lock: every pop3
replica honours it, the session refreshes it while it lives, and a session
that dies without releasing it loses it when the TTL runs out. QUIT expunges
the marked entries in one transaction that also advances the mailbox's
HIGHESTMODSEQ, then publishes a change event for IMAP sessions.

The SQL (the INBOX snapshot, one message, expunge) is ``postroom.store.maildrop``.
Blocking calls run in the ``db`` pool (:meth:`Database.run`) or the given
Redis thread pool, never on the reactor.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from postroom.auth import logincheck
from postroom.auth.ratelimit import LoginLocked, LoginRateLimiter, RateLimitUnavailable, admit
from postroom.interfaces import ReactorThreads, defer_to_pool, global_reactor, twisted_clock
from postroom.logs import get_logger
from postroom.metrics import Metrics, login_credentials_total
from postroom.queue import events, locks
from postroom.queue.redisclient import RedisClient, RedisError
from postroom.store import apppasswords
from postroom.store import maildrop as store_maildrop
from postroom.store.db import Database, DatabaseError, StoreSession
from postroom.store.maildrop import Snapshot, expunge_uids, load_snapshot
from postroom_pop3 import wire
from postroom_pop3.policy import (
    AppPasswordRequired,
    AuthFailed,
    DropMessage,
    LoginDelayed,
    MaildropInUse,
    MessageGone,
    TemporaryFailure,
)

log = get_logger("pop3")

T = TypeVar("T")

# a dead session's lock is gone after this long; a live one refreshes it every third of it
LOCK_TTL = 60.0

# --- store work (run in the db pool; plain data only crosses back)


def fetch_message(session: StoreSession, mailbox_id: int, uid: int) -> bytes | None:
    """The message under ``uid`` with CRLF line endings, or None when it was expunged."""
    data = store_maildrop.message_at(session, mailbox_id, uid)
    if data is None:
        return None
    # the store keeps CRLF (the SMTP servers normalise); this only guards older rows
    return wire.to_crlf(data)


# --- the Authority and Maildrop the protocol talks to


class StoreAuthority:
    """Logs users in against the store and hands out their locked INBOX snapshot."""

    def __init__(self, database: Database, redis_client: RedisClient, redis_pool: ThreadPool, *,
                 prefix: str, limiter: LoginRateLimiter | None,
                 reactor: ReactorThreads | None = None,
                 lock_ttl: float = LOCK_TTL, metrics: Metrics | None = None) -> None:
        self.credentials = login_credentials_total(metrics) if metrics is not None else None
        if reactor is None:
            reactor = global_reactor()
        self.database = database
        self.redis = redis_client
        self.redis_pool = redis_pool
        self.prefix = prefix
        self.limiter = limiter
        self.reactor = reactor
        self.lock_ttl = lock_ttl

    def in_redis_thread(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        return defer_to_pool(self.reactor, self.redis_pool, fn, *args)

    def lock_key(self, user_id: int) -> str:
        return f"{self.prefix}pop3:lock:{user_id}"

    def login(self, username: str, password: str, peer: str) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._login(username, password, peer))

    async def _login(self, username: str, password: str, peer: str) -> StoreMaildrop:
        if self.limiter is not None:
            try:
                # the pair's delay is waited here, on the reactor's clock, before scrypt
                await admit(self.limiter, self.reactor, self.in_redis_thread, peer, username)
            except RateLimitUnavailable:
                raise TemporaryFailure() from None
            except LoginLocked:
                raise LoginDelayed() from None
        try:
            # scrypt runs on the hash pool, outside any transaction (decision 0027); the main
            # password, or an app password allowed for POP3 (the only way in with two-factor
            # login on)
            login = await logincheck.authenticate(self.database, username, password,
                                               protocol="pop3", peer=peer)
        except DatabaseError as exc:
            log.error("authentication lookup failed", error=str(exc))
            raise TemporaryFailure() from None
        if self.credentials is not None and login.credential is not None:
            self.credentials.labels(credential=login.credential).inc()
        user = login.user
        if user is None:
            if self.limiter is not None:
                await self.in_redis_thread(self.limiter.record_failure, peer, username)
            if login.refusal == apppasswords.TWO_FACTOR_REFUSAL:
                raise AppPasswordRequired()
            raise AuthFailed()
        if self.limiter is not None:
            if self.limiter.needs_reset(peer, username):
                await self.in_redis_thread(self.limiter.reset, peer, username)
        token = secrets.token_hex(16)
        key = self.lock_key(user.id)
        try:
            acquired = await self.in_redis_thread(self._acquire, key, token)
        except RedisError as exc:
            log.warning("maildrop lock failed", error=str(exc), user=user.address)
            raise TemporaryFailure() from None
        if not acquired:
            raise MaildropInUse()
        try:
            snapshot = await self.database.run(load_snapshot, user.id)
        except Exception as exc:
            log.error("maildrop snapshot failed", error=str(exc), user=user.address)
            await self.in_redis_thread(self._release_quietly, key, token)
            if isinstance(exc, DatabaseError):
                raise TemporaryFailure() from None
            raise
        drop = StoreMaildrop(self, snapshot, key, token, user.address)
        drop.start_refreshing()
        return drop

    def _acquire(self, key: str, token: str) -> bool:
        return locks.acquire(self.redis, key, token, self.lock_ttl)

    def _refresh(self, key: str, token: str) -> bool:
        return locks.refresh(self.redis, key, token, self.lock_ttl)

    def _release_quietly(self, key: str, token: str) -> None:
        try:
            locks.release(self.redis, key, token)
        except RedisError as exc:
            # the TTL will free it; a new login waits at most LOCK_TTL
            log.warning("maildrop unlock failed", error=str(exc))

    def _publish(self, mailbox_id: int, uids: list[int], modseq: int) -> None:
        event = events.ChangeEvent(events.EXPUNGE, mailbox_id, "pop3", modseq=modseq,
                                   uids=tuple(uids))
        try:
            events.publish(self.redis, self.prefix, event)
        except RedisError as exc:
            # a signal only: IMAP sessions also see the change at their next poll of the store
            log.warning("change event not published", error=str(exc), mailbox_id=mailbox_id)


class StoreMaildrop:
    """One session's locked snapshot of a user's INBOX."""

    def __init__(self, authority: StoreAuthority, snapshot: Snapshot, lock_key: str,
                 token: str, address: str) -> None:
        self.authority = authority
        self.snapshot = snapshot
        self.lock_key = lock_key
        self.token = token
        self.address = address
        self.messages: list[DropMessage] = [
            DropMessage(uid=uid, size=size, unique_id=snapshot.uidl(uid))
            for uid, size in snapshot.entries]
        self.released = False
        self._refresher: LoopingCall | None = None

    def start_refreshing(self) -> None:
        loop = LoopingCall(self._refresh)
        loop.clock = twisted_clock(self.authority.reactor)
        self._refresher = loop
        loop.start(self.authority.lock_ttl / 3, now=False).addErrback(self._refresh_stopped)

    def _refresh(self) -> Deferred[None]:
        d = self.authority.in_redis_thread(self.authority._refresh, self.lock_key, self.token)

        def checked(held: bool) -> None:
            if not held and not self.released:
                log.warning("maildrop lock lost", user=self.address)

        def failed(failure: Failure) -> None:
            # keep the session: Redis may be back before the TTL runs out
            log.warning("maildrop lock refresh failed", error=failure.getErrorMessage())

        return d.addCallbacks(checked, failed)

    def _refresh_stopped(self, failure: Failure) -> None:
        log.error("maildrop lock refresher stopped", error=failure.getErrorMessage())

    def retrieve(self, index: int) -> Deferred[bytes]:
        if self.snapshot.mailbox_id is None:
            raise IndexError(index)
        uid = self.messages[index].uid

        def got(data: bytes | None) -> bytes:
            if data is None:
                raise MessageGone()
            if len(data) != self.messages[index].size:
                log.warning("stored size differs from sent size", uid=uid,
                            listed=self.messages[index].size, sent=len(data))
            return data

        d: Deferred[Any] = self.authority.database.run(fetch_message, self.snapshot.mailbox_id,
                                                       uid)
        return d.addCallback(got)

    def commit(self, deleted: Sequence[int]) -> Deferred[int]:
        mailbox_id = self.snapshot.mailbox_id
        uids = [self.messages[i].uid for i in deleted]
        if mailbox_id is None or not uids:
            return succeed(0)
        return Deferred.fromCoroutine(self._commit(mailbox_id, uids))

    async def _commit(self, mailbox_id: int, uids: list[int]) -> int:
        removed, modseq = await self.authority.database.run(expunge_uids, mailbox_id, uids)
        log.info("messages expunged", user=self.address, mailbox_id=mailbox_id,
                 requested=len(uids), removed=len(removed), modseq=modseq)
        if removed:
            await self.authority.in_redis_thread(self.authority._publish, mailbox_id, removed,
                                                 modseq)
        return len(removed)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()
        self._refresher = None
        d = self.authority.in_redis_thread(self.authority._release_quietly, self.lock_key,
                                           self.token)
        d.addErrback(lambda f: log.warning("maildrop unlock failed",
                                           error=f.getErrorMessage()))
