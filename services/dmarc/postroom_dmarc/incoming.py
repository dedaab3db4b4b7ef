"""Reads the aggregate reports other receivers send us: a periodic scan of the report mailbox.

The MTA and MDA deliver mail for ``POSTROOM_DMARC_REPORT_MAILBOX`` like any
other mail. Every ``POSTROOM_DMARC_REPORT_SCAN_INTERVAL`` this scanner takes
the messages in that account's mailboxes that have no row in
``dmarc_incoming_reports`` yet, parses each in the `policy` thread pool (a
pure function, :func:`postroom.mailauth.dmarcreport.parse_report_message`) and stores
the result, or the refusal, keyed by the message's SHA-256. So a message is
looked at once whatever happens to the queues, several replicas never store
a report twice, and a mail the user deletes simply stops being a candidate.

TLS reports (RFC 8460) come to the same address (``postroom dns`` publishes it
in ``_smtp._tls``): a mail whose header says it is one goes to
:func:`postroom.mailauth.tlsrpt.parse_report_message` and ``tls_incoming_reports``
instead.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.python.threadpool import ThreadPool

from postroom.interfaces import ReactorThreads, defer_to_pool, twisted_clock
from postroom.logs import get_logger
from postroom.mailauth import dmarcreport, tlsrpt
from postroom.store import dmarc as dmarc_store
from postroom.store import tlsreports
from postroom.store.db import Database

log = get_logger("dmarc-incoming")

BATCH = 20  # messages per database round; the rest wait for the next one


class IncomingScanner:
    """Parses and stores new messages in the report mailbox every ``interval`` seconds."""

    def __init__(self, database: Database, address: str, *, pool: ThreadPool,
                 reactor: ReactorThreads,
                 interval: float = 60.0,
                 limits: dmarcreport.IncomingLimits | None = None,
                 tls_limits: tlsrpt.TLSLimits | None = None) -> None:
        self.database = database
        self.address = address.lower()
        self.pool = pool
        self.reactor = reactor
        self.interval = interval
        self.limits = limits or dmarcreport.IncomingLimits()
        self.tls_limits = tls_limits or tlsrpt.TLSLimits()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = twisted_clock(reactor)
        self._current: defer.Deferred[Any] | None = None

    def start(self) -> None:
        """Scan now and every ``interval`` seconds until :meth:`stop`."""
        self._loop.start(self.interval, now=True)

    def stop(self) -> defer.Deferred[Any]:
        """Stop scanning; fires when a scan in progress has finished."""
        if self._loop.running:
            self._loop.stop()
        return self._current if self._current is not None else defer.succeed(None)

    def _tick(self) -> defer.Deferred[Any]:
        d = defer.Deferred.fromCoroutine(self.scan_once())
        d.addErrback(lambda f: log.error("dmarc incoming scan failed",
                                         error=f.getErrorMessage(), traceback=f.getTraceback()))
        self._current = d
        return d

    async def scan_once(self) -> dict[str, int]:
        """Handle every unscanned message (in batches); counts by outcome."""
        counts = {"stored": 0, "duplicate": 0, "refused": 0}
        while True:
            batch = await self.database.run(dmarc_store.unscanned_report_messages,
                                            self.address, BATCH)
            for sha256, blob in batch:
                counts[await self._one(sha256, blob)] += 1
            if len(batch) < BATCH:
                return counts

    async def _one(self, sha256: str, blob: bytes) -> str:
        if tlsrpt.is_report_message(blob):
            return await self._one_tls(sha256, blob)
        try:
            report = await defer_to_pool(self.reactor, self.pool,
                                         dmarcreport.parse_report_message, blob, self.limits)
        except Exception as exc:  # noqa: BLE001 - a mail that breaks the parser must not loop
            why = str(exc) if isinstance(exc, dmarcreport.ReportError) else "unparseable report"
            log.warning("dmarc report refused", message_sha256=sha256, error=why)
            return str(await self.database.run(dmarc_store.store_incoming_report, sha256, None,
                                               why))
        status = await self.database.run(dmarc_store.store_incoming_report, sha256, report)
        log.info("dmarc report received", message_sha256=sha256, status=status,
                 org_name=report.org_name, report_id=report.report_id, domain=report.domain,
                 records=len(report.rows))
        return str(status)

    async def _one_tls(self, sha256: str, blob: bytes) -> str:
        try:
            report = await defer_to_pool(self.reactor, self.pool, tlsrpt.parse_report_message,
                                         blob, self.tls_limits)
        except Exception as exc:  # noqa: BLE001 - a mail that breaks the parser must not loop
            why = str(exc) if isinstance(exc, dmarcreport.ReportError) else "unparseable report"
            log.warning("tls report refused", message_sha256=sha256, error=why)
            return str(await self.database.run(tlsreports.store_incoming_report, sha256, None,
                                               why))
        status = await self.database.run(tlsreports.store_incoming_report, sha256, report)
        log.info("tls report received", message_sha256=sha256, status=status,
                 org_name=report.org_name, report_id=report.report_id,
                 domains=list(report.domains)[:10], successful=report.successes,
                 failed=report.failures)
        return str(status)
