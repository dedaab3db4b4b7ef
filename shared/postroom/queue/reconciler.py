"""The reconciler, and enqueueing after a spool commit: what makes losing Redis lose nothing.

PostgreSQL is the truth and a stream entry only a signal. Every
``reconcile_interval`` (and at start, and as soon as a retry wake-up falls due)
the reconciler reads the pending recipients that are due and have not been put
on a stream for ``queue_claim_idle`` (``spool.due_recipients``), skips those
whose entry is still in the stream (waiting, or held by a consumer that a claim
will recover), and enqueues the rest, one entry per message and stream. It then
records ``enqueued_at`` in the same transaction; the rows are locked with SKIP
LOCKED, so several reconcilers split the work instead of duplicating it.

After a spool commit, :func:`enqueue_after_commit` puts the work on its stream
at once. If Redis fails at that moment the message is already durable: the
failure is logged and swallowed, the caller still answers 250, and the
reconciler enqueues it after ``queue_claim_idle`` (callers pass
``enqueued_at=now`` to ``create_spool`` so the reconciler does not race the
normal path). A 451 for Redis being down belongs before the commit:
:meth:`Enqueuer.available` is the check a front door makes first.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy.orm import Session
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from postroom.config import Settings
from postroom.interfaces import ReactorThreads, defer_to_pool, global_reactor, twisted_clock
from postroom.logs import get_logger
from postroom.queue.envelope import DISPOSITIONS, MAX_RECIPIENTS, STREAMS, Envelope
from postroom.queue.streams import QueueClient
from postroom.store import spool
from postroom.store.db import Database

log = get_logger("reconciler")

BATCH_SIZE = 500
WAKE_POLL_INTERVAL = 1.0


def envelopes_for(rows: Iterable[dict[str, Any]]) -> list[Envelope]:
    """Group due recipients into one envelope per (queue id, stream), in the rows' order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["queue_id"], row["stream"])].append(row)
    envelopes = []
    for (queue_id, stream), members in groups.items():
        disposition = members[0].get("disposition") or "inbox"
        if disposition not in DISPOSITIONS:
            disposition = "inbox"  # the consumer reads the real one from the spool
        ids = [int(m["recipient_id"]) for m in members]
        attempt = max(int(m.get("attempts") or 0) for m in members)
        for start in range(0, len(ids), MAX_RECIPIENTS):
            envelopes.append(Envelope(queue_id=queue_id, recipient_ids=tuple(
                ids[start:start + MAX_RECIPIENTS]), stream=stream, disposition=disposition,
                attempt=attempt))
    return envelopes


def reconcile_batch(session: Session, queue: QueueClient, now: datetime,
                    stale_before: datetime, limit: int = BATCH_SIZE) -> tuple[int, int]:
    """One batch, inside the caller's transaction: (rows examined, recipients enqueued).

    Runs on a `db` thread: it talks to PostgreSQL and Redis. An XADD that fails
    raises, the transaction rolls back, and nothing is marked.
    """
    rows = spool.due_recipients(session, now, stale_before, limit)
    if not rows:
        return 0, 0
    still_queued: set[int] = set()
    for stream in STREAMS:
        ids = [int(r["recipient_id"]) for r in rows if r["stream"] == stream]
        still_queued |= queue.queued(stream, ids)
    lost = [r for r in rows if int(r["recipient_id"]) not in still_queued]
    for envelope in envelopes_for(lost):
        entry_id = queue.enqueue(envelope.stream, envelope)
        log.info("queue entry restored", queue_id=envelope.queue_id, stream=envelope.stream,
                 recipients=len(envelope.recipient_ids), entry_id=entry_id)
    # the ones still in a stream are marked too: they are on a stream as of now, and
    # the next batch must move on to other rows
    spool.mark_enqueued(session, [int(r["recipient_id"]) for r in rows], now)
    return len(rows), len(lost)


