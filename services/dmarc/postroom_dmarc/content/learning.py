"""The learn worker: reads the ``learn`` stream (postroom.queue.learning) and teaches rspamd.

Runs in the dmarc service, which already holds the rspamd client, when
POSTROOM_RSPAMD_CONTROLLER_URL is set. One loop on the reactor: a bounded
blocking read in the `redis` pool (entries another replica left pending for
``claim_idle`` seconds are taken over first), the message from the store, a
POST to rspamd's ``/learnspam`` or ``/learnham``, then XACK + XDEL.
rspamd's "already learned" is success. A failure puts the request back with
its attempt count raised and pauses the loop (exponential back-off up to a
minute), so rspamd being down costs nothing but a wait; past
POSTROOM_RSPAMD_LEARN_ATTEMPTS the request is dropped and logged. A message
the user deleted meanwhile is not learnt.

Durability (DESIGN): a tracked entry's request is a row of ``learn_requests``,
written with the COPY/MOVE. The worker skips an entry whose row is gone
(learnt already), deletes the row once done, counts failed attempts on it,
and every ``reconcile_interval`` re-signals rows pending longer than
``grace`` (``learning.resignal_batch``): a signal Redis lost is sent again.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter
from twisted.internet import defer, task
from twisted.python.threadpool import ThreadPool

from postroom.interfaces import ReactorThreads, defer_to_pool, twisted_clock
from postroom.logs import get_logger
from postroom.metrics import Metrics
from postroom.queue import learning
from postroom.queue.redisclient import RedisClient
from postroom.store import learning as stored
from postroom.store.db import Database
from postroom_dmarc.content.rspamd import RspamdClient

log = get_logger("rspamd-learn")

BATCH = 10
BLOCK_MS = 2000
BACKOFF_MAX = 60.0
RESIGNAL_BATCH = 500


def learn_metrics(metrics: Metrics) -> tuple[Counter, Counter]:
    """The learn worker's metric families (dropped, re-signalled requests)."""
    return (metrics.counter("rspamd_learn_dropped", "Learning requests given up on, by reason.",
                            ["reason"]),
            metrics.counter("rspamd_learn_resignalled", "Learning requests whose stream signal "
                            "was lost, signalled again from PostgreSQL."))


