"""Local delivery's statements: the mda's fast path, and the general path's small reads.

The mda (postroom_mda.delivery) decides; these functions read and write, in
the caller's transaction, and return plain data. Mail for an account with no
alias, Sieve script or quota takes the fast path: :func:`fast_facts` (lock the
recipient and read everything) then :func:`fast_store` (write everything),
two prepared statements (docs/decisions/0005, 0006). The general path uses
the small queries below and ``mailboxes.deliver_to_mailbox``; both add the
mailbox entry with ``mailboxes.add_entry_sql``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, func, select, text, update
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from postroom.mime.fulltext import MessageText
from postroom.store import fts, spool
from postroom.store.mailboxes import add_entry_sql
from postroom.store.models import (
    Mailbox,
    Message,
    SpoolMessage,
    SpoolRecipient,
    User,
    message_texts,
    sieve_scripts,
)
from postroom.store.prepared import Prepared

# --- the blob's IMAP metadata, stored once


@dataclass(frozen=True)
class ToParse:
    """A queued message's blob id, and its bytes when its metadata or its text is missing."""

    message_id: int
    blob: bytes | None
    meta_missing: bool
    text_missing: bool


def metadata_to_parse(session: Session, queue_id: str) -> ToParse | None:
    """The blob of a queued message and what is missing of its analysis; None: no such entry."""
    # one statement: the id, and the blob only when its metadata or its text is still missing
    missing = ~Message.meta.has_key("version")
    no_text = ~select(message_texts.c.message_id).where(
        message_texts.c.message_id == Message.id).exists()
    row = session.execute(
        select(Message.id, missing, no_text, case((missing | no_text, Message.blob)))
        .join(SpoolMessage, SpoolMessage.message_id == Message.id)
        .where(SpoolMessage.queue_id == queue_id)).first()
    if row is None:
        return None
    return ToParse(int(row[0]), None if row[3] is None else bytes(row[3]), bool(row[1]),
                   bool(row[2]))


def store_metadata_if_missing(session: Session, message_id: int,
                              meta: dict[str, Any]) -> str | None:
    """Keep ``meta`` as the blob's metadata unless some is there; PostgreSQL's refusal, if any.

    In a savepoint, so that a refused value (jsonb cannot hold it) leaves the
    caller's transaction usable: mail is never held back for its metadata.
    """
    try:
        with session.begin_nested():
            # only if still empty: a concurrent replica may have stored it first
            session.execute(update(Message)
                            .where(Message.id == message_id,
                                   ~Message.meta.has_key("version"))
                            .values(meta=meta))
    except DataError as exc:
        return str(exc.orig).strip()
    return None


# --- the general path's small queries


@dataclass(frozen=True)
class LockedRecipient:
    """The recipient and the message facts delivery needs, read in one query."""

    rcpt: spool.RecipientInfo
    spool_message_id: int
    queue_id: str
    mail_from: str
    disposition: str
    message_id: int
    message_size: int
    received_at: datetime
    kind: str = "inbound"  # the spool message's kind (submission: our own user sent it)


def lock_recipient(session: Session, recipient_id: int) -> LockedRecipient | None:
    """Lock the recipient row (one replica works on a recipient at a time) and read it.

    One row, not spool.get_recipient's whole message with every recipient: an
    alias to a thousand accounts would otherwise read a million rows.
    """
    row = session.execute(
        select(SpoolRecipient, SpoolMessage.queue_id, SpoolMessage.mail_from,
               SpoolMessage.disposition, SpoolMessage.message_id, Message.size,
               SpoolMessage.received_at, SpoolMessage.kind)
        .join(SpoolMessage, SpoolMessage.id == SpoolRecipient.spool_message_id)
        .join(Message, Message.id == SpoolMessage.message_id)
        .where(SpoolRecipient.id == recipient_id)
        .with_for_update(of=SpoolRecipient)).first()
    if row is None:
        return None
    r = row[0]
    rcpt = spool.RecipientInfo(
        id=r.id, address=r.address, orcpt=r.orcpt, notify=r.notify, stream=r.stream,
        state=r.state, attempts=r.attempts, next_attempt_at=r.next_attempt_at,
        enqueued_at=r.enqueued_at, last_error=r.last_error, updated_at=r.updated_at,
        parent_id=r.parent_id)
    return LockedRecipient(rcpt=rcpt, spool_message_id=r.spool_message_id, queue_id=row[1],
                 mail_from=row[2], disposition=row[3], message_id=int(row[4]),
                 message_size=int(row[5]), received_at=row[6], kind=str(row[7]))


