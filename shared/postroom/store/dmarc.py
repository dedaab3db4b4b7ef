"""DMARC verdicts kept for aggregate reports (RFC 7489 section 7.2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from postroom.store.models import DmarcResult


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
