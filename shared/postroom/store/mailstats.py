"""The console's mail figures, aggregated in SQL: delivery outcomes and rejects per hour,
and the spool's backlog per stream.

Everything comes from tables every replica writes (spool attempts, spool recipients,
DMARC verdicts), so the figures are the whole installation's, however many
processes there are. SMTP-time refusals (unknown recipient, relay, sending
limits) are not in the database: the console reads those from the services'
/metrics (postroom.ops.probe).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Text, case, cast, func, literal, select, text
from sqlalchemy.orm import Session

from postroom.store.models import DmarcResult, SpoolAttempt, SpoolMessage, SpoolRecipient
from postroom.store.spool import domain_sql

# a reject reason is a label on a page and an API field: bounded
MAX_REASON_CHARS = 40


@dataclass(frozen=True)
class HourCount:
    """How many of one kind in one UTC hour (``hour`` is its start, whatever the session's
    time zone)."""

    hour: datetime
    reason: str
    count: int


@dataclass(frozen=True)
class StreamBacklog:
    """The spool's unfinished recipients of one stream."""

    stream: str
    pending: int          # waiting for delivery (queued or deferred)
    deferred: int         # of which tried at least once
    failed: int           # failed, the bounce not yet sent
    oldest: datetime | None  # the oldest pending recipient's message arrival


def _concerns(domains: Collection[str]) -> object:
    wanted = sorted({d.lower() for d in domains})
    return (func.coalesce(domain_sql(SpoolMessage.mail_from).in_(wanted), False)
            | func.coalesce(domain_sql(SpoolRecipient.address).in_(wanted), False))


def outcomes_per_hour(session: Session, since: datetime,
                      domains: Collection[str] | None = None) -> list[HourCount]:
    """Delivery attempts' outcomes (delivered, deferred, failed, bounced) per hour since
    ``since``; with ``domains``, only recipients whose own or sender's domain is one."""
    hour = func.date_trunc("hour", SpoolAttempt.at, "UTC")
    query = (select(hour, SpoolAttempt.result, func.count())
             .join(SpoolRecipient, SpoolRecipient.id == SpoolAttempt.recipient_id)
             .join(SpoolMessage, SpoolMessage.id == SpoolRecipient.spool_message_id)
             .where(SpoolAttempt.at >= since)
             .group_by(hour, SpoolAttempt.result).order_by(hour, SpoolAttempt.result))
    if domains is not None:
        query = query.where(_concerns(domains))  # type: ignore[arg-type]
    return [HourCount(hour=h, reason=r, count=int(c)) for h, r, c in session.execute(query)]


# the first content check whose action was reject (the verdict's reason); DMARC's own
# reject when its disposition says so
_CONTENT_REASON = text(
    "(SELECT c->>'check' FROM jsonb_array_elements(CASE WHEN jsonb_typeof("
    "dmarc_results.detail->'content') = 'array' THEN dmarc_results.detail->'content' "
    "ELSE '[]'::jsonb END) AS c WHERE c->>'action' = 'reject' LIMIT 1)")


def rejects_per_hour(session: Session, since: datetime) -> list[HourCount]:
    """Inbound messages refused after DATA per hour since ``since``, by reason: ``dmarc``
    (the sender's DMARC policy) or ``content:<check>`` (attachments, clamd, rspamd)."""
    hour = func.date_trunc("hour", DmarcResult.received_at, "UTC")
    reason = case(
        (DmarcResult.disposition == "reject", literal("dmarc")),
        else_=func.left(literal("content:") + func.coalesce(cast(_CONTENT_REASON, Text),
                                                            literal("other")),
                        MAX_REASON_CHARS))
    query = (select(hour, reason, func.count())
             .where(DmarcResult.received_at >= since,
                    (DmarcResult.disposition == "reject")
                    | (DmarcResult.detail["verdict"].astext == "reject"))
             .group_by(hour, reason).order_by(hour, reason))
    return [HourCount(hour=h, reason=str(r), count=int(c)) for h, r, c in session.execute(query)]


def spool_backlog(session: Session, domains: Collection[str] | None = None
                  ) -> list[StreamBacklog]:
    """Unfinished recipients per stream (pending, of which deferred; failed) and the oldest
    pending one's arrival; with ``domains``, only those concerning one of them."""
    pending = SpoolRecipient.state == "pending"
    query = (select(SpoolRecipient.stream,
                    func.count().filter(pending),
                    func.count().filter(pending & (SpoolRecipient.attempts > 0)),
                    func.count().filter(SpoolRecipient.state == "failed"),
                    func.min(SpoolMessage.received_at).filter(pending))
             .join(SpoolMessage, SpoolMessage.id == SpoolRecipient.spool_message_id)
             .where(SpoolRecipient.state.in_(("pending", "failed")))
             .group_by(SpoolRecipient.stream).order_by(SpoolRecipient.stream))
    if domains is not None:
        query = query.where(_concerns(domains))  # type: ignore[arg-type]
    return [StreamBacklog(stream=s, pending=int(p), deferred=int(d), failed=int(f), oldest=o)
            for s, p, d, f, o in session.execute(query)]