def ancestors(session: Session, recipient_id: int, limit: int) -> list[str]:
    """The addresses of the recipients ``recipient_id`` was made from (alias expansion,
    forwards, redirects), nearest first, at most ``limit``: how delivery tells a redirect
    loop (docs/mda.md, "Sieve")."""
    rows = session.execute(text(
        "WITH RECURSIVE up(id, parent_id, address, depth) AS ("
        " SELECT id, parent_id, address, 0 FROM spool_recipients WHERE id = :rid"
        " UNION ALL SELECT r.id, r.parent_id, r.address, up.depth + 1"
        " FROM spool_recipients r JOIN up ON r.id = up.parent_id WHERE up.depth < :limit)"
        " SELECT address FROM up WHERE depth > 0 ORDER BY depth"),
        {"rid": recipient_id, "limit": limit}).scalars()
    return [str(a) for a in rows]


def pending_children(session: Session, recipient_id: int) -> tuple[int, ...]:
    return tuple(session.execute(
        select(SpoolRecipient.id).where(SpoolRecipient.parent_id == recipient_id,
                                        SpoolRecipient.state == "pending",
                                        SpoolRecipient.stream == "deliver")
        .order_by(SpoolRecipient.id)).scalars())


def children(session: Session, recipient_id: int) -> list[tuple[int, str, str]]:
    return [(r[0], r[1], r[2]) for r in session.execute(
        select(SpoolRecipient.id, SpoolRecipient.address, SpoolRecipient.stream)
        .where(SpoolRecipient.parent_id == recipient_id).order_by(SpoolRecipient.id))]


def to_outbound(session: Session, recipient_ids: list[int], now: datetime) -> None:
    """Hand recipients to the relay: stream ``outbound``, due now, enqueued by our caller."""
    if recipient_ids:
        session.execute(update(SpoolRecipient).where(SpoolRecipient.id.in_(recipient_ids))
                        .values(stream="outbound", next_attempt_at=now, enqueued_at=now,
                                updated_at=func.now()))


def add_forward(session: Session, parent: spool.RecipientInfo, spool_message_id: int,
                 address: str, now: datetime) -> int:
    """A child recipient on the outbound stream (a rule's redirect); idempotent per address."""
    existing = session.execute(
        select(SpoolRecipient.id).where(SpoolRecipient.parent_id == parent.id,
                                        SpoolRecipient.address == address,
                                        SpoolRecipient.stream == "outbound")).scalar_one_or_none()
    if existing is not None:
        return int(existing)
    child = SpoolRecipient(spool_message_id=spool_message_id, parent_id=parent.id,
                           address=address, orcpt=parent.orcpt or parent.address,
                           notify=parent.notify, stream="outbound", next_attempt_at=now,
                           enqueued_at=now)
    session.add(child)
    session.flush()
    return int(child.id)


def active_user_id(session: Session, address: str) -> int | None:
    """The id of the active account of exactly ``address`` (an alias child's final address)."""
    user_id = session.execute(select(User.id).where(User.address == address,
                                                    User.active.is_(True))).scalar_one_or_none()
    return None if user_id is None else int(user_id)


def mailbox_id(session: Session, user_id: int, name: str) -> int | None:
    if name.upper() == "INBOX":
        name = "INBOX"
    found = session.execute(select(Mailbox.id).where(Mailbox.user_id == user_id,
                                                     Mailbox.name == name)).scalar_one_or_none()
    return None if found is None else int(found)


def special_use(session: Session, user_id: int, use: str) -> tuple[str, int] | None:
    found = session.execute(select(Mailbox.name, Mailbox.id)
                            .where(Mailbox.user_id == user_id, Mailbox.special_use == use)
                            .order_by(Mailbox.id).limit(1)).first()
    return (found[0], int(found[1])) if found else None


def head(session: Session, message_id: int, limit: int) -> bytes:
    """The first ``limit`` bytes of a blob: the header block, without loading a 50 MB body."""
    data = session.execute(select(func.substring(Message.blob, 1, limit))
                           .where(Message.id == message_id)).scalar_one()
    return bytes(data)


@dataclass(frozen=True)
class Account:
    """What delivery reads about an account, in one statement: INBOX, quota, the active Sieve
    script (name, text) if any."""

    inbox_id: int | None
    quota_bytes: int | None
    quota_messages: int | None
    script: tuple[str, str] | None


