"""DMARC verdicts kept for aggregate reports (RFC 7489 section 7.2)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, delete, exists, func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from postroom.store.models import (
    DmarcIncomingReport,
    DmarcResult,
    Mailbox,
    MailboxEntry,
    Message,
    User,
)
from postroom.store.prepared import Prepared

if TYPE_CHECKING:
    from postroom.mailauth.dmarcreport import IncomingReport


@dataclass(frozen=True)
class DmarcRecord:
    source_ip: str
    header_from: str
    spf_result: str
    dkim_result: str
    dmarc_result: str
    disposition: str
    reporting_domain: str
    envelope_from: str | None = None
    spf_domain: str | None = None
    spf_aligned: bool = False
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_aligned: bool = False
    policy: str | None = None
    queue_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    received_at: datetime | None = None
    id: int | None = None


_COLUMNS = ("source_ip", "header_from", "spf_result", "dkim_result", "dmarc_result",
            "disposition", "reporting_domain", "envelope_from", "spf_domain", "spf_aligned",
            "dkim_domain", "dkim_selector", "dkim_aligned", "policy", "queue_id", "detail")


def record_result(session: Session, record: DmarcRecord) -> int:
    """Store one verdict; returns its id."""
    row = DmarcResult(**{name: getattr(record, name) for name in _COLUMNS})
    if record.received_at is not None:
        row.received_at = record.received_at
    session.add(row)
    session.flush()
    return row.id


# One fixed statement for any number of rows, one array per column (docs/decisions/0006): the
# dmarc service writes a batch per transaction, and SQLAlchemy's multi-row INSERT compiled
# and bound a new statement for each batch size. A NULL received_at is the server's now(),
# as the column's default; rows are inserted in list order.
_RECORD_RESULTS = Prepared("dmarc_record_results", """
INSERT INTO dmarc_results (received_at, source_ip, header_from, spf_result, dkim_result,
                           dmarc_result, disposition, reporting_domain, envelope_from,
                           spf_domain, spf_aligned, dkim_domain, dkim_selector, dkim_aligned,
                           policy, queue_id, detail)
SELECT coalesce(r.received_at, now()), CAST(r.source_ip AS inet), r.header_from, r.spf_result,
       r.dkim_result, r.dmarc_result, r.disposition, r.reporting_domain, r.envelope_from,
       r.spf_domain, r.spf_aligned, r.dkim_domain, r.dkim_selector, r.dkim_aligned, r.policy,
       r.queue_id, CAST(r.detail AS jsonb)
FROM unnest(CAST(%(received_at)s AS timestamptz[]), CAST(%(source_ip)s AS text[]),
            CAST(%(header_from)s AS text[]), CAST(%(spf_result)s AS text[]),
            CAST(%(dkim_result)s AS text[]), CAST(%(dmarc_result)s AS text[]),
            CAST(%(disposition)s AS text[]), CAST(%(reporting_domain)s AS text[]),
            CAST(%(envelope_from)s AS text[]), CAST(%(spf_domain)s AS text[]),
            CAST(%(spf_aligned)s AS boolean[]), CAST(%(dkim_domain)s AS text[]),
            CAST(%(dkim_selector)s AS text[]), CAST(%(dkim_aligned)s AS boolean[]),
            CAST(%(policy)s AS text[]), CAST(%(queue_id)s AS text[]),
            CAST(%(detail)s AS text[]))
     WITH ORDINALITY AS r(received_at, source_ip, header_from, spf_result, dkim_result,
                          dmarc_result, disposition, reporting_domain, envelope_from,
                          spf_domain, spf_aligned, dkim_domain, dkim_selector, dkim_aligned,
                          policy, queue_id, detail, n)
ORDER BY r.n
""")


def record_results(session: Session, records: list[DmarcRecord]) -> None:
    """Store several verdicts with one statement (those without ``received_at`` first)."""
    if not records:
        return
    # the order of the two multi-row INSERTs this replaced: unstamped rows, then stamped ones
    rows = [r for r in records if r.received_at is None] + \
        [r for r in records if r.received_at is not None]
    params: dict[str, list[Any]] = {name: [getattr(r, name) for r in rows]
                                    for name in _COLUMNS if name != "detail"}
    # JSONB's own bind processing: json.dumps, None being JSON null
    params["detail"] = [json.dumps(r.detail) for r in rows]
    params["received_at"] = [r.received_at for r in rows]
    _RECORD_RESULTS.execute(session.connection(), params)


def results_for_report(session: Session, reporting_domain: str, start: datetime,
                       end: datetime) -> list[DmarcRecord]:
    """A domain's verdicts received in [start, end), oldest first."""
    rows = session.execute(
        select(DmarcResult).where(DmarcResult.reporting_domain == reporting_domain.lower(),
                                  DmarcResult.received_at >= start,
                                  DmarcResult.received_at < end)
        .order_by(DmarcResult.received_at, DmarcResult.id)).scalars()
    return [DmarcRecord(**{name: getattr(r, name) for name in _COLUMNS},
                        received_at=r.received_at, id=r.id) for r in rows]