class Reconciler:
    """Runs :func:`reconcile_batch` until no due work is left, periodically and on wake-ups."""

    def __init__(self, database: Database, queue: QueueClient, settings: Settings, *,
                 batch_size: int = BATCH_SIZE, wake_poll_interval: float = WAKE_POLL_INTERVAL,
                 pool: ThreadPool | None = None, reactor: ReactorThreads | None = None) -> None:
        if reactor is None:
            reactor = global_reactor()
        self.database = database
        self.queue = queue
        self.interval = settings.reconcile_interval
        self.claim_idle = settings.queue_claim_idle
        self.batch_size = batch_size
        self.wake_poll_interval = wake_poll_interval
        self.reactor = reactor
        # wake-up polls are Redis calls: a thread of their own, never the reactor's pool
        self._own_pool = pool is None
        self._pool = pool or ThreadPool(minthreads=0, maxthreads=1, name="queue-wake")
        self._loop: LoopingCall | None = None
        self._wake_loop: LoopingCall | None = None
        self._running: Deferred[Any] | None = None
        self._watchers: list[tuple[Deferred[Any], bool]] = []
        self._stopping = False
        self._wake_failing = False
        self.restored_total = 0

    def start(self) -> Deferred[int]:
        """Reconcile now and then every ``reconcile_interval``; fires after the first pass."""
        if self._own_pool:
            self._pool.start()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = twisted_clock(self.reactor)
        self._loop.start(self.interval, now=False)
        self._wake_loop = LoopingCall(self._poll_wakeups)
        self._wake_loop.clock = twisted_clock(self.reactor)
        self._wake_loop.start(self.wake_poll_interval, now=False)
        log.info("reconciler started", interval=self.interval, claim_idle=self.claim_idle)
        return self.reconcile()

    def stop(self) -> Deferred[None]:
        """Stop the loops; fires when a pass in progress has finished."""
        self._stopping = True
        for loop in (self._loop, self._wake_loop):
            if loop is not None and loop.running:
                loop.stop()
        return self._after_pass().addCallback(self._stopped)

    def _stopped(self, _: Any) -> None:
        if self._own_pool and self._pool.started:
            self._pool.stop()
        log.info("reconciler stopped", restored=self.restored_total)

    def reconcile(self) -> Deferred[int]:
        """One full pass (every batch); fires with how many recipients were re-enqueued.

        A pass already in progress is not doubled: the caller waits for it and gets 0.
        """
        if self._running is not None:
            return self._after_pass().addCallback(lambda _: 0)
        mine: Deferred[int] = Deferred()
        self._watchers.append((mine, True))
        # the watcher is registered first: the pass may fail before fromCoroutine returns
        self._running = Deferred.fromCoroutine(self._pass())  # type: ignore[arg-type]
        self._running.addBoth(self._pass_over)
        return mine

    def _after_pass(self, *, errors: bool = False) -> Deferred[Any]:
        """A Deferred of the pass in progress (its result, or None without one)."""
        if self._running is None:
            return succeed(None)
        mine: Deferred[Any] = Deferred()
        self._watchers.append((mine, errors))
        return mine

    def _pass_over(self, result: Any) -> None:
        self._running = None
        watchers, self._watchers = self._watchers, []
        for d, errors in watchers:
            if isinstance(result, Failure):
                if errors:
                    d.errback(result)
                else:
                    d.callback(None)
            else:
                d.callback(result)

    async def _pass(self) -> int:
        restored = examined = 0
        while True:
            now = datetime.now(UTC)
            stale_before = now - timedelta(seconds=self.claim_idle)
            seen, lost = await self.database.run(reconcile_batch, self.queue, now, stale_before,
                                                 self.batch_size)
            examined += seen
            restored += lost
            if seen < self.batch_size:
                break
        self.restored_total += restored
        if examined:
            log.info("reconcile pass done", examined=examined, restored=restored)
        return restored

    def _tick(self) -> Deferred[int]:
        if self._stopping:
            return succeed(0)
        # a failed pass (database or Redis down) is logged; the loop keeps going
        return self.reconcile().addErrback(self._pass_failed)

    def _pass_failed(self, failure: Failure) -> int:
        log.warning("reconcile pass failed", error=failure.getErrorMessage(),
                    error_type=getattr(failure.type, "__name__", None))
        return 0

    def _poll_wakeups(self) -> Deferred[Any]:
        def due() -> list[str]:
            return [m for s in STREAMS for m in self.queue.due_wakeups(s)]

        def woke(members: list[str]) -> Any:
            if self._wake_failing:
                self._wake_failing = False
                log.info("wake-up poll recovered")
            if members:
                log.debug("retry wake-up", queue_ids=members[:20], count=len(members))
                return self._tick()
            return None

        def failed(failure: Failure) -> None:
            # once per outage, not once a second
            if not self._wake_failing:
                self._wake_failing = True
                log.warning("wake-up poll failed", error=failure.getErrorMessage())

        d = defer_to_pool(self.reactor, self._pool, due)
        return d.addCallbacks(woke, failed)


# Enqueuer.available trusts a Redis call that worked this recently (seconds)
RECENTLY_OK = 1.0