def account(session: Session, user_id: int) -> Account:
    inbox = (select(Mailbox.id).where(Mailbox.user_id == user_id, Mailbox.name == "INBOX")
             .scalar_subquery())
    active = (sieve_scripts.c.user_id == user_id) & sieve_scripts.c.active
    name = select(sieve_scripts.c.name).where(active).scalar_subquery()
    content = select(sieve_scripts.c.content).where(active).scalar_subquery()
    row = session.execute(select(inbox, User.quota_bytes, User.quota_messages, name, content)
                          .where(User.id == user_id)).one()
    return Account(inbox_id=None if row[0] is None else int(row[0]), quota_bytes=row[1],
                   quota_messages=row[2],
                   script=None if row[3] is None else (str(row[3]), str(row[4])))



def account_address(session: Session, user_id: int) -> str:
    """The address of account ``user_id``."""
    return str(session.execute(select(User.address).where(User.id == user_id)).scalar_one())


# --- the fast path: an existing account, no rules, no quota (most mail)
#
# Three round trips (lock and read everything, write everything, COMMIT) instead of
# the general path's sixteen (a metadata transaction, then a dozen ORM statements and
# savepoints); see docs/decisions/0005 (plain SQL on per-message paths). Anything
# unusual is left to the general path, which runs in the same transaction and
# re-reads what it needs. The blob is parsed for the IMAP cache between the two
# statements: only the recipient row is locked then, no mailbox.

# Lock the recipient (FOR UPDATE OF r: one replica per recipient at a time) and read, in
# the same statement, the message facts, the blob when its metadata is still missing,
# and what the general path would learn from resolve_address's first step and
# account / special_use for the recipient's address taken as stored.
_FAST_FACTS_SQL = """
SELECT r.state, r.stream, r.attempts, r.next_attempt_at, r.parent_id, r.address,
       sm.queue_id, sm.mail_from, sm.disposition, sm.message_id, m.size, sm.received_at,
       NOT (m.metadata ? 'version') AS meta_missing,
       NOT EXISTS (SELECT 1 FROM message_texts t WHERE t.message_id = m.id) AS text_missing,
       CASE WHEN %(parse)s AND (NOT (m.metadata ? 'version') OR NOT EXISTS
            (SELECT 1 FROM message_texts t WHERE t.message_id = m.id)) THEN m.blob END AS blob,
       EXISTS (SELECT 1 FROM domains d
               WHERE d.name = substring(r.address FROM '[^@]*$')) AS local_domain,
       EXISTS (SELECT 1 FROM aliases a WHERE a.source = r.address) AS aliased,
       u.id AS user_id, u.quota_bytes, u.quota_messages,
       EXISTS (SELECT 1 FROM sieve_scripts s WHERE s.user_id = u.id AND s.active) AS rules,
       (SELECT b.id FROM mailboxes b WHERE b.user_id = u.id AND b.name = 'INBOX') AS inbox_id,
       j.id AS junk_id, j.name AS junk_name
FROM spool_recipients r
JOIN spool_messages sm ON sm.id = r.spool_message_id
JOIN messages m ON m.id = sm.message_id
LEFT JOIN users u ON u.address = r.address AND u.active
LEFT JOIN LATERAL (SELECT b.id, b.name FROM mailboxes b
                   WHERE b.user_id = u.id AND b.special_use = %(junk)s
                   ORDER BY b.id LIMIT 1) j ON sm.disposition = 'junk'
WHERE r.id = %(rid)s
FOR UPDATE OF r
"""

