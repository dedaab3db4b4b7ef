"""StreamConsumer: one thread blocks on XREADGROUP, the reactor runs handlers, XACK after success.

The guarantee is at-least-once. An entry is acknowledged only after its
handler's Deferred succeeded. A handler that fails, a process that dies
mid-work, or a stop whose grace ran out leaves the entry pending in the
consumer group, and after ``claim_idle`` seconds some consumer (this one or
another replica) takes it over with XAUTOCLAIM. Handlers must therefore be
idempotent (the mailbox has a unique key on the spool recipient).

Threads: one dedicated daemon thread per consumer does every blocking read
and claim (block at most 5 s, so a stop is noticed promptly); acknowledgements
run in a small thread pool of the consumer's own; handlers run on the reactor
thread. Redis being down is logged and retried with back-off, never fatal.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, maybeDeferred
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from postroom.interfaces import ReactorThreads, defer_to_pool, global_reactor, twisted_clock
from postroom.logs import get_logger
from postroom.metrics import Metrics, queue_latency
from postroom.queue.envelope import BadEnvelope, Envelope, decode
from postroom.queue.gauges import entry_time
from postroom.queue.streams import Entry, QueueClient

BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
# forget consumers of dead processes once they have been silent this long with nothing pending
PRUNE_IDLE = 3600.0
PRUNE_EVERY = 300.0
# entries acknowledged in one round trip at most (see StreamConsumer._succeeded)
MAX_ACK_BATCH = 100

log = get_logger("queue")


@dataclass(frozen=True)
class QueueEntry:
    """One stream entry handed to a handler."""

    entry_id: str
    envelope: Envelope
    # True when taken over from a consumer that did not finish it (a redelivery)
    claimed: bool = False

    @property
    def queue_id(self) -> str:
        return self.envelope.queue_id


Handler = Callable[[QueueEntry], "Deferred[Any] | Any"]


def consumer_name() -> str:
    """A consumer name unique to this process: hostname-pid-random."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class StreamConsumer:
    """Consume one stream as one member of a consumer group; see the module docstring."""

    def __init__(self, queue: QueueClient, stream: str, group: str, handler: Handler, *,
                 concurrency: int = 10, claim_idle: float = 60.0,
                 claim_interval: float | None = None, block_ms: int = 5000,
                 grace: float = 20.0, name: str | None = None,
                 reactor: ReactorThreads | None = None,
                 metrics: Metrics | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        queue.stream_key(stream)  # unknown stream names fail here, not in the thread
        if reactor is None:
            reactor = global_reactor()
        self.queue = queue
        self.stream = stream
        self.group = group
        self.handler = handler
        self.concurrency = concurrency
        self.claim_idle = claim_idle
        self.claim_interval = claim_interval or min(max(claim_idle / 2, 0.05), 30.0)
        # the reader comes round to claims and heartbeats at least once per claim interval
        self.block_ms = max(10, min(block_ms, int(self.claim_interval * 1000),
                                    queue.max_block_ms))
        self.grace = grace
        self.name = name or consumer_name()
        self.reactor = reactor
        self.log = log.bind(stream=stream, group=group, consumer=self.name)
        self.semaphore = DeferredSemaphore(concurrency)
        # counters for metrics
        self.handled = 0
        self.failed = 0
        self.dropped = 0
        self._latency = (queue_latency(metrics).labels(queue=stream) if metrics is not None
                         else None)
        # shared between the reader thread and the reactor thread, under _cond:
        # free slots (the reader never takes entries it cannot start at once, because
        # entries in our pending list are invisible to other consumers until claim_idle)
        # and the ids being worked on (their idle time is refreshed)
        self._cond = threading.Condition()
        self._free = concurrency
        self._working: set[str] = set()
        self._in_flight: set[Deferred[None]] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPool(minthreads=0, maxthreads=2, name=f"queue-ack-{stream}")
        # finished entries waiting for the acknowledgement in flight (reactor thread only)
        self._acks: list[tuple[QueueEntry, Deferred[None]]] = []
        self._acking = False
        self._stopped: Deferred[None] | None = None

    # --- lifecycle (reactor thread)

    def start(self) -> None:
        """Start the reader thread; entries begin to flow to the handler."""
        if self._thread is not None:
            raise RuntimeError("StreamConsumer already started")
        self._pool.start()
        self._thread = threading.Thread(target=self._run, name=f"queue-{self.stream}",
                                        daemon=True)
        self._thread.start()
        self.log.info("queue consumer started", concurrency=self.concurrency,
                      claim_idle=self.claim_idle)

    @property
    def in_flight(self) -> int:
        """Entries handed to the handler and not yet finished (acknowledged or failed)."""
        return len(self._in_flight)

    def stop(self, grace: float | None = None) -> Deferred[None]:
        """Stop reading; wait up to ``grace`` seconds for handlers, leave the rest pending."""
        if self._stopped is None:
            self._stopping.set()
            with self._cond:
                self._cond.notify_all()
            deadline = self.reactor.seconds() + (self.grace if grace is None else grace)
            self._stopped = Deferred.fromCoroutine(self._stop(deadline))
        # every caller gets its own Deferred that fires when the stop is complete
        result: Deferred[None] = Deferred()
        self._stopped.addBoth(_chain_to, result)
        return result

    async def _stop(self, deadline: float) -> None:
        # the reader notices within one block_ms; entries it read meanwhile are dispatched
        while self._thread is not None and self._thread.is_alive() \
                and self.reactor.seconds() < deadline:
            await deferLater(twisted_clock(self.reactor), 0.02, lambda: None)
        if self._in_flight:
            await _first_of(DeferredList(list(self._in_flight), consumeErrors=True),
                            max(0.0, deadline - self.reactor.seconds()), self.reactor)
        if self._in_flight:
            # the work goes on until the process exits; unacknowledged entries stay
            # pending and another consumer claims them after claim_idle
            self.log.warning("queue consumer stopped with work in flight",
                             in_flight=len(self._in_flight))
        self._pool.stop()
        self.log.info("queue consumer stopped", handled=self.handled, failed=self.failed)

    # --- the reader thread

    def _run(self) -> None:
        backoff = BACKOFF_MIN
        group_ready = False
        next_claim = 0.0  # claim at once: a previous incarnation may have left entries
        next_prune = time.monotonic() + PRUNE_EVERY
        while not self._stopping.is_set():
            try:
                if not group_ready:
                    self.queue.ensure_group(self.stream, self.group)
                    group_ready = True
                now = time.monotonic()
                if now >= next_claim:
                    next_claim = now + self.claim_interval
                    self._heartbeat()
                    free = self._wait_for_slots()
                    if free:
                        entries = self.queue.claim_stale(
                            self.stream, self.group, self.name,
                            int(self.claim_idle * 1000), free)
                        if entries:
                            self.log.info("queue entries claimed", count=len(entries))
                        self._dispatch(entries, claimed=True)
                if now >= next_prune:
                    next_prune = now + PRUNE_EVERY
                    self._prune()
                free = self._wait_for_slots()
                if free:
                    self._dispatch(self.queue.read(self.stream, self.group, self.name, free,
                                                   self.block_ms), claimed=False)
                backoff = BACKOFF_MIN
            except redis.RedisError as exc:
                # FLUSHALL / restart: the group may be gone too, so make sure of it again
                group_ready = False
                self.log.warning("queue redis error", error=f"{type(exc).__name__}: {exc}",
                                 retry_in=backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception as exc:  # this thread must never die
                group_ready = False
                self.log.exception("queue reader failed", exc, retry_in=backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _wait_for_slots(self) -> int:
        """Free handler slots, waiting (briefly, so claims stay on time) while there are none."""
        with self._cond:
            if self._free == 0 and not self._stopping.is_set():
                self._cond.wait(self.claim_interval)
            return 0 if self._stopping.is_set() else self._free

    def _heartbeat(self) -> None:
        with self._cond:
            working = list(self._working)
        if working:
            self.queue.touch(self.stream, self.group, self.name, working)

    def _prune(self) -> None:
        removed = self.queue.prune_consumers(self.stream, self.group, int(PRUNE_IDLE * 1000))
        if removed:
            self.log.info("queue consumers pruned", removed=removed)

    def _dispatch(self, entries: list[Entry], *, claimed: bool) -> None:
        for entry_id, fields in entries:
            try:
                envelope = decode(fields)
                if envelope.stream != self.stream:
                    raise BadEnvelope("envelope names another stream")
            except BadEnvelope as exc:
                self._drop(entry_id, str(exc))
                continue
            if not claimed:
                self._observe_latency(entry_id)
            with self._cond:
                self._free -= 1
                self._working.add(entry_id)
            self.reactor.callFromThread(self._handle, QueueEntry(entry_id, envelope, claimed))

    def _observe_latency(self, entry_id: str) -> None:
        # the entry id is Redis's clock at XADD; a claimed entry's wait is not pick-up latency
        if self._latency is not None:
            added = entry_time(entry_id)
            if added is not None:
                self._latency.observe(max(0.0, time.time() - added))

    def _drop(self, entry_id: str, reason: str) -> None:
        """Acknowledge a malformed entry away: retrying it can never succeed."""
        self.dropped += 1
        self.log.warning("bad queue entry dropped", entry_id=entry_id, reason=reason)
        try:
            self.queue.ack(self.stream, self.group, [entry_id])
        except redis.RedisError as exc:
            # it stays pending; whoever claims it next drops it again
            self.log.warning("queue ack failed", entry_id=entry_id, error=str(exc))

    # --- the reactor thread

    def _handle(self, entry: QueueEntry) -> None:
        d = self.semaphore.run(maybeDeferred, self.handler, entry)
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(entry,),
                       errbackArgs=(entry,))
        self._in_flight.add(d)
        d.addBoth(self._finished, entry, d)

    def _succeeded(self, _result: Any, entry: QueueEntry) -> Deferred[None]:
        """Acknowledge a finished entry; fires once the acknowledgement is done (or failed).

        Group acknowledgement: while one round trip is in flight, the entries that
        finish meanwhile wait and go together in the next (one script call, at most
        MAX_ACK_BATCH), so under load an acknowledgement costs a fraction of a round
        trip and thread hand-off; when idle an entry is acknowledged at once.
        """
        self.handled += 1
        done: Deferred[None] = Deferred()
        self._acks.append((entry, done))
        if not self._acking:
            self._ack_next()

        def ack_failed(failure: Failure) -> None:
            # the work is done but the entry stays pending: it is redelivered after
            # claim_idle and the idempotent handler does nothing the second time
            self.log.warning("queue ack failed", queue_id=entry.queue_id,
                             entry_id=entry.entry_id, error=failure.getErrorMessage())

        return done.addErrback(ack_failed)

    def _ack_next(self) -> None:
        batch, self._acks = self._acks[:MAX_ACK_BATCH], self._acks[MAX_ACK_BATCH:]
        self._acking = True
        d = defer_to_pool(self.reactor, self._pool, self.queue.ack_entries, self.stream,
                          self.group, [(e.entry_id, e.envelope.recipient_ids) for e, _ in batch])

        def acked(result: Any) -> None:
            self._acking = False
            for _entry, done in batch:
                if isinstance(result, Failure):
                    done.errback(result)
                else:
                    done.callback(None)
            if self._acks and not self._acking:
                self._ack_next()

        d.addBoth(acked)

    def _failed(self, failure: Failure, entry: QueueEntry) -> None:
        self.failed += 1
        self.log.error("queue handler failed", queue_id=entry.queue_id, entry_id=entry.entry_id,
                       error=failure.getErrorMessage(),
                       error_type=getattr(failure.type, "__name__", None),
                       traceback=failure.getTraceback().rstrip())

    def _finished(self, result: Any, entry: QueueEntry, d: Deferred[None]) -> Any:
        self._in_flight.discard(d)
        with self._cond:
            self._free += 1
            self._working.discard(entry.entry_id)
            self._cond.notify_all()
        return result


def _chain_to(result: Any, target: Deferred[None]) -> Any:
    if isinstance(result, Failure):
        target.errback(result)
        return None
    target.callback(None)
    return result


def _first_of(d: Deferred[Any], timeout: float, reactor: ReactorThreads) -> Deferred[None]:
    """Fire when ``d`` fires or ``timeout`` passes, whichever is first, without cancelling ``d``."""
    done: Deferred[None] = Deferred()

    def expired() -> None:
        if not done.called:
            done.callback(None)

    timer = reactor.callLater(timeout, expired)

    def fired(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if not done.called:
            done.callback(None)
        return result

    d.addBoth(fired)
    return done
