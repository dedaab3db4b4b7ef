"""The store-backed Accounts and UserStore: mailstore queries on the `db` pool, events on Redis.

Change events: every process listens on ``<prefix>mailbox:*`` with one Redis
pub/sub connection in one thread (:class:`ChangeListener`), and wakes the
sessions that watch the mailbox named in the channel. Sessions publish after
each change they commit. Events are only a signal: a session asks the store
what changed (``mailstore.changes``), so a lost event delays, never loses, an
update.

The process's own events do not take the Redis round trip back to it: the
publishing thread hands them to the process's watchers with the command's
result (``UserStoreImpl._db_publishing``, then :meth:`ChangeListener.notify`), and
each is published with the
process's origin id, whose echo the listener thread drops before decoding it
(decision 0037). Other processes get every event as before.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from postroom.auth import logincheck
from postroom.auth.authcache import AuthCache, SharedLogins, SharedLookup, Ticket
from postroom.auth.ratelimit import LoginLocked, LoginRateLimiter, RateLimitUnavailable, admit
from postroom.auth.sasl import ScramSecrets
from postroom.interfaces import ReactorThreads, defer_to_pool
from postroom.logs import get_logger
from postroom.metrics import Metrics, login_credentials_total
from postroom.queue import events, learning
from postroom.queue.redisclient import RedisClient, RedisError
from postroom.store import apppasswords, imap_metadata, users
from postroom.store.db import UNAVAILABLE, Database
from postroom_imap import catenate, mailstore
from postroom_imap.ordering import SortItem
from postroom_imap.policy import (
    AuthFailed,
    Changes,
    CopyResult,
    FetchRow,
    LoginDelayed,
    MailboxRow,
    MailboxStatus,
    NewMessage,
    NoSuchMailbox,
    OwnChange,
    Quota,
    SelectState,
    StoreResult,
    Unavailable,
)
from postroom_imap.syntax_types import SearchKey

log = get_logger("imap")
# the POSTROOM_IMAP_METADATA_* defaults, for factories built without settings (tests)
DEFAULT_METADATA_LIMITS = imap_metadata.Limits(max_size=16 * 1024, max_entries=100,
                                               max_total=1024 * 1024)


# how many mailboxes' latest announced modseq a listener remembers (ChangeListener.latest)
LATEST_KEPT = 4096


class ChangeListener:
    """One pub/sub subscription per process, fanned out to watching sessions on the reactor."""

    def __init__(self, client: RedisClient, prefix: str, reactor: ReactorThreads) -> None:
        self.client = client
        self.prefix = prefix
        self.reactor = reactor
        self.watchers: dict[int, list[Callable[..., None]]] = {}
        # this process's events carry it; their echo is dropped unread (events.origin_prefix)
        self.origin = f"imap-{os.getpid()}-{secrets.token_hex(4)}"
        self._skip = events.origin_prefix(self.origin)
        # mailbox id -> the highest modseq an event announced (on the reactor): a session
        # that starts watching with an older view learns of the change it missed (watch)
        self.latest: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="imap-changes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def watch(self, mailbox_id: int, callback: Callable[..., None],
              known: int | None = None) -> Callable[[], None]:
        """Call ``callback`` on every event for ``mailbox_id``; returns unwatch.

        ``known``: the watcher's view's HIGHESTMODSEQ. An event announced a
        higher one before the watch began (its view was read before that
        change's COMMIT, and the event came first: a change of this same
        process is delivered without the Redis round trip), so the callback
        is called with it at once.
        """
        self.watchers.setdefault(mailbox_id, []).append(callback)
        if known is not None:
            seen = self.latest.get(mailbox_id)
            if seen is not None and seen > known:
                callback(seen)

        def unwatch() -> None:
            callbacks = self.watchers.get(mailbox_id, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self.watchers.pop(mailbox_id, None)

        return unwatch

    def notify(self, mailbox_id: int, modseq: int | None = None) -> None:
        """On the reactor: wake every session watching ``mailbox_id``.

        ``modseq`` is the event's new HIGHESTMODSEQ when it says (IMAP and MDA
        events do): a session that already knows it need not look.
        """
        if modseq is not None:
            latest = self.latest
            if modseq > latest.get(mailbox_id, 0):
                if mailbox_id not in latest and len(latest) >= LATEST_KEPT:
                    del latest[next(iter(latest))]  # the oldest entry: long since watched
                latest[mailbox_id] = modseq
        for callback in list(self.watchers.get(mailbox_id, [])):
            try:
                if modseq is None:
                    callback()
                else:
                    callback(modseq)
            except Exception as exc:  # one broken session must not starve the others
                log.exception("change callback failed", exc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                events.listen(self.client, self.prefix, self._stop, self._from_thread,
                              skip=self._skip)
            except (RedisError, OSError) as exc:
                log.warning("change listener lost redis", error=str(exc))
                self._stop.wait(2.0)

    def _from_thread(self, mailbox_id: int, modseq: int | None) -> None:
        self.reactor.callFromThread(self.notify, mailbox_id, modseq)


class StoreAccounts:
    """Accounts over the store, with the shared failed-login limits in Redis."""

    def __init__(self, database: Database, client: RedisClient, redis_pool: ThreadPool, *,
                 prefix: str, limiter: LoginRateLimiter | None, listener: ChangeListener,
                 reactor: ReactorThreads, auth_cache: AuthCache[users.UserInfo] | None = None,
                 shared_logins: SharedLogins[users.UserInfo] | None = None,
                 cpu_pool: ThreadPool | None = None, learn: bool = False,
                 metadata_limits: imap_metadata.Limits | None = None,
                 metrics: Metrics | None = None) -> None:
        self.database = database
        self.credentials = login_credentials_total(metrics) if metrics is not None else None
        # moves into and out of Junk become rspamd learning requests (the `learn` stream)
        self.learn = learn
        self.metadata_limits = metadata_limits or DEFAULT_METADATA_LIMITS
        # repeated logins skip scrypt for a minute (see postroom.auth.authcache)
        self.auth_cache: AuthCache[users.UserInfo] = (
            auth_cache if auth_cache is not None else AuthCache())
        # the other workers of this process group verify logins for this one too
        self.shared_logins = shared_logins
        self.redis = client
        self.pool = redis_pool
        self.prefix = prefix
        self.limiter = limiter
        self.listener = listener
        self.reactor = reactor
        self.cpu_pool = cpu_pool
        # the change events' PUBLISH, from the `db` threads after each COMMIT
        self.publisher = events.Publisher(client, prefix)

    def in_redis_thread(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return defer_to_pool(self.reactor, self.pool, fn, *args)

    def in_cpu_thread(self, fn: Callable[[], Any]) -> Deferred[Any]:
        """Pure CPU work off the reactor (inline when there is no pool, as in tests)."""
        if self.cpu_pool is None:
            return maybeDeferred(fn)
        return defer_to_pool(self.reactor, self.cpu_pool, fn)

    def login(self, username: str, password: str, peer: str) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._login(username, password, peer))

    async def _login(self, username: str, password: str, peer: str) -> UserStoreImpl:
        info = self.auth_cache.get(username, password)
        shared = self.shared_logins if info is None else None
        # on a miss, the group's entry is read in the limiter's Redis call (one hop); it is
        # used, like the local cache's answer, only once the limiter let the login through
        # and its delay was waited
        from_group: list[SharedLookup[users.UserInfo]] = []

        def hop(fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
            def both(*a: Any) -> Any:
                verdict = fn(*a)
                if shared is not None and verdict.allowed:
                    from_group.append(shared.find(username, password))
                return verdict

            return self.in_redis_thread(both, *args)

        await self._allowed_to_try(username, peer, hop=hop)
        looked: SharedLookup[users.UserInfo] | None = None
        if shared is not None:
            looked = (from_group[0] if from_group
                      else await self.in_redis_thread(shared.find, username, password))
            info = looked.info
        refusal = None
        if info is None:

            def share(found: users.UserInfo, ticket: Ticket) -> None:
                # the look-up came before the check: it says what the store may overwrite
                if shared is not None and looked is not None:
                    self.in_redis_thread(shared.put, username, password, found, ticket,
                                         looked).addErrback(lambda f: None)

            try:
                # the main password, or an app password allowed for IMAP (two-factor
                # accounts); remembered here and in the group unless the account's
                # credentials changed while it was checked
                login = await logincheck.authenticate(self.database, username, password,
                                                   protocol="imap", peer=peer,
                                                   cache=self.auth_cache, share=share)
            except Exception as exc:  # noqa: BLE001 -- any failure is logged and answered, never raised to the peer
                log.warning("login lookup failed", error=str(exc))
                raise Unavailable() from None
            info, refusal = login.user, login.refusal
            self._count_credential(login)
        return await self._outcome(info, username, peer, refusal=refusal)

    def _count_credential(self, login: apppasswords.Login) -> None:
        if self.credentials is not None and login.credential is not None:
            self.credentials.labels(credential=login.credential).inc()

    async def _allowed_to_try(self, username: str, peer: str, *, wait: bool = True,
                              hop: Callable[..., Deferred[Any]] | None = None) -> None:
        """The shared login limits (and the pair's delay, on the reactor's clock); Redis away
        means try later (fail closed). ``hop``: how to reach the Redis pool (default
        :meth:`in_redis_thread`)."""
        if self.limiter is None:
            return
        try:
            await admit(self.limiter, self.reactor, hop or self.in_redis_thread, peer,
                        username, wait=wait)
        except RateLimitUnavailable:
            raise Unavailable() from None
        except LoginLocked:
            raise LoginDelayed() from None

    async def _outcome(self, info: users.UserInfo | None, username: str,
                       peer: str, *, refusal: str | None = None) -> UserStoreImpl:
        """Count a failure (and forget cached logins) or clear the counter on success."""
        if info is None:
            self.auth_cache.invalidate(username)
            shared, limiter = self.shared_logins, self.limiter
            if shared is not None or limiter is not None:
                def failed() -> None:
                    if shared is not None:
                        shared.invalidate(username)
                    if limiter is not None:
                        limiter.record_failure(peer, username)

                await self.in_redis_thread(failed)
            if refusal == apppasswords.TWO_FACTOR_REFUSAL:
                raise AuthFailed(apppasswords.TWO_FACTOR_REFUSAL_TEXT)
            raise AuthFailed()
        if self.limiter is not None:
            if self.limiter.needs_reset(peer, username):
                await self.in_redis_thread(self.limiter.reset, peer, username)
        return UserStoreImpl(self, info.id, info.address)

    def scram_secrets(self, username: str, peer: str) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._scram_secrets(username, peer))

    async def _scram_secrets(self, username: str, peer: str) -> ScramSecrets | None:
        # a locked-out client gets no real secrets, so the server-final message cannot
        # tell it whether a guess was right; login_verified() then refuses it
        try:
            await self._allowed_to_try(username, peer)
        except (Unavailable, LoginDelayed):
            return None
        try:
            found: ScramSecrets | None = await self.database.run(users.scram_secrets_for,
                                                                 username)
        except Exception as exc:  # noqa: BLE001 -- answered as a failed exchange, never raised to the peer
            log.warning("scram lookup failed", error=str(exc))
            return None
        return found

    def login_verified(self, username: str, verified: bool, peer: str) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._login_verified(username, verified, peer))

    async def _login_verified(self, username: str, verified: bool,
                              peer: str) -> UserStoreImpl:
        # the secrets' lookup (scram_secrets) waited the delay already
        await self._allowed_to_try(username, peer, wait=False)
        info = None
        if verified:
            try:
                info = await self.database.run(users.get_active_user, username)
            except Exception as exc:  # noqa: BLE001 -- any failure is logged and answered, never raised to the peer
                log.warning("login lookup failed", error=str(exc))
                raise Unavailable() from None
        return await self._outcome(info, username, peer)

    def request_learning(self, user_id: int, result: CopyResult) -> None:
        """After a committed copy or move that recorded learning requests (learn_requests):
        XADD their signals, never waited for; a lost one is re-signalled by the learn worker."""
        klass = result.learn_class
        if not self.learn or klass is None or not result.message_ids:
            return
        requests = [learning.LearnRequest(user_id, m, klass, tracked=True)
                    for m in result.message_ids]

        def failed(failure: Failure) -> None:
            # the request is in PostgreSQL: the learn worker re-signals it after its grace period
            log.warning("learning request not signalled", user_id=user_id, klass=klass,
                        messages=len(requests), error=failure.getErrorMessage())

        def queued(ids: list[str]) -> None:
            log.info("learning requested", user_id=user_id, klass=klass, messages=len(ids),
                     source=result.source_name, dest=result.dest_name)

        self.in_redis_thread(learning.enqueue, self.redis, self.prefix, requests).addCallbacks(
            queued, failed)

    def publish(self, mailbox_id: int, kind: str, modseq: int | None = None, *,
                echo: bool = True) -> None:
        """PUBLISH a committed change. ``echo=False``: with this process's origin, so its
        listener drops the echo (the caller notifies this process's watchers itself)."""
        # with modseq, sessions that already know it ignore the event
        event = events.ChangeEvent(kind, mailbox_id, "imap", modseq=modseq,
                                   origin=None if echo else self.listener.origin)
        try:
            self.publisher.publish(event)
        except (RedisError, OSError) as exc:
            log.warning("change event not published", error=str(exc), mailbox_id=mailbox_id)


def _database_down(failure: Failure) -> Failure:
    """PostgreSQL unreachable is a temporary condition: ``NO [UNAVAILABLE]`` (RFC 5530)."""
    if failure.check(*UNAVAILABLE):
        log.warning("database unavailable", error=failure.getErrorMessage()[:300])
        raise Unavailable()
    return failure


class UserStoreImpl:
    """One logged-in user's mailboxes."""

    def __init__(self, accounts: StoreAccounts, user_id: int, address: str) -> None:
        self.accounts = accounts
        self.user_id = user_id
        self.address = address
        # changes this session's commands committed, for Selected.own_change (one command
        # runs at a time per session, so these belong to the command being answered)
        self._own: list[OwnChange] = []

    def take_own_changes(self) -> list[OwnChange]:
        """The HIGHESTMODSEQ steps of this session's commands since the last call."""
        own, self._own = self._own, []
        return own

    def _db(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return self.accounts.database.run(fn, *args).addErrback(_database_down)

    def _db_publishing(self, fn: Callable[..., Any],
                       event: Callable[[Any], tuple[int, str, int | None] | None],
                       *args: Any, core: bool = False) -> Deferred[Any]:
        """``fn`` in one transaction, then its change event published from the same thread.

        After the COMMIT, the pool thread hands the result to the reactor
        together with ``event(result)`` (mailbox id, kind, modseq; None:
        nothing changed), and only then publishes the event: on the reactor
        this session's continuation runs first (it absorbs its own change),
        then the process's other watchers are notified, without the Redis
        round trip (the echo is dropped by origin). No thread hop is spent on
        the PUBLISH.
        A failed publish is logged; the event was only a signal. With ``core``
        the transaction runs on a Connection without an ORM Session
        (``Database.run_core_then``): for store functions that use only
        ``execute`` and ``connection``.
        """
        accounts = self.accounts
        done: Deferred[Any] = Deferred()

        def then(result: Any) -> None:
            try:
                change = event(result)
            except Exception:
                accounts.reactor.callFromThread(done.callback, result)  # committed: answer
                raise
            if change is None:
                accounts.reactor.callFromThread(done.callback, result)
                return
            accounts.reactor.callFromThread(deliver, result, change[0], change[2])
            accounts.publish(*change, echo=False)

        def deliver(result: Any, mailbox_id: int, modseq: int | None) -> None:
            done.callback(result)
            accounts.listener.notify(mailbox_id, modseq)

        def finished(outcome: tuple[Any, Exception | None]) -> None:
            if isinstance(outcome[1], Exception):
                log.warning("publish failed", error=str(outcome[1]))

        def failed(failure: Failure) -> None:
            if not done.called:
                done.errback(failure)

        run = accounts.database.run_core_then if core else accounts.database.run_then
        run(fn, then, *args).addCallbacks(finished, failed)
        return done.addErrback(_database_down)

    def _read(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """A read that needs no transaction (``Database.run_read``: no BEGIN, no COMMIT)."""
        return self.accounts.database.run_read(fn, *args).addErrback(_database_down)

    def _changed(self, result: Any, mailbox_id: int, kind: str,
                 modseq: int | None = None) -> Any:
        # COPY and MOVE (rare): the echo through Redis reaches this process's watchers, after
        # the command's continuation, as before
        self.accounts.in_redis_thread(self.accounts.publish, mailbox_id, kind,
                                      modseq).addErrback(
            lambda f: log.warning("publish failed", error=f.getErrorMessage()))
        return result

    async def _publish_names(self, names: Sequence[str], kind: str) -> None:
        ids = await self._db(mailstore.user_mailbox_ids, self.user_id, list(names))
        for mailbox_id in ids:
            self._changed(None, mailbox_id, kind)

    def list_mailboxes(self) -> Deferred[list[MailboxRow]]:
        return self._read(mailstore.list_rows, self.user_id)

    def offload(self, fn: Callable[[], Any]) -> Deferred[Any]:
        return self.accounts.in_cpu_thread(fn)

    def create(self, name: str, special_use: str | None) -> Deferred[None]:
        return self._db(mailstore.create, self.user_id, name, special_use)

    def delete(self, name: str) -> Deferred[None]:
        return self._db(mailstore.delete, self.user_id, name)

    def rename(self, old: str, new: str) -> Deferred[None]:
        return self._db(mailstore.rename, self.user_id, old, new)

    def subscribe(self, name: str, subscribed: bool) -> Deferred[None]:
        return self._db(mailstore.subscribe, self.user_id, name, subscribed)

    def status(self, name: str) -> Deferred[MailboxStatus]:
        return self._read(mailstore.status, self.user_id, name)

    def append(self, name: str, messages: Sequence[NewMessage], max_size: int, *,
               recent_for: int | None = None) -> Deferred[tuple[int, list[int]]]:
        def event(stored: tuple[list[tuple[int, int, int, int]], int | None]
                  ) -> tuple[int, str, int | None]:
            # one event for them all: other sessions announce one EXISTS
            _, _, mailbox_id, modseq = stored[0][-1]
            return mailbox_id, "exists", modseq

        # core: _append uses only execute and connection (no ORM Session per APPEND)
        d = self._db_publishing(_append, event, self.user_id, name, list(messages), max_size,
                                self.accounts.database.fts_max_bytes, recent_for, core=True)

        def done(stored: tuple[list[tuple[int, int, int, int]], int | None]
                 ) -> tuple[int, list[int]]:
            results, recent_from = stored
            for _, uid, mailbox_id, modseq in results:
                self._own.append(OwnChange(mailbox_id, modseq - 1, modseq, uid,
                                           recent_from=recent_from))
            return results[0][0], [r[1] for r in results]

        return d.addCallback(done)

    def select(self, name: str, *, take_recent: bool = False) -> Deferred[SelectState]:
        return self._read(mailstore.select, self.user_id, name, take_recent)

    def changes(self, mailbox_id: int, modseq: int, max_uid: int,
                count: int, *, take_recent: bool = False) -> Deferred[Changes]:
        return self._read(mailstore.changes, mailbox_id, modseq, max_uid, count, take_recent)

    def fetch(self, mailbox_id: int, uids: Sequence[int], *, blob: bool, meta: bool,
              mark_seen: bool, changedsince: int | None,
              tree: bool = True, head: bool = False) -> Deferred[list[FetchRow]]:
        if not mark_seen:
            return self._read(mailstore.fetch, mailbox_id, list(uids), blob, meta, False,
                              changedsince, tree, head)

        def event(rows: list[FetchRow]) -> tuple[int, str, int | None] | None:
            return (mailbox_id, "flags", None) if any(r.seen_set for r in rows) else None

        return self._db_publishing(mailstore.fetch, event, mailbox_id, list(uids), blob, meta,
                                   True, changedsince, tree, head, core=True)

    def fetch_flags(self, mailbox_id: int, uids: Sequence[int], *,
                    changedsince: int | None) -> Deferred[list[tuple[int, str, int]]]:
        return self._read(mailstore.fetch_flags, mailbox_id, list(uids), changedsince)

    def store(self, mailbox_id: int, uids: Sequence[int], mode: str, flags: Sequence[str],
              unchangedsince: int | None) -> Deferred[StoreResult]:
        def event(result: StoreResult) -> tuple[int, str, int | None] | None:
            return (mailbox_id, "flags", result.modseq_after) if result.changed else None

        d = self._db_publishing(mailstore.store, event, mailbox_id, list(uids), mode,
                                list(flags), unchangedsince, core=True)

        def done(result: StoreResult) -> StoreResult:
            if result.modseq_before is not None and result.modseq_after is not None:
                self._own.append(OwnChange(mailbox_id, result.modseq_before,
                                           result.modseq_after))
            return result

        return d.addCallback(done)

    def search(self, mailbox_id: int, key: SearchKey,
               max_uid: int) -> Deferred[list[tuple[int, int]]]:
        return self._read(mailstore.search, mailbox_id, key, max_uid)

    def ordering(self, mailbox_id: int, key: SearchKey,
                 max_uid: int) -> Deferred[list[SortItem]]:
        return self._read(mailstore.ordering, mailbox_id, key, max_uid)

    def copy(self, mailbox_id: int, uids: Sequence[int], dest: str,
             move: bool) -> Deferred[CopyResult]:
        d = self._db(mailstore.copy, self.user_id, mailbox_id, list(uids), dest, move,
                     self.accounts.learn)

        def done(result: CopyResult) -> CopyResult:
            self.accounts.request_learning(self.user_id, result)
            if result.source:
                Deferred.fromCoroutine(self._publish_names([dest], "exists")).addErrback(
                    lambda f: None)
                if move:
                    self._changed(None, mailbox_id, "expunge")
            return result

        return d.addCallback(done)

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None) -> Deferred[list[int]]:
        def event(result: tuple[list[int], int, int]) -> tuple[int, str, int | None] | None:
            return (mailbox_id, "expunge", result[2]) if result[0] else None

        d = self._db_publishing(mailstore.expunge, event, mailbox_id,
                                None if uids is None else list(uids), core=True)

        def done(result: tuple[list[int], int, int]) -> list[int]:
            removed, before, after = result
            self._own.append(OwnChange(mailbox_id, before, after))
            return removed

        return d.addCallback(done)

    def quota(self) -> Deferred[Quota]:
        return self._db(mailstore.quota, self.user_id)

    def get_metadata(self, mailbox: str, names: Sequence[str],
                     depth: str) -> Deferred[list[tuple[str, bytes | None]]]:
        return self._db(mailstore.get_metadata, self.user_id, mailbox, list(names), depth)

    def set_metadata(self, mailbox: str,
                     entries: Sequence[tuple[str, bytes | None]]) -> Deferred[None]:
        return self._db(mailstore.set_metadata, self.user_id, mailbox, list(entries),
                        self.accounts.metadata_limits)

    def vanished(self, mailbox_id: int, since: int,
                 spans: list[tuple[int, int]] | None) -> Deferred[list[tuple[int, int]]]:
        return self._db(mailstore.vanished, mailbox_id, since, spans)

    def watch(self, mailbox_id: int, callback: Callable[..., None],
              known: int | None = None) -> Callable[[], None]:
        return self.accounts.listener.watch(mailbox_id, callback, known)

    def close(self) -> None:
        """Nothing is held per session beyond watches, which the protocol removes."""


def _append(s: Any, user_id: int, name: str, messages: list[NewMessage], max_size: int,
            fts_max_bytes: int, recent_for: int | None = None
            ) -> tuple[list[tuple[int, int, int, int]], int | None]:
    """``mailstore.append`` of each message in one transaction (MULTIAPPEND: all or none).

    Spooled messages are read in the db thread (off the reactor), one at a
    time: the memory held is one message, however many the command carries.
    When they go to ``recent_for`` (the appending session's selected mailbox),
    the session takes their \\Recent in the same transaction, under the
    mailbox row's lock: the UIDs from the returned one up to the last message
    (with any delivered meanwhile that no session took yet). None: another
    mailbox.
    """
    results = []

    def lookup(box: str, uidvalidity: int | None, uid: int) -> FetchRow | None:
        try:
            mailbox_id, current = mailstore.mailbox_identity(s, user_id, box)
        except NoSuchMailbox:
            return None
        if uidvalidity is not None and uidvalidity != current:
            return None
        rows = mailstore.fetch(s, mailbox_id, [uid], True, True, False, None, True)
        return rows[0] if rows else None

    for data, flags, when in messages:
        if isinstance(data, tuple):  # CATENATE (RFC 4469)
            body = catenate.assemble(data, lookup, max_size)
        else:
            body = data if isinstance(data, bytes) else data.read()
        results.append(mailstore.append(s, user_id, name, body, list(flags), when,
                                        fts_max_bytes))
        del body
    recent_from = None
    if recent_for is not None and results and results[-1][2] == recent_for:
        last_uid = results[-1][1]
        # the appends locked the mailbox row: one statement takes the mark
        first = mailstore.take_recent_uids_locked(s, recent_for, last_uid + 1)
        recent_from = first if first <= last_uid else None
    return results, recent_from