# Store the copy and finish the recipient in one statement: the metadata (only if
# still missing: a concurrent replica may have stored it), the mailbox's counters
# (UPDATE takes the mailbox row lock, held to COMMIT, so UIDs are handed out in
# commit order with no reuse and no gap, as deliver_to_mailbox does), the entry, the
# recipient's state and its history row (spool.mark_delivered). Nothing is written
# but the metadata when the recipient already has a copy somewhere (it cannot under
# the recipient lock; the general path then answers with that copy, as before).
#
# Lock order: recipient (_FAST_FACTS_SQL), then the blob's row (the metadata UPDATE),
# then its text row (`ftext` reads `meta` when it inserts; `box` reads both), then the
# mailbox, as in the general path (ensure_metadata runs before the mailbox
# is locked). `box` reads `meta` in an uncorrelated subquery, so the metadata UPDATE
# has run to completion before the mailbox row is reached; without that the order of
# the two UPDATEs would be unspecified, and two deliveries of one new blob into one
# mailbox could deadlock.
_FAST_STORE_SQL = "WITH " + ",\n".join((  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
    """meta AS (
    UPDATE messages SET metadata = CAST(%(meta)s AS jsonb)
    WHERE %(has_meta)s AND id = %(message_id)s AND NOT (metadata ? 'version')
    RETURNING id)""",
    # the blob's searchable text (postroom.store.fts), after the metadata and before the mailbox
    "ftext AS (" + fts.INSERT_SQL.format(  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
        id="%(message_id)s", h="%(fts_h)s", b="%(fts_b)s", hw="%(fts_hw)s", bw="%(fts_bw)s",
        t="%(fts_t)s", where="WHERE %(has_text)s AND (SELECT count(*) FROM meta) >= 0")
    + " RETURNING message_id)",
    add_entry_sql(
        "id = %(mailbox_id)s AND (SELECT count(*) FROM meta) >= 0 "
        "AND (SELECT count(*) FROM ftext) >= 0 AND NOT EXISTS "
        "(SELECT 1 FROM mailbox_entries e WHERE e.spool_recipient_id = %(rid)s)",
        message="%(message_id)s", flags="%(flags)s", internaldate="%(internaldate)s",
        spool_recipient="%(rid)s"),
    """rcpt AS (
    UPDATE spool_recipients
    SET state = 'delivered', last_error = NULL, enqueued_at = NULL, updated_at = now()
    WHERE id = %(rid)s AND EXISTS (SELECT 1 FROM entry)
    RETURNING id)""",
    """hist AS (
    INSERT INTO spool_attempts (recipient_id, result, detail)
    SELECT rcpt.id, 'delivered', %(detail)s || entry.uid FROM rcpt, entry)""",
)) + "\nSELECT uid, modseq FROM entry"
# prepared once per connection: planning _FAST_FACTS_SQL cost more than running it
_FAST_FACTS = Prepared("mda_fast_facts", _FAST_FACTS_SQL)
_FAST_STORE = Prepared("mda_fast_store", _FAST_STORE_SQL)
_NO_TEXT = MessageText(head="", body="")


@dataclass(frozen=True)
class FastFacts:
    """What _FAST_FACTS_SQL read (row names as in the statement)."""

    recipient_id: int
    state: str
    stream: str
    attempts: int
    next_attempt_at: datetime
    parent_id: int | None
    address: str
    queue_id: str
    mail_from: str
    disposition: str
    message_id: int
    size: int
    received_at: datetime
    meta_missing: bool
    text_missing: bool
    blob: bytes | None
    local_domain: bool
    aliased: bool
    user_id: int | None
    quota_bytes: int | None
    quota_messages: int | None
    rules: bool  # the account has an active Sieve script
    inbox_id: int | None
    junk_id: int | None
    junk_name: str | None


def fast_facts(connection: Connection, recipient_id: int,
               parse: bool = True) -> FastFacts | None:
    """Lock the recipient and read what the fast path decides on; None: no such recipient.

    ``parse``: read the blob too when its metadata is still missing.
    """
    row = _FAST_FACTS.execute(
        connection, {"rid": recipient_id, "junk": "\\Junk", "parse": parse}).first()
    if row is None:
        return None
    # by position (the statement's column order): a Row's attribute lookups cost more
    (state, stream, attempts, next_attempt_at, parent_id, address, queue_id, mail_from,
     disposition, message_id, size, received_at, meta_missing, text_missing, blob, local_domain,
     aliased,
     user_id, quota_bytes, quota_messages, rules, inbox_id, junk_id, junk_name) = row
    return FastFacts(
        recipient_id, state, stream, attempts, next_attempt_at, parent_id, address, queue_id,
        mail_from, disposition, int(message_id), int(size), received_at, bool(meta_missing),
        bool(text_missing), None if blob is None else bytes(blob), bool(local_domain),
        bool(aliased), user_id,
        quota_bytes, quota_messages, bool(rules), inbox_id, junk_id, junk_name)


def fast_store(connection: Connection, *, recipient_id: int, message_id: int, mailbox_id: int,
               flags: list[str], internaldate: datetime, meta: str | None,
               detail: str, doc: MessageText | None = None) -> tuple[int, int] | None:
    """Store the copy and finish the recipient in one statement; (uid, modseq).

    ``meta`` is the blob's metadata as JSON text (None: leave it); ``doc`` its
    searchable text (None: leave it; kept only when it has none); ``detail``
    the history row's text, to which the UID is appended. None when the
    recipient already has a copy somewhere (nothing but the metadata is written).
    """
    row = _FAST_STORE.execute(connection, {
        "meta": meta, "has_meta": meta is not None, "message_id": message_id,
        "mailbox_id": mailbox_id, "rid": recipient_id, "flags": flags,
        "internaldate": internaldate, "detail": detail, "has_text": doc is not None,
        **{"fts_" + k: v for k, v in fts.text_params(doc or _NO_TEXT).items()}}).first()
    if row is None:
        return None
    return int(row[0]), int(row[1])
