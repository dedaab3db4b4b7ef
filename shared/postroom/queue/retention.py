"""Spool retention: deleting finished queued messages, their history and unused blobs.

A spool message whose recipients are all ``delivered`` or ``bounced`` is kept
``POSTROOM_SPOOL_RETENTION`` (default 7d) after it arrived and after its last
outcome, so `postroom trace` can still tell its story; then
``spool.purge_finished`` deletes it, its recipients and attempt history (ON
DELETE CASCADE), and its blob unless a mailbox entry or another spool message
still uses it.

The effective retention is never less than :func:`dmarc_floor`: the dmarc
service sends each aggregate report once per (domain, period) because the
report's spool row, under a queue id derived from both, is still there when a
later tick (or another replica) looks for it. It only ever reports the last
whole period, which it keeps looking at for one interval after the period
ended (plus the settle delay, at most 1m); two intervals plus a minute cover
that with a whole period to spare (``postroom.mailauth.dmarcreport.report_row_lifetime``,
beside the settle rule the dmarc service uses).

The mta runs :class:`SpoolPurger`: shortly after start and every
``PURGE_INTERVAL``, up to ``MAX_BATCHES`` transactions of ``BATCH_SIZE``
messages, so one tick is bounded however far behind it is (the next tick goes
on). ``purge_finished`` locks with SKIP LOCKED, so replicas split the work.
`postroom queue purge` runs the same batches from the command line.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from postroom.config import Settings
from postroom.interfaces import DelayedCall, ReactorThreads, global_reactor, twisted_clock
from postroom.logs import Logger, get_logger
from postroom.mailauth.dmarcreport import report_row_lifetime
from postroom.metrics import Metrics
from postroom.store import spool
from postroom.store.db import Database

PURGE_INTERVAL = 600.0
# the first tick waits this long after start: the service is listening and healthy first
START_DELAY = 5.0
BATCH_SIZE = 1000
MAX_BATCHES = 20


def dmarc_floor(settings: Settings) -> float:
    """The least retention that keeps DMARC aggregate reports sent once per period (seconds)."""
    return report_row_lifetime(settings.dmarc_report_interval)


def effective_retention(settings: Settings, requested: float | None = None) -> float:
    """``requested`` (default POSTROOM_SPOOL_RETENTION), raised to :func:`dmarc_floor`."""
    wanted = settings.spool_retention if requested is None else requested
    return max(wanted, dmarc_floor(settings))


def cutoff(settings: Settings, now: datetime | None = None,
           requested: float | None = None) -> datetime:
    """Finished messages received (and finished) before this time may be deleted."""
    now = now or datetime.now(UTC)
    return now - timedelta(seconds=effective_retention(settings, requested))


def purge_sync(database: Database, before: datetime, *, batch_size: int = BATCH_SIZE,
               max_batches: int | None = None) -> int:
    """Purge in transactions of ``batch_size`` until done (or ``max_batches``); how many."""
    total = batches = 0
    while max_batches is None or batches < max_batches:
        done = int(database.run_sync(spool.purge_finished, before, limit=batch_size))
        total += done
        batches += 1
        if done < batch_size:
            break
    return total


def purged_counter(metrics: Metrics) -> Any:
    return metrics.counter("spool_purged_total",
                           "Finished spool messages deleted by the retention job.")


class SpoolPurger:
    """Deletes finished spool messages past the retention, periodically, never raising."""

    def __init__(self, database: Database, settings: Settings, *, metrics: Metrics | None = None,
                 reactor: ReactorThreads | None = None, log: Logger | None = None,
                 interval: float = PURGE_INTERVAL, start_delay: float = START_DELAY,
                 batch_size: int = BATCH_SIZE, max_batches: int = MAX_BATCHES) -> None:
        if reactor is None:
            reactor = global_reactor()
        self.database = database
        self.settings = settings
        self.reactor = reactor
        self.log = log or get_logger("spool-retention")
        self.interval = interval
        self.start_delay = start_delay
        self.batch_size = batch_size
        self.max_batches = max_batches
        # declared now, so /metrics shows it at 0 before the first purge
        self._counter = purged_counter(metrics) if metrics is not None else None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = twisted_clock(reactor)
        self._delayed: DelayedCall | None = None
        self._current: Deferred[int] | None = None
        self._stopping = False
        self.purged_total = 0

    def start(self) -> None:
        """First tick after ``start_delay``, then every ``interval``."""
        self.log.info("spool retention started", interval=self.interval,
                      retention=effective_retention(self.settings),
                      dmarc_floor=dmarc_floor(self.settings))
        self._delayed = self.reactor.callLater(self.start_delay, self._begin)

    def _begin(self) -> None:
        self._delayed = None
        if not self._stopping:
            self._loop.start(self.interval, now=True)

    def stop(self) -> Deferred[Any]:
        """Stop ticking; fires when a tick in progress has finished its current batch."""
        self._stopping = True
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None
        if self._loop.running:
            self._loop.stop()
        current = self._current
        if current is None:
            return succeed(None)
        done: Deferred[Any] = Deferred()

        def finished(result: Any) -> Any:
            done.callback(None)
            return result

        current.addBoth(finished)
        return done

    def _tick(self) -> Deferred[int]:
        if self._stopping or self._current is not None:
            return succeed(0)
        d = Deferred.fromCoroutine(self.run_once())
        d.addErrback(self._failed)
        self._current = d

        def over(result: Any) -> Any:
            self._current = None
            return result

        return d.addBoth(over)

    def _failed(self, failure: Failure) -> int:
        # the database away or a lock conflict: the next tick tries again
        self.log.error("spool purge failed", error=failure.getErrorMessage(),
                       error_type=getattr(failure.type, "__name__", None))
        return 0

    async def run_once(self, now: datetime | None = None) -> int:
        """One tick: up to ``max_batches`` transactions; how many messages were deleted."""
        before = cutoff(self.settings, now)
        total = batches = 0
        full = False
        try:
            while batches < self.max_batches and not self._stopping:
                done = int(await self.database.run(spool.purge_finished, before,
                                                   limit=self.batch_size))
                total += done
                batches += 1
                if self._counter is not None and done:
                    self._counter.inc(done)
                full = done >= self.batch_size
                if not full:
                    break
        finally:
            # what earlier batches committed is reported even when a later one failed
            self.purged_total += total
            if total:
                self.log.info("spool purged", count=total, cutoff=before.isoformat(),
                              batches=batches, more=full)
        return total
