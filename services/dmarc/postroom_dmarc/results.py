"""Keeping verdicts for aggregate reports: the row made from a verdict, written in the background.

A check's answer never waits for its row: :class:`ResultRecorder` hands the
write to the `db` pool and returns at once, so a slow or broken database can
neither change a verdict nor delay it. Writes waiting at once are capped;
past the cap a row is dropped (and logged) rather than queued without bound.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from postroom.logs import get_logger
from postroom.store.dmarc import DmarcRecord, record_result
from postroom_dmarc.dkimcheck import DKIMResult
from postroom_dmarc.verdict import CheckRequest, Verdict

log = get_logger("dmarc-results")

MAX_PENDING = 1000
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


class ResultRecorder:
    """Writes verdict rows through ``database.run`` without anyone waiting for them."""

    def __init__(self, database: Any, *, max_pending: int = MAX_PENDING) -> None:
        self.database = database
        self.max_pending = max_pending
        self._pending: set[defer.Deferred[Any]] = set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, request: CheckRequest, verdict: Verdict) -> None:
        """Start storing ``verdict``; returns at once and never raises."""
        try:
            row = record_for(request, verdict)
            if row is None:
                return
            if len(self._pending) >= self.max_pending:
                log.warning("dmarc result dropped", queue_id=request.queue_id,
                            reason="too many writes pending", pending=len(self._pending))
                return
            d: defer.Deferred[Any] = self.database.run(record_result, row)
        except Exception as exc:  # noqa: BLE001 - storing must never break a check
            log.error("dmarc result not stored", queue_id=request.queue_id, error=str(exc))
            return
        self._pending.add(d)

        def failed(failure: Failure) -> None:
            log.error("dmarc result not stored", queue_id=request.queue_id,
                      error=failure.getErrorMessage())

        def done(_: Any) -> None:
            self._pending.discard(d)

        d.addErrback(failed)
        d.addBoth(done)

    def drain(self) -> defer.Deferred[Any]:
        """Fires when the writes started so far are finished (for SIGTERM)."""
        return defer.DeferredList(list(self._pending), consumeErrors=True)
