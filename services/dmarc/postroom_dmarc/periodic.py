"""The loop both report kinds run: once per period, per domain, one report, then purge.

DMARC aggregate reports (postroom_dmarc.reports) and TLS reports (postroom_dmarc.tlsreports)
share it: a timer ticks every quarter period (1 s to 15 min), one run at a time; a run takes
the last whole period (``period_of``), asks the store for the domains with results in it,
looks up each one's destinations in DNS (off the reactor), spools the report in one
transaction, enqueues it on ``outbound``, and forgets nothing until the period changes: a
domain whose report is done (anything but "busy" or "retry") is not looked at again.
Results older than the retention are purged after each run. A kind says what differs:
its store functions, its DNS lookup and checks, its spooling, and its log lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Protocol

from twisted.internet import defer, task
from twisted.python.threadpool import ThreadPool

from postroom.interfaces import ReactorThreads, twisted_clock
from postroom.logs import Logger
from postroom.net.dns import DNSTempError, Resolver
from postroom.outgoing import Outgoing
from postroom.queue.envelope import Envelope
from postroom.queue.reconciler import Enqueuer
from postroom.store.db import Database, StoreSession


@dataclass(frozen=True)
class Outcome:
    """What became of one domain's report for one period."""

    status: str  # spooled, exists, busy, empty, too_large, no_destination, retry
    queue_id: str | None = None
    recipient_ids: tuple[int, ...] = ()
    recipients: tuple[str, ...] = ()


def period_of(now: datetime, interval: float, settle: float = 0.0) -> tuple[datetime, datetime]:
    """The last whole period that ended at least ``settle`` seconds before ``now``."""
    seconds = now.timestamp() - settle
    end = int(seconds // interval * interval)
    begin = int(end - interval)
    return datetime.fromtimestamp(begin, UTC), datetime.fromtimestamp(end, UTC)


class PeriodConfig(Protocol):
    @property
    def interval(self) -> float: ...  # seconds

    @property
    def settle(self) -> float: ...  # wait this long after a period ends for its last results


@dataclass(frozen=True)
class ReportEvents:
    """A kind's log lines, spelt out so each can be found by grep."""

    run_failed: str
    purged: str
    deferred: str
    not_sent: str
    not_spooled: str
    queued: str
    skipped: str


class PeriodicReports:
    """Every little while, sends the reports of the last whole period that are not sent yet.

    A kind sets ``log`` and ``events`` and gives ``reporting_domains``, ``purge_results``
    (its store functions), ``destinations`` and ``spool``.
    """

    log: ClassVar[Logger]
    events: ClassVar[ReportEvents]

    def __init__(self, database: Database, enqueuer: Enqueuer, resolver: Resolver,
                 config: PeriodConfig, *, dns_pool: ThreadPool, reactor: ReactorThreads,
                 outgoing: Outgoing, retention: float) -> None:
        self.database = database
        self.enqueuer = enqueuer
        self.resolver = resolver
        self.config = config
        self.dns_pool = dns_pool
        self.reactor = reactor
        self.outgoing = outgoing
        # results are kept at least two periods, so a late tick still finds its period's
        self.retention = max(retention, 2 * config.interval + config.settle)
        self._period: datetime | None = None
        self._finished: set[str] = set()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = twisted_clock(reactor)
        self._current: defer.Deferred[Any] | None = None

    @property
    def check_every(self) -> float:
        return max(1.0, min(self.config.interval / 4, 900.0))

    def start(self) -> None:
        """Tick now and every :attr:`check_every` seconds until :meth:`stop`."""
        self._loop.start(self.check_every, now=True)

    def stop(self) -> defer.Deferred[Any]:
        """Stop ticking; fires when a tick in progress has finished."""
        if self._loop.running:
            self._loop.stop()
        current = self._current
        return current if current is not None else defer.succeed(None)

    def _tick(self) -> defer.Deferred[Any]:
        d = defer.Deferred.fromCoroutine(self.run_once())
        d.addErrback(lambda f: self.log.error(self.events.run_failed,
                                              error=f.getErrorMessage(),
                                              traceback=f.getTraceback()))
        self._current = d
        return d

    async def run_once(self, now: datetime | None = None) -> list[Outcome]:
        """Report the last whole period for each domain not done yet; purge old results."""
        now = now or datetime.now(UTC)
        begin, end = period_of(now, self.config.interval, self.config.settle)
        if begin != self._period:
            self._period, self._finished = begin, set()
        domains = await self.database.run(self.reporting_domains, begin, end)
        outcomes = []
        for domain in domains:
            if domain in self._finished:
                continue
            outcome = await self.report(domain, begin, end, now)
            outcomes.append(outcome)
            if outcome.status not in ("busy", "retry"):
                self._finished.add(domain)
        purged = await self.database.run(self.purge_results,
                                         now - timedelta(seconds=self.retention))
        if purged:
            self.log.info(self.events.purged, rows=purged)
        return outcomes

    @staticmethod
    def reporting_domains(session: StoreSession, start: datetime, end: datetime) -> list[str]:
        """The domains with results in [start, end) (the kind's store function)."""
        raise NotImplementedError

    @staticmethod
    def purge_results(session: StoreSession, before: datetime) -> int:
        """Delete the results older than ``before``; how many (the kind's store function)."""
        raise NotImplementedError

    async def destinations(self, domain: str, fields: dict[str, str]) -> Any | None:
        """Where ``domain``'s report goes (looked up in DNS off the reactor; DNSTempError
        defers it to a later tick), or None when nowhere usable (after logging why)."""
        raise NotImplementedError

    def spool(self, session: StoreSession, domain: str, begin: datetime, end: datetime,
              found: Any, now: datetime) -> Outcome:
        """Build and spool the report for [begin, end) to ``found`` in one transaction."""
        raise NotImplementedError

    async def report(self, domain: str, begin: datetime, end: datetime,
                     now: datetime) -> Outcome:
        """One domain's report for [begin, end): find destinations, spool, enqueue."""
        fields = {"domain": domain, "begin": begin.isoformat(), "end": end.isoformat()}
        try:
            found = await self.destinations(domain, fields)
        except DNSTempError as exc:
            self.log.warning(self.events.deferred, reason="DNS", error=str(exc), **fields)
            return Outcome("retry")
        if found is None:
            self.log.info(self.events.not_sent, reason="no usable rua", **fields)
            return Outcome("no_destination")
        try:
            outcome: Outcome = await self.database.run(self.spool, domain, begin, end, found,
                                                       now)
        except Exception as exc:  # noqa: BLE001 - one domain's failure must not stop the others
            self.log.error(self.events.not_spooled, error=str(exc), **fields)
            return Outcome("retry")
        if outcome.status == "spooled":
            assert outcome.queue_id is not None
            await self.enqueuer.after_commit(
                Envelope(outcome.queue_id, outcome.recipient_ids, "outbound"))
            self.log.info(self.events.queued, queue_id=outcome.queue_id,
                          to=list(outcome.recipients), **fields)
        else:
            self.log.info(self.events.skipped, queue_id=outcome.queue_id,
                          reason=outcome.status, **fields)
        return outcome
