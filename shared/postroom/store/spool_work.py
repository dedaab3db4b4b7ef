"""The spool as the relay's work queue: lock an entry's recipients, hand local ones to the mda.

The relay (``postroom_mta.worker_store``) composes these in one transaction
per `outbound` entry and per set of results. Recipients are locked ``FOR
UPDATE`` (in id order, so two workers never deadlock) while their state
changes; bounces lock ``SKIP LOCKED``, so two mta replicas split the work.
The per-entry statements are prepared (docs/decisions/0005, 0006).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from postroom.store.models import SpoolMessage, SpoolRecipient
from postroom.store.prepared import Prepared
from postroom.store.spool import RecipientInfo, _recipient, mark_bounced


@dataclass(frozen=True)
class EntryRecipient:
    """One recipient of an `outbound` entry, locked by :func:`lock_entry`."""

    id: int
    address: str
    state: str
    stream: str
    attempts: int
    next_attempt_at: datetime
    notify: str | None
    orcpt: str | None
    # the address's domain as the statement lowercased it, and whether a domain of that
    # exact name is ours (None: no domain); worker_store uses it when it is the
    # normalised form, and asks postroom.store.domains otherwise
    domain: str | None = None
    domain_local: bool | None = None


@dataclass(frozen=True)
class LockedEntry:
    """A spooled message and those of an entry's recipients that still exist, locked."""

    mail_from: str
    kind: str
    ret: str | None
    envid: str | None
    received_at: datetime
    disposition: str
    message_id: int
    recipients: tuple[EntryRecipient, ...]


def lock_entry(session: Session, queue_id: str,
               recipient_ids: Sequence[int]) -> LockedEntry | None:
    """The message ``queue_id`` with its recipients among ``recipient_ids`` locked, in id order.

    None when the message is gone. One prepared statement: the message and the
    locks in one round trip, however many recipients, and whether each
    recipient's domain is ours (no statement of its own per domain).
    """
    rows = _LOCK_ENTRY.execute(session.connection(),
                               {"queue_id": queue_id, "ids": sorted(set(recipient_ids))}).all()
    if not rows:
        return None
    head = rows[0]
    return LockedEntry(
        mail_from=head.mail_from, kind=head.kind, ret=head.ret, envid=head.envid,
        received_at=head.received_at, disposition=head.disposition, message_id=head.message_id,
        recipients=tuple(EntryRecipient(r.rid, r.address, r.state, r.stream, r.attempts,
                                        r.next_attempt_at, r.notify, r.orcpt, r.rdomain,
                                        r.rlocal)
                         for r in rows if r.rid is not None))


# The message (one row even when no recipient matches: a LEFT JOIN on the locked ones) and
# the entry's recipients locked in id order, as the ORM's SELECT ... FOR UPDATE did.
_LOCK_ENTRY = Prepared("relay_load_work", """
WITH r AS (
    SELECT r.id, r.address, r.state, r.stream, r.attempts, r.next_attempt_at, r.notify,
           r.orcpt
    FROM spool_recipients r
    WHERE r.spool_message_id = (SELECT id FROM spool_messages WHERE queue_id = %(queue_id)s)
      AND r.id = ANY(CAST(%(ids)s AS bigint[]))
    ORDER BY r.id
    FOR UPDATE)
SELECT m.mail_from, m.kind, m.ret, m.envid, m.received_at, m.disposition, m.message_id,
       r.id AS rid, r.address, r.state, r.stream, r.attempts, r.next_attempt_at, r.notify,
       r.orcpt, d.rdomain,
       EXISTS (SELECT 1 FROM domains WHERE name = d.rdomain) AS rlocal
FROM spool_messages m LEFT JOIN r ON true
LEFT JOIN LATERAL (
    SELECT lower(rtrim(substring(r.address from '@([^@]*)$'), '.')) AS rdomain) d ON true
WHERE m.queue_id = %(queue_id)s
ORDER BY r.id
""")


def move_to_deliver(session: Session, recipient_ids: Sequence[int], now: datetime) -> None:
    """Hand recipients to the mda: the `deliver` stream, due now, marked as enqueued now."""
    _MOVE_TO_DELIVER.execute(session.connection(), {"ids": list(recipient_ids), "now": now})


# one plain statement (no ORM session synchronisation)
_MOVE_TO_DELIVER = Prepared(
    "relay_move_to_deliver",
    "UPDATE spool_recipients SET stream = 'deliver', next_attempt_at = %(now)s,"
    " enqueued_at = %(now)s, updated_at = now() WHERE id = ANY(CAST(%(ids)s AS bigint[]))")


def lock_recipients(session: Session, recipient_ids: Sequence[int]) -> list[RecipientInfo]:
    """The recipients ``recipient_ids``, locked in id order (to record their results)."""
    rows = session.execute(
        select(SpoolRecipient).where(SpoolRecipient.id.in_(list(recipient_ids)))
        .order_by(SpoolRecipient.id).with_for_update()).scalars().all()
    return [_recipient(row) for row in rows]


def bounce_failed(session: Session, spool_message_id: int) -> list[RecipientInfo]:
    """Mark a message's failed recipients ``bounced``; those marked, as they are now.

    Rows another transaction holds are skipped (SKIP LOCKED): that one bounces
    them. The caller spools the DSN in the same transaction.
    """
    rows = session.execute(
        select(SpoolRecipient).where(SpoolRecipient.spool_message_id == spool_message_id,
                                     SpoolRecipient.state == "failed")
        .order_by(SpoolRecipient.id).with_for_update(skip_locked=True)).scalars().all()
    if not rows:
        return []
    mark_bounced(session, [row.id for row in rows])
    return [_recipient(row) for row in rows]


def failed_queue_ids(session: Session, limit: int = 100) -> list[str]:
    """Messages with failed recipients whose bounce is not made yet (e.g. failed by the mda)."""
    rows = session.execute(
        select(SpoolMessage.queue_id).join(
            SpoolRecipient, SpoolRecipient.spool_message_id == SpoolMessage.id)
        .where(SpoolRecipient.state == "failed").group_by(SpoolMessage.queue_id)
        .order_by(func.min(SpoolRecipient.updated_at)).limit(limit)).scalars().all()
    return list(rows)