class LearnWorker:
    """Consumes the learn stream until :meth:`stop`."""

    def __init__(self, rspamd: RspamdClient, database: Database, client: RedisClient,
                 prefix: str, pool: ThreadPool, reactor: ReactorThreads, *,
                 max_attempts: int = 10, claim_idle: float = 60.0,
                 reconcile_interval: float = 60.0, grace: float | None = None,
                 metrics: Metrics | None = None) -> None:
        self.rspamd = rspamd
        self.database = database
        self.redis = client
        self.prefix = prefix
        self.pool = pool
        self.reactor = reactor
        self.max_attempts = max_attempts
        self.claim_idle_ms = int(claim_idle * 1000)
        self.reconcile_interval = reconcile_interval
        # a row signalled this long ago and still there lost its signal (default: claim_idle,
        # after which a pending entry would have been claimed by another replica)
        self.grace = claim_idle if grace is None else grace
        self._reconciler: task.LoopingCall | None = None
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._running = False
        self._loop: defer.Deferred[None] | None = None
        self._failures = 0
        self.dropped: Counter | None = None
        self.resignalled: Counter | None = None
        if metrics is not None:
            self.dropped, self.resignalled = learn_metrics(metrics)

    def _redis(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        return defer_to_pool(self.reactor, self.pool, fn, self.redis, self.prefix, *args)

    def start(self) -> None:
        self._running = True
        self._loop = defer.Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda f: log.error("learn worker stopped", error=f.getErrorMessage(),
                                                  traceback=f.getTraceback()))
        self._reconciler = task.LoopingCall(self._reconcile_tick)
        self._reconciler.clock = twisted_clock(self.reactor)
        self._reconciler.start(self.reconcile_interval, now=True)

    def stop(self) -> defer.Deferred[None]:
        """Stop after the read or submission in progress."""
        self._running = False
        if self._reconciler is not None and self._reconciler.running:
            self._reconciler.stop()
        return self._loop if self._loop is not None else defer.succeed(None)

    async def reconcile(self) -> int:
        """Re-signal every request pending longer than ``grace``; how many."""
        total = 0
        while True:
            now = datetime.now(UTC)
            n = await self.database.run(learning.resignal_batch, self.redis, self.prefix, now,
                                        now - timedelta(seconds=self.grace), RESIGNAL_BATCH)
            total += n
            if n < RESIGNAL_BATCH:
                break
        if total:
            log.info("learning requests re-signalled", count=total)
            if self.resignalled is not None:
                self.resignalled.inc(total)
        return total

    def _reconcile_tick(self) -> defer.Deferred[Any]:
        d = defer.Deferred.fromCoroutine(self.reconcile())
        # the database or Redis away: logged, tried again next interval
        return d.addErrback(lambda f: log.warning("learn reconcile failed",
                                                  error=f.getErrorMessage()))

    async def _run(self) -> None:
        while self._running:
            try:
                entries = await self._redis(learning.read, self.consumer, BATCH, BLOCK_MS,
                                            self.claim_idle_ms)
            except Exception as exc:  # noqa: BLE001 - Redis away: wait and read again
                log.warning("learn stream unreadable", error=str(exc))
                await self._pause(5.0)
                continue
            for entry_id, fields in entries:
                if not self._running:
                    return  # left pending: claimed again later
                await self.handle(entry_id, fields)

    async def _pause(self, seconds: float) -> None:
        await task.deferLater(twisted_clock(self.reactor), seconds, lambda: None)

    async def handle(self, entry_id: str, fields: dict[str, str]) -> str:
        """One entry: "learned", "already", "done", "gone", "bad", "retry" or "dropped"."""
        try:
            request = learning.decode(fields)
        except learning.BadLearnRequest as exc:
            log.warning("learning request malformed", entry_id=entry_id, error=str(exc))
            self._drop("malformed")
            await self._redis(learning.ack, entry_id)
            return "bad"
        try:
            if request.tracked and not await self.database.run(
                    stored.pending, request.user_id, request.message_id, request.klass):
                # learnt already (a re-signalled or claimed duplicate), or given up on
                log.debug("learning request done already", user_id=request.user_id,
                          message_id=request.message_id, klass=request.klass)
                await self._redis(learning.ack, entry_id)
                return "done"
            message = await self.database.run(stored.message_for_learning, request.user_id,
                                              request.message_id)
            if message is None:
                log.info("learning skipped: message gone", user_id=request.user_id,
                         message_id=request.message_id, klass=request.klass)
                await self._finish(request)
                await self._redis(learning.ack, entry_id)
                return "gone"
            outcome = await self.rspamd.learn(message, request.klass)
            await self._finish(request)
        except Exception as exc:  # noqa: BLE001 - rspamd or the store away: try again later
            return await self._failed(entry_id, request, exc)
        self._failures = 0
        await self._redis(learning.ack, entry_id)
        return outcome

    async def _finish(self, request: learning.LearnRequest) -> None:
        if request.tracked:
            await self.database.run(stored.finish, request.user_id, request.message_id,
                                    request.klass)

    async def _failed(self, entry_id: str, request: learning.LearnRequest,
                      exc: Exception) -> str:
        error = str(exc) or type(exc).__name__
        if request.attempt + 1 >= self.max_attempts:
            log.error("learning request dropped", user_id=request.user_id,
                      message_id=request.message_id, klass=request.klass,
                      attempts=request.attempt + 1, error=error)
            self._drop("attempts")
            try:
                await self._finish(request)
            except Exception as db_exc:  # noqa: BLE001 - the row stays; dropped again later
                log.warning("dropped learning request not removed", user_id=request.user_id,
                            message_id=request.message_id, error=str(db_exc))
            await self._redis(learning.ack, entry_id)
            return "dropped"
        log.warning("learning failed, will retry", user_id=request.user_id,
                    message_id=request.message_id, klass=request.klass,
                    attempt=request.attempt + 1, error=error)
        if request.tracked:
            try:
                await self.database.run(stored.failed, request.user_id, request.message_id,
                                        request.klass, datetime.now(UTC))
            except Exception as db_exc:  # noqa: BLE001 - the store away: the count waits
                log.warning("learning attempt not recorded", user_id=request.user_id,
                            message_id=request.message_id, error=str(db_exc))
        await self._redis(learning.retry, entry_id, request)
        self._failures += 1
        await self._pause(min(2.0 ** self._failures, BACKOFF_MAX))
        return "retry"

    def _drop(self, reason: str) -> None:
        if self.dropped is not None:
            self.dropped.labels(reason=reason).inc()
