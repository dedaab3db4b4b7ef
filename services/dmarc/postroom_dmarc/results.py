"""Keeping verdicts for aggregate reports: the row made from a verdict, written in the background.

A check's answer never waits for its row: :class:`ResultRecorder` hands the
write to the `db` pool and returns at once, so a slow or broken database can
neither change a verdict nor delay it. Writes waiting at once are capped;
past the cap a row is dropped (and logged) rather than queued without bound.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from postroom.interfaces import DelayedCall, ReactorThreads, global_reactor
from postroom.logs import get_logger
from postroom.store.db import Database, StoreSession
from postroom.store.dmarc import DmarcRecord, record_result, record_results
from postroom_dmarc.dkimcheck import DKIMResult
from postroom_dmarc.verdict import CheckRequest, Verdict

log = get_logger("dmarc-results")

MAX_PENDING = 1000
# rows written in one transaction at most
MAX_BATCH = 100
# under load, a transaction starts at most this often (seconds): the rows of the checks in
# between share it, its thread hand-off and its commit
MIN_INTERVAL = 0.05
# the store's check constraints; anything else is stored as the nearest error
_SPF = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
_DKIM = ("none", "pass", "fail", "policy", "neutral", "temperror", "permerror")
_DMARC = ("none", "pass", "fail", "temperror", "permerror")
_POLICIES = ("none", "quarantine", "reject")


def _one_of(value: str | None, allowed: tuple[str, ...], fallback: str) -> str:
    return value if value in allowed else fallback


@functools.lru_cache(maxsize=4096)
def _source_ip(client_ip: str) -> str | None:
    """The client address in its normal text form, or None when it is not an IP address."""
    try:
        return str(ipaddress.ip_address(client_ip))
    except ValueError:
        return None


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


def record_for(request: CheckRequest, verdict: Verdict,
               content: list[dict[str, Any]] | None = None) -> DmarcRecord | None:
    """The row to keep for ``verdict``, or None when it has nothing to report.

    Nothing is kept for a ``tempfail`` (the message was not taken; its retry
    is evaluated again), a message without a usable From domain, or a client
    address that is not an IP address.
    """
    dmarc = verdict.dmarc
    if verdict.disposition == "tempfail" or not dmarc.from_domain:
        return None
    source_ip = _source_ip(request.client_ip)
    if source_ip is None:
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
    if content:
        # each content check's outcome (rspamd, clamd, attachments) for `postroom trace`
        detail["content"] = [{"name": c.get("name"), "action": c.get("action"),
                              "reason": c.get("reason")} for c in content[:10]]
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


def store_batch(session: StoreSession, rows: list[DmarcRecord]) -> None:
    """Store several verdict rows in the caller's transaction (one commit for all)."""
    record_results(session, rows)


def _log_not_stored(failure: Failure, queue_id: str | None) -> None:
    log.error("dmarc result not stored", queue_id=queue_id, error=failure.getErrorMessage())


class ResultRecorder:
    """Writes verdict rows through ``database.run`` without anyone waiting for them.

    Group commit: while one write is in flight, and until ``min_interval``
    after the last one started, new rows gather in a buffer and go together in
    the next transaction (at most ``max_batch``), so under load a transaction
    (and its thread hand-off, pool ping and commit) serves many checks, and
    when idle a row is written at once. :meth:`drain` writes what is buffered
    without waiting out the interval. ``pending`` counts buffered and in-flight
    rows.
    """

    def __init__(self, database: Database, *, max_pending: int = MAX_PENDING,
                 max_batch: int = MAX_BATCH, min_interval: float = MIN_INTERVAL,
                 reactor: ReactorThreads | None = None) -> None:
        self.database = database
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.min_interval = min_interval
        if reactor is None:
            reactor = getattr(database, "reactor", None)
        if reactor is None:
            reactor = global_reactor()
        self.reactor: ReactorThreads = reactor
        self._buffer: list[tuple[str | None, DmarcRecord]] = []
        self._writing = 0
        self._started = float("-inf")  # when the last write started (reactor.seconds())
        # the delayed write, while rows wait out min_interval
        self._timer: DelayedCall | None = None
        self._idle_waiters: list[defer.Deferred[None]] = []

    @property
    def pending(self) -> int:
        return len(self._buffer) + self._writing

    def record(self, request: CheckRequest, verdict: Verdict,
               content: list[dict[str, Any]] | None = None) -> None:
        """Start storing ``verdict`` (and the content checks' results); never raises."""
        try:
            row = record_for(request, verdict, content)
            if row is None:
                return
            if self.pending >= self.max_pending:
                log.warning("dmarc result dropped", queue_id=request.queue_id,
                            reason="too many writes pending", pending=self.pending)
                return
            self._buffer.append((request.queue_id, row))
            if not self._writing:
                self._next_write()
        except Exception as exc:  # noqa: BLE001 - storing must never break a check
            log.error("dmarc result not stored", queue_id=request.queue_id, error=str(exc))

    def _next_write(self) -> None:
        """Write the buffer now, or when ``min_interval`` since the last write has passed."""
        wait = self._started + self.min_interval - self.reactor.seconds()
        if wait <= 0 or len(self._buffer) >= self.max_batch or self._idle_waiters:
            self._flush()
        elif self._timer is None:
            self._timer = self.reactor.callLater(wait, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if not self._writing and self._buffer:
            self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        self._started = self.reactor.seconds()
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
            self._next_write()
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
        if not self._writing:
            self._flush()  # rows waiting out min_interval go now
        return waiter
