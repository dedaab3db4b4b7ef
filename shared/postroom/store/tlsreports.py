"""TLS reporting (RFC 8460): the relay's TLS session results, and the TLS reports others send us.

The mta writes one row per outbound TLS negotiation (or policy failure) with
:func:`record_results`, a fixed prepared statement for any batch size
(docs/decisions/0006), so recording costs the relay one shared transaction
per batch, never a round trip per message. The dmarc service reads them back
grouped (:func:`results_for_report`) for its daily report and purges them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from postroom.store.models import TlsIncomingReport, TlsResult
from postroom.store.prepared import Prepared

if TYPE_CHECKING:
    from postroom.mailauth.tlsrpt import IncomingTLSReport, ResultRow


@dataclass(frozen=True)
class TLSResult:
    """One outbound TLS session's outcome; ``result_type`` None is a success."""

    policy_domain: str
    policy_type: str  # sts, tlsa, no-policy-found
    mx_host: str = ""
    result_type: str | None = None
    policy_string: tuple[str, ...] | None = None
    sending_ip: str | None = None
    receiving_ip: str | None = None
    failure_detail: str | None = None
    recorded_at: datetime | None = None


# One statement for any number of rows (docs/decisions/0006): an array per column
_RECORD = Prepared("tls_record_results", """
INSERT INTO tls_results (recorded_at, policy_domain, policy_type, policy_string, mx_host,
                         sending_ip, receiving_ip, result_type, failure_detail)
SELECT coalesce(r.recorded_at, now()), r.policy_domain, r.policy_type,
       CASE WHEN r.policy_string IS NULL THEN NULL
            ELSE ARRAY(SELECT jsonb_array_elements_text(CAST(r.policy_string AS jsonb))) END,
       r.mx_host, CAST(r.sending_ip AS inet), CAST(r.receiving_ip AS inet), r.result_type,
       r.failure_detail
FROM unnest(CAST(%(recorded_at)s AS timestamptz[]), CAST(%(policy_domain)s AS text[]),
            CAST(%(policy_type)s AS text[]), CAST(%(policy_string)s AS text[]),
            CAST(%(mx_host)s AS text[]), CAST(%(sending_ip)s AS text[]),
            CAST(%(receiving_ip)s AS text[]), CAST(%(result_type)s AS text[]),
            CAST(%(failure_detail)s AS text[]))
     AS r(recorded_at, policy_domain, policy_type, policy_string, mx_host, sending_ip,
          receiving_ip, result_type, failure_detail)
""")


def record_results(session: Session, rows: list[TLSResult]) -> None:
    """Store several session results with one statement."""
    if not rows:
        return

    _RECORD.execute(session.connection(), {
        "recorded_at": [r.recorded_at for r in rows],
        "policy_domain": [r.policy_domain.lower().rstrip(".") for r in rows],
        "policy_type": [r.policy_type for r in rows],
        # a text[] of text[] is not a thing: each policy string travels as a JSON array
        "policy_string": [json.dumps(list(r.policy_string)) if r.policy_string is not None
                          else None for r in rows],
        "mx_host": [r.mx_host.lower().rstrip(".") for r in rows],
        "sending_ip": [r.sending_ip for r in rows],
        "receiving_ip": [r.receiving_ip for r in rows],
        "result_type": [r.result_type for r in rows],
        "failure_detail": [(r.failure_detail or "")[:300] or None for r in rows],
    })


def reporting_domains(session: Session, start: datetime, end: datetime) -> list[str]:
    """Policy domains with results in [start, end): the TLS reports to send."""
    rows = session.execute(
        select(TlsResult.policy_domain).where(TlsResult.recorded_at >= start,
                                              TlsResult.recorded_at < end)
        .distinct().order_by(TlsResult.policy_domain)).scalars()
    return list(rows)


