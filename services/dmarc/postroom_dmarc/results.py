"""Keeping verdicts for aggregate reports: the row made from a verdict, written in the background.

A check's answer never waits for its row: :class:`ResultRecorder` hands the
write to the `db` pool and returns at once, so a slow or broken database can
neither change a verdict nor delay it. Writes waiting at once are capped;
past the cap a row is dropped (and logged) rather than queued without bound.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy.orm import Session
from twisted.internet import defer
from twisted.python.failure import Failure

from postroom.logs import get_logger
from postroom.store.dmarc import DmarcRecord, record_result, record_results
from postroom_dmarc.dkimcheck import DKIMResult
from postroom_dmarc.verdict import CheckRequest, Verdict

log = get_logger("dmarc-results")

MAX_PENDING = 1000
# rows written in one transaction at most
MAX_BATCH = 100
# the store's check constraints; anything else is stored as the nearest error
_SPF = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
_DKIM = ("none", "pass", "fail", "policy", "neutral", "temperror", "permerror")
_DMARC = ("none", "pass", "fail", "temperror", "permerror")
_POLICIES = ("none", "quarantine", "reject")


def _one_of(value: str | None, allowed: tuple[str, ...], fallback: str) -> str:
    return value if value in allowed else fallback


def _domain(address: str) -> str | None:
    domain = address.rpartition("@")[2].strip().lower().rstrip(".")
    return domain or None


def _best_signature(dkim: list[DKIMResult], from_domain: str) -> DKIMResult | None:
    """The signature the row's columns show: an aligned-looking pass, any pass, else the first."""
    def near(d: DKIMResult) -> bool:
        domain = d.domain.lower()
        return domain == from_domain or from_domain.endswith("." + domain) \
            or domain.endswith("." + from_domain)

    for wanted in (lambda d: d.result == "pass" and near(d), lambda d: d.result == "pass"):
        for signature in dkim:
            if wanted(signature):
                return signature
    return dkim[0] if dkim else None


def record_for(request: CheckRequest, verdict: Verdict) -> DmarcRecord | None:
    """The row to keep for ``verdict``, or None when it has nothing to report.

    Nothing is kept for a ``tempfail`` (the message was not taken; its retry
    is evaluated again), a message without a usable From domain, or a client
    address that is not an IP address.
    """
    dmarc = verdict.dmarc
    if verdict.disposition == "tempfail" or not dmarc.from_domain:
        return None
    try:
        source_ip = str(ipaddress.ip_address(request.client_ip))
    except ValueError:
        return None
    best = _best_signature(verdict.dkim, dmarc.from_domain)
    detail: dict[str, Any] = {
        "dkim": [{"domain": d.domain, "selector": d.selector,
                  "result": _one_of(d.result, _DKIM, "permerror")} for d in verdict.dkim],
        "spf_scope": "helo" if verdict.spf.identity == "helo" else "mfrom",
        "override": dmarc.override,
        "record": dmarc.record,
        "arc": verdict.arc.result,
    }
    return DmarcRecord(
        source_ip=source_ip,
        header_from=dmarc.from_domain,
        envelope_from=_domain(request.mail_from) if request.mail_from else None,
        spf_domain=verdict.spf.domain or None,
        spf_result=_one_of(verdict.spf.result, _SPF, "permerror"),
        spf_aligned=dmarc.spf_aligned,
        dkim_domain=best.domain if best else None,
        dkim_selector=best.selector if best else None,
        dkim_result=_one_of(best.result, _DKIM, "permerror") if best else "none",
        dkim_aligned=dmarc.dkim_aligned,
        dmarc_result=_one_of(dmarc.result, _DMARC, "permerror"),
        policy=dmarc.policy if dmarc.policy in _POLICIES else None,
        disposition=_one_of(dmarc.applied_policy, _POLICIES, "none"),
        # reports go to the domain whose record was applied (the organizational domain's
        # record covers its subdomains); without a record, the author domain
        reporting_domain=(dmarc.policy_domain or dmarc.from_domain).lower(),
        queue_id=request.queue_id,
        detail=detail,
    )


def store_batch(session: Session, rows: list[DmarcRecord]) -> None:
    """Store several verdict rows in the caller's transaction (one commit for all)."""
    record_results(session, rows)


def _log_not_stored(failure: Failure, queue_id: str | None) -> None:
    log.error("dmarc result not stored", queue_id=queue_id, error=failure.getErrorMessage())


class ResultRecorder:
    """Writes verdict rows through ``database.run`` without anyone waiting for them.

    Group commit: while one write is in flight, new rows gather in a buffer and
    go together in the next transaction (at most ``max_batch``), so under load
    a transaction (and its pool ping and commit) serves many checks, and when
    idle a row is written at once. ``pending`` counts buffered and in-flight rows.
    """

    def __init__(self, database: Any, *, max_pending: int = MAX_PENDING,
                 max_batch: int = MAX_BATCH) -> None:
        self.database = database
        self.max_pending = max_pending
        self.max_batch = max_batch
        self._buffer: list[tuple[str | None, DmarcRecord]] = []
        self._writing = 0
        self._idle_waiters: list[defer.Deferred[None]] = []

    @property
    def pending(self) -> int:
        return len(self._buffer) + self._writing

    def record(self, request: CheckRequest, verdict: Verdict) -> None:
        """Start storing ``verdict``; returns at once and never raises."""
        try:
            row = record_for(request, verdict)
            if row is None:
                return
            if self.pending >= self.max_pending:
                log.warning("dmarc result dropped", queue_id=request.queue_id,
                            reason="too many writes pending", pending=self.pending)
                return
            self._buffer.append((request.queue_id, row))
            if not self._writing:
                self._flush()
        except Exception as exc:  # noqa: BLE001 - storing must never break a check
            log.error("dmarc result not stored", queue_id=request.queue_id, error=str(exc))

    def _flush(self) -> None:
        batch, self._buffer = self._buffer[:self.max_batch], self._buffer[self.max_batch:]
        self._writing = len(batch)
        try:
            d: defer.Deferred[Any] = self.database.run(store_batch, [row for _, row in batch])
        except Exception as exc:  # noqa: BLE001 - storing must never break a check
            d = defer.fail(exc)
        d.addErrback(self._batch_failed, batch)
        d.addBoth(self._written)

    def _batch_failed(self, failure: Failure,
                      batch: list[tuple[str | None, DmarcRecord]]) -> Any:
        if len(batch) == 1:
            log.error("dmarc result not stored", queue_id=batch[0][0],
                      error=failure.getErrorMessage())
            return None
        # one bad row must not cost the others theirs: write them one at a time
        log.warning("dmarc result batch failed", rows=len(batch),
                    error=failure.getErrorMessage())
        singles = []
        for queue_id, row in batch:
            try:
                one: defer.Deferred[Any] = self.database.run(record_result, row)
            except Exception as exc:  # noqa: BLE001
                one = defer.fail(exc)
            one.addErrback(_log_not_stored, queue_id)
            singles.append(one)
        return defer.DeferredList(singles, consumeErrors=True)

    def _written(self, _: Any) -> None:
        self._writing = 0
        if self._buffer:
            self._flush()
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def drain(self) -> defer.Deferred[Any]:
        """Fires when the rows recorded so far are written (or given up; for SIGTERM)."""
        if not self.pending:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(waiter)
        return waiter
