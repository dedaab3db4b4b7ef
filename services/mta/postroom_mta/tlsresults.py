"""Recording outbound TLS outcomes for TLS reports (RFC 8460): what a session's result means, and
writing it in the background.

:func:`classify` turns one delivery attempt's result into an RFC 8460 result
(success, or a result type and why) or None when no TLS negotiation was
attempted (the connection or greeting failed, or TLS is off for the route).
:class:`TLSResultRecorder` never makes the relay wait: rows gather in memory
and one `db` transaction writes them every ``interval`` seconds (or once
``batch`` are waiting) with one prepared statement; past ``max_pending`` a
row is dropped and counted rather than queued without bound.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.python.failure import Failure

from postroom.interfaces import ReactorThreads, twisted_clock
from postroom.logs import get_logger
from postroom.metrics import Counter
from postroom.store.db import Database
from postroom.store.tlsreports import TLSResult, record_results
from postroom_mta.smtpclient import TLS_FAILED, TLS_REQUIRED, DeliveryResult

log = get_logger("tls-results")

INTERVAL = 5.0
BATCH = 500
MAX_PENDING = 20000
# stages reached before any TLS question was asked: no session to report
_NOT_TLS = ("connect", "greeting", "route", "helo")


def classify(result: DeliveryResult, policy_type: str) -> tuple[str | None, str | None] | None:
    """(result type or None for success, detail) of one attempt; None when not a TLS session."""
    first = result.recipients[0] if result.recipients else None
    if first is None:
        return None if result.tls is None else (None, None)
    text = first.text
    lowered = text.lower()
    if first.enhanced == TLS_REQUIRED.enhanced and first.code == TLS_REQUIRED.code:
        return "starttls-not-supported", text[:300]
    if first.enhanced == TLS_FAILED.enhanced and first.code == TLS_FAILED.code \
            and "tls" in lowered:
        if "starttls refused" in lowered:
            return "starttls-not-supported", text[:300]
        if "expired" in lowered:
            return "certificate-expired", text[:300]
        if "mismatch" in lowered or "does not match" in lowered or "doesn't match" in lowered:
            return "certificate-host-mismatch", text[:300]
        if policy_type == "tlsa":
            return "tlsa-invalid", text[:300]
        if "verify" in lowered or "certificate" in lowered or "self signed" in lowered \
                or "self-signed" in lowered:
            return "certificate-not-trusted", text[:300]
        return "validation-failure", text[:300]
    # (a handshake that failed verification may still show a cipher: the reply decides first)
    if result.tls is not None:
        return None, None
    if first.stage in _NOT_TLS and not first.remote:
        return None  # never got as far as the EHLO answer: no TLS question asked
    if first.stage == "ehlo" and first.remote:
        return None  # refused at EHLO: nothing about TLS
    # the session went on in clear: the server did not offer (or refused) STARTTLS
    return "starttls-not-supported", "the server did not offer STARTTLS"


class TLSResultRecorder:
    """Gathers TLS results and writes them in batches; ``record`` returns at once."""

    def __init__(self, database: Database, *, reactor: ReactorThreads,
                 interval: float = INTERVAL, batch: int = BATCH,
                 max_pending: int = MAX_PENDING, dropped: Counter | None = None,
                 recorded: Counter | None = None) -> None:
        self.database = database
        self.reactor = reactor
        self.interval = interval
        self.batch = batch
        self.max_pending = max_pending
        self.dropped = dropped
        self.recorded = recorded
        self._buffer: list[TLSResult] = []
        self._writing: defer.Deferred[Any] | None = None
        self._loop = task.LoopingCall(self.flush)
        self._loop.clock = twisted_clock(reactor)

    def start(self) -> None:
        self._loop.start(self.interval, now=False)

    def record(self, row: TLSResult) -> None:
        """Keep ``row`` for the next write; never raises, never waits."""
        if len(self._buffer) >= self.max_pending:
            if self.dropped is not None:
                self.dropped.inc()
            return
        self._buffer.append(row)
        if self.recorded is not None:
            self.recorded.labels(result=row.result_type or "success").inc()
        if len(self._buffer) >= self.batch and self._writing is None:
            self.flush()

    def sts_failure(self, domain: str, result_type: str, detail: str) -> None:
        """PolicyFinder's hook for a failed policy fetch (it runs in a DNS pool thread)."""
        self.reactor.callFromThread(self.record, TLSResult(
            policy_domain=domain, policy_type="sts", result_type=result_type,
            failure_detail=detail))

    def flush(self) -> defer.Deferred[Any]:
        """Write what is buffered (one transaction); fires when written."""
        if self._writing is not None or not self._buffer:
            return self._writing or defer.succeed(None)
        rows, self._buffer = self._buffer, []

        def failed(failure: Failure) -> None:
            log.error("tls results not stored", rows=len(rows), error=failure.getErrorMessage())

        def done(_: Any) -> None:
            self._writing = None

        written = self.database.run(record_results, rows)
        self._writing = written
        written.addErrback(failed).addBoth(done)
        return written

    def stop(self) -> defer.Deferred[Any]:
        """Stop the timer and write what is left."""
        if self._loop.running:
            self._loop.stop()
        pending = self._writing
        if pending is not None:
            return pending.addCallback(lambda _: self.flush())
        return self.flush()