def results_for_report(session: Session, policy_domain: str, start: datetime,
                       end: datetime) -> list[ResultRow]:
    """``policy_domain``'s results in [start, end), counted by policy and outcome."""
    from postroom.mailauth.tlsrpt import ResultRow

    r = TlsResult
    keys = (r.policy_type, r.policy_string, r.mx_host, r.sending_ip, r.receiving_ip,
            r.result_type, r.failure_detail)
    rows = session.execute(
        select(*keys, func.count()).where(r.policy_domain == policy_domain.lower(),
                                          r.recorded_at >= start, r.recorded_at < end)
        .group_by(*keys).order_by(r.policy_type, r.result_type.nulls_first(), r.mx_host))
    return [ResultRow(policy_type=kind, policy_string=tuple(ps) if ps is not None else None,
                      mx_host=mx, sending_ip=str(s) if s else None,
                      receiving_ip=str(rip) if rip else None, result_type=result,
                      failure_detail=why, count=int(count))
            for kind, ps, mx, s, rip, result, why, count in rows]


def outbound_summary(session: Session, policy_domain: str,
                     since: datetime) -> dict[str, Any]:
    """Our own sessions to ``policy_domain`` since ``since``: successes and failures by type."""
    rows = session.execute(
        select(TlsResult.result_type, func.count())
        .where(TlsResult.policy_domain == policy_domain.lower(), TlsResult.recorded_at >= since)
        .group_by(TlsResult.result_type))
    counts = {kind: int(n) for kind, n in rows}
    return {"successful": counts.pop(None, 0), "failures": counts}


def purge_results(session: Session, before: datetime) -> int:
    """Delete results older than ``before`` (after their reports were sent)."""
    done = session.execute(delete(TlsResult).where(TlsResult.recorded_at < before))
    return int(getattr(done, "rowcount", 0))


# --- incoming TLS reports (parsed by postroom.mailauth.tlsrpt, read by the dmarc service)


def store_incoming_report(session: Session, sha256: str, report: IncomingTLSReport | None,
                          error: str | None = None) -> str:
    """Record one TLS report mail: ``stored``, ``duplicate`` or ``refused``."""
    if report is None:
        values: dict[str, Any] = {"status": "refused", "error": (error or "")[:500]}
    else:
        values = {"status": "stored", "org_name": report.org_name,
                  "report_id": report.report_id, "begin_at": report.begin,
                  "end_at": report.end, "domains": list(report.domains),
                  "policies": report.policies}
    done = session.execute(insert(TlsIncomingReport).values(message_sha256=sha256, **values)
                           .on_conflict_do_nothing().returning(TlsIncomingReport.id))
    if done.first() is not None:
        return str(values["status"])
    session.execute(insert(TlsIncomingReport)
                    .values(message_sha256=sha256, status="duplicate",
                            org_name=values.get("org_name"), report_id=None)
                    .on_conflict_do_nothing())
    return "duplicate"


@dataclass(frozen=True)
class IncomingTLSRow:
    """A stored TLS report about a domain: the reporter, its period and that domain's policies."""

    org_name: str
    report_id: str
    begin_at: datetime
    end_at: datetime
    received_at: datetime
    successful: int
    failed: int
    policies: list[dict[str, Any]]


def incoming_reports(session: Session, domain: str, *, since: datetime | None = None,
                     limit: int = 100) -> list[IncomingTLSRow]:
    """Stored reports covering ``domain`` (newest first), each cut to that domain's policies."""
    domain = domain.lower().rstrip(".")
    query = select(TlsIncomingReport).where(TlsIncomingReport.status == "stored",
                                            TlsIncomingReport.domains.contains([domain]))
    if since is not None:
        query = query.where(TlsIncomingReport.end_at >= since)
    found = session.execute(query.order_by(TlsIncomingReport.begin_at.desc(),
                                           TlsIncomingReport.id.desc())
                            .limit(limit)).scalars()
    out = []
    for row in found:
        mine = [p for p in row.policies if p["policy"]["policy-domain"] == domain]
        out.append(IncomingTLSRow(
            org_name=row.org_name or "", report_id=row.report_id or "",
            begin_at=row.begin_at, end_at=row.end_at,  # type: ignore[arg-type]
            received_at=row.received_at,
            successful=sum(p["summary"]["total-successful-session-count"] for p in mine),
            failed=sum(p["summary"]["total-failure-session-count"] for p in mine),
            policies=mine))
    return out