class Enqueuer:
    """What a front door (mta inbound, msa) uses around its spool commit.

    :meth:`available` pings Redis unless this enqueuer's last Redis call
    succeeded less than ``fresh`` seconds ago (RECENTLY_OK): under load every
    message would otherwise pay a thread hop and a round trip for a PING while
    the previous message's XADD has just answered. The price is that mail
    accepted in the first ``fresh`` seconds of a Redis outage is spooled and
    its XADD fails: it is durable, and the reconciler enqueues it after
    ``queue_claim_idle``; from the first failure on, the front door answers 451.
    """

    def __init__(self, queue: QueueClient, pool: ThreadPool,
                 reactor: ReactorThreads | None = None, *,
                 fresh: float = RECENTLY_OK) -> None:
        if reactor is None:
            reactor = global_reactor()
        self.queue = queue
        self.pool = pool
        self.reactor = reactor
        self.fresh = fresh
        self._ok_at: float | None = None  # reactor time of the last Redis call that worked

    def available(self) -> Deferred[bool]:
        """True when Redis answers; False means reply 451 4.3.0 and commit nothing."""
        now = self.reactor.seconds()
        if self._ok_at is not None and now - self._ok_at < self.fresh:
            return succeed(True)
        d: Deferred[bool] = defer_to_pool(self.reactor, self.pool, self.queue.ping)
        return d.addCallback(self._noted)

    def _noted(self, ok: bool) -> bool:
        self._ok_at = self.reactor.seconds() if ok else None
        return ok

    def after_commit(self, envelope: Envelope) -> Deferred[str | None]:
        """:func:`enqueue_after_commit` on this enqueuer's pool."""
        d = enqueue_after_commit(self.queue, self.pool, envelope, reactor=self.reactor)
        return d.addCallback(self._enqueued)

    def _enqueued(self, entry_id: str | None) -> str | None:
        self._noted(entry_id is not None)
        return entry_id

    def enqueue_blocking(self, envelope: Envelope) -> str:
        """The XADD itself, for a thread that is already off the reactor (``Database.run_then``
        after the spool commit); hand its outcome to :meth:`enqueued_in_thread` on the reactor."""
        return self.queue.enqueue(envelope.stream, envelope)

    def enqueue_many_blocking(self, envelopes: Sequence[Envelope]) -> list[str | Exception]:
        """:meth:`enqueue_blocking` for the messages of one group commit
        (postroom.store.groupcommit): one pipelined round trip, each entry's outcome."""
        return self.queue.enqueue_many(envelopes)

    def enqueue_many_with_blocking(self, envelopes: Sequence[Envelope],
                                   also: Callable[[Any], object]
                                   ) -> tuple[list[str | Exception], list[Any]]:
        """:meth:`enqueue_many_blocking` with ``also``'s commands in the same round trip
        (``QueueClient.enqueue_many_with``): the msa's sending counts."""
        return self.queue.enqueue_many_with(envelopes, also)

    def enqueued_in_thread(self, envelope: Envelope, outcome: str | Exception) -> str | None:
        """What :meth:`after_commit` reports and notes, for an XADD made by
        :meth:`enqueue_blocking`; an error other than Redis's is raised (a bug)."""
        return self._enqueued(_reported(envelope, outcome))


def enqueue_after_commit(queue: QueueClient, pool: ThreadPool, envelope: Envelope, *,
                         reactor: ReactorThreads | None = None) -> Deferred[str | None]:
    """Enqueue committed spool work; the entry id, or None when Redis failed (never an error).

    None is not a reason to refuse the message: it is committed, and the
    reconciler enqueues it after ``queue_claim_idle``. Replying 451 now would
    make the client send it again and the recipient get it twice.
    """
    if reactor is None:
        reactor = global_reactor()
    d: Deferred[str] = defer_to_pool(reactor, pool, queue.enqueue, envelope.stream, envelope)
    return d.addCallbacks(lambda entry_id: _reported(envelope, entry_id),
                          lambda failure: _reported(envelope, failure.value))


def _reported(envelope: Envelope, outcome: str | BaseException) -> str | None:
    """Log an XADD's outcome: its entry id, or None for a Redis error (the reconciler
    enqueues it later); any other error is raised again (a bug, not an outage)."""
    if isinstance(outcome, BaseException):
        if not isinstance(outcome, redis.RedisError):
            raise outcome
        log.warning("enqueue failed; the reconciler will enqueue it", queue_id=envelope.queue_id,
                    stream=envelope.stream, error=str(outcome))
        return None
    log.info("message enqueued", queue_id=envelope.queue_id, stream=envelope.stream,
             recipients=len(envelope.recipient_ids), entry_id=outcome)
    return outcome