def reporting_domains(session: Session, start: datetime, end: datetime) -> list[str]:
    """Domains with verdicts in [start, end): the reports to send."""
    rows = session.execute(
        select(DmarcResult.reporting_domain).where(DmarcResult.received_at >= start,
                                                   DmarcResult.received_at < end)
        .distinct().order_by(DmarcResult.reporting_domain)).scalars()
    return list(rows)


def purge_results(session: Session, before: datetime) -> int:
    """Delete verdicts older than ``before`` (after their reports were sent)."""
    done = session.execute(delete(DmarcResult).where(DmarcResult.received_at < before))
    return int(getattr(done, "rowcount", 0))


def try_lock_report(session: Session, report_id: str) -> bool:
    """Take the transaction's advisory lock on aggregate report ``report_id``; False if taken.

    Several dmarc replicas build a (domain, period) report at once: the one that
    holds the lock spools it; the others see it taken and try again later. The
    lock ends with the transaction.
    """
    key = int.from_bytes(hashlib.sha256(report_id.encode()).digest()[:8], "big", signed=True)
    return bool(session.execute(select(func.pg_try_advisory_xact_lock(key))).scalar())


# --- incoming aggregate reports (parsed by postroom.mailauth.dmarcreport, scanned by dmarc)


def unscanned_report_messages(session: Session, address: str,
                              limit: int = 50) -> list[tuple[str, bytes]]:
    """(sha256, bytes) of messages in any mailbox of ``address`` not yet looked at, oldest first."""
    seen = exists().where(DmarcIncomingReport.message_sha256 == Message.sha256)
    rows = session.execute(
        select(Message.sha256, Message.blob)
        .join(MailboxEntry, MailboxEntry.message_id == Message.id)
        .join(Mailbox, Mailbox.id == MailboxEntry.mailbox_id)
        .join(User, User.id == Mailbox.user_id)
        .where(User.address == address.lower(), ~seen)
        .group_by(Message.id).order_by(func.min(MailboxEntry.id)).limit(limit))
    return [(sha, bytes(blob)) for sha, blob in rows]


def store_incoming_report(session: Session, sha256: str, report: IncomingReport | None,
                          error: str | None = None) -> str:
    """Record one report mail: ``stored``, ``duplicate`` (same reporter and id) or ``refused``."""
    if report is None:
        values: dict[str, Any] = {"status": "refused", "error": (error or "")[:500]}
    else:
        values = {"status": "stored", "org_name": report.org_name,
                  "report_id": report.report_id, "domain": report.domain,
                  "begin_at": report.begin, "end_at": report.end, "policy": report.policy,
                  "rows": [r.to_json() for r in report.rows]}
    # no conflict target: a second replica's copy (same sha256) or a resent report (same
    # reporter and report id) both land here and are not stored twice
    done = session.execute(insert(DmarcIncomingReport).values(message_sha256=sha256, **values)
                           .on_conflict_do_nothing().returning(DmarcIncomingReport.id))
    if done.first() is not None:
        return str(values["status"])
    session.execute(insert(DmarcIncomingReport)
                    .values(message_sha256=sha256, status="duplicate",
                            org_name=values.get("org_name"), report_id=None)
                    .on_conflict_do_nothing())
    return "duplicate"


def reports_on(domain: str) -> ColumnElement[bool]:
    """The condition "a stored report is about ``domain`` or one of its subdomains"."""
    domain = domain.lower().rstrip(".")
    return or_(DmarcIncomingReport.domain == domain,
               DmarcIncomingReport.domain.endswith("." + domain, autoescape=True))


def incoming_report_rows(session: Session, domain: str,
                         since: datetime) -> list[tuple[str, dict[str, Any]]]:
    """(reporter, row JSON) of stored reports on ``domain`` or a subdomain since ``since``."""
    domain = domain.lower().rstrip(".")
    reports = session.execute(
        select(DmarcIncomingReport.org_name, DmarcIncomingReport.rows)
        .where(DmarcIncomingReport.status == "stored", DmarcIncomingReport.end_at >= since,
               reports_on(domain))
        .order_by(DmarcIncomingReport.id))
    return [(str(org), row) for org, rows in reports for row in rows]
