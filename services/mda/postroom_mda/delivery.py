"""What happens to one spooled recipient at delivery: resolve, decide, store, mark (no Redis).

Each function takes a Session and runs inside the caller's transaction (one
per recipient, see postroom_mda.service), so a mailbox copy and the
recipient's ``delivered`` state commit together, and the only row locks taken
besides the recipient's own are the blob's (when its metadata is stored) and
one mailbox's, always in that order (no lock-order deadlocks between replicas).
Mail for an account with no alias, rules or quota takes a fast path of two
plain SQL statements (see _FAST_FACTS_SQL); everything else takes the general
path, written with the ORM for clarity. Results are plain :class:`Outcome`
values; what must happen after commit (a change event, stream entries) is
described in them and done by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, case, func, select, update
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from postroom.config import Settings
from postroom.logs import get_logger
from postroom.mime import analyze, metadata_dict, metadata_json
from postroom.queue.envelope import Envelope
from postroom.rules import (
    HEAD_BYTES,
    Decision,
    RulesError,
    evaluate,
    facts_from_message,
    parse_rules,
)
from postroom.store import spool
from postroom.store.addresses import normalise_address
from postroom.store.aliases import Target, resolve_address
from postroom.store.errors import InvalidAddress
from postroom.store.mailboxes import deliver_to_mailbox, usage
from postroom.store.models import (
    Mailbox,
    Message,
    SpoolMessage,
    SpoolRecipient,
    User,
    mail_rules,
)
from postroom.store.prepared import Prepared
from postroom.store.rules import claim_vacation_reply
from postroom_mda.vacation import build_reply, skip_reason

log = get_logger("delivery")


@dataclass(frozen=True)
class Options:
    """The settings delivery uses (see postroom.config for their meaning)."""

    delimiter: str = "+"
    detail_folder: bool = False
    quota_grace: float = 86400.0
    queue_lifetime: float = 5 * 86400.0
    retry_initial: float = 300.0
    retry_max: float = 3600.0
    hostname: str = "localhost"

    @classmethod
    def from_settings(cls, settings: Settings) -> Options:
        return cls(delimiter=settings.recipient_delimiter,
                   detail_folder=settings.deliver_to_detail_folder,
                   quota_grace=settings.quota_grace, queue_lifetime=settings.queue_lifetime,
                   retry_initial=settings.retry_initial, retry_max=settings.retry_max,
                   hostname=settings.hostname)


# Outcome.result values
DELIVERED = "delivered"      # a copy is in a mailbox (or was already: ``duplicate``)
DUPLICATE = "duplicate"      # the recipient was done before: nothing changed
DISCARDED = "discarded"      # the account's rules discarded it
EXPANDED = "expanded"        # an alias: ``children`` are to be delivered next
FORWARDED = "forwarded"      # a remote target: on its way to the outbound stream
DEFERRED = "deferred"        # try again later (over quota)
FAILED = "failed"            # permanent failure: the relay bounces it
MISSING = "missing"          # no such recipient (spool deleted by an operator)
SKIPPED = "skipped"          # not ours now (another stream, or not yet due)


@dataclass(frozen=True)
class Outcome:
    """What delivery did for one recipient, and what the caller must do after commit."""

    recipient_id: int
    result: str
    queue_id: str | None = None
    address: str | None = None
    user_id: int | None = None
    mailbox: str | None = None
    mailbox_id: int | None = None
    uid: int | None = None
    modseq: int | None = None
    size: int | None = None
    error: str | None = None
    # local recipients made by alias expansion, each to be delivered in its own transaction
    children: tuple[int, ...] = ()
    # stream entries to add once committed (forwards, redirects, vacation replies)
    envelopes: tuple[Envelope, ...] = field(default_factory=tuple)


# --- parse once per blob


def ensure_metadata(session: Session, queue_id: str) -> int | None:
    """Analyze the queued message's blob once and store its IMAP metadata with it.

    Returns the message id (None when the queue entry no longer exists).
    Identical bodies share one blob, so a second recipient or a second copy of
    the message finds the metadata already there and parses nothing.
    """
    # one statement: the id, and the blob only when its metadata is still missing
    missing = ~Message.meta.has_key("version")
    row = session.execute(
        select(Message.id, missing, case((missing, Message.blob)))
        .join(SpoolMessage, SpoolMessage.message_id == Message.id)
        .where(SpoolMessage.queue_id == queue_id)).first()
    if row is None:
        return None
    message_id = int(row[0])
    if row[1]:
        meta = metadata_dict(analyze(bytes(row[2])))
        try:
            with session.begin_nested():
                # only if still empty: a concurrent replica may have stored it first
                session.execute(update(Message)
                                .where(Message.id == message_id,
                                       ~Message.meta.has_key("version"))
                                .values(meta=meta))
        except DataError as exc:
            # mail is never held back for its metadata: deliver it, readers re-analyze
            log.warning("message metadata not stored", queue_id=queue_id,
                        message_id=message_id, error=str(exc.orig).strip())
    return int(message_id)


# --- small queries of our own


@dataclass(frozen=True)
class _Work:
    """The recipient and the message facts delivery needs, read in one query."""

    rcpt: spool.RecipientInfo
    spool_message_id: int
    queue_id: str
    mail_from: str
    disposition: str
    message_id: int
    message_size: int
    received_at: datetime


def _lock_recipient(session: Session, recipient_id: int) -> _Work | None:
    """Lock the recipient row (one replica works on a recipient at a time) and read it.

    One row, not spool.get_recipient's whole message with every recipient: an
    alias to a thousand accounts would otherwise read a million rows.
    """
    row = session.execute(
        select(SpoolRecipient, SpoolMessage.queue_id, SpoolMessage.mail_from,
               SpoolMessage.disposition, SpoolMessage.message_id, Message.size,
               SpoolMessage.received_at)
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
    return _Work(rcpt=rcpt, spool_message_id=r.spool_message_id, queue_id=row[1],
                 mail_from=row[2], disposition=row[3], message_id=int(row[4]),
                 message_size=int(row[5]), received_at=row[6])


def _pending_children(session: Session, recipient_id: int) -> tuple[int, ...]:
    return tuple(session.execute(
        select(SpoolRecipient.id).where(SpoolRecipient.parent_id == recipient_id,
                                        SpoolRecipient.state == "pending",
                                        SpoolRecipient.stream == "deliver")
        .order_by(SpoolRecipient.id)).scalars())


def _children(session: Session, recipient_id: int) -> list[tuple[int, str, str]]:
    return [(r[0], r[1], r[2]) for r in session.execute(
        select(SpoolRecipient.id, SpoolRecipient.address, SpoolRecipient.stream)
        .where(SpoolRecipient.parent_id == recipient_id).order_by(SpoolRecipient.id))]


def _to_outbound(session: Session, recipient_ids: list[int], now: datetime) -> None:
    """Hand recipients to the relay: stream ``outbound``, due now, enqueued by our caller."""
    if recipient_ids:
        session.execute(update(SpoolRecipient).where(SpoolRecipient.id.in_(recipient_ids))
                        .values(stream="outbound", next_attempt_at=now, enqueued_at=now,
                                updated_at=func.now()))


def _add_forward(session: Session, parent: spool.RecipientInfo, spool_message_id: int,
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


def _final_target(session: Session, address: str) -> list[Target]:
    """An alias child's address is final: the account itself, never resolved again."""
    user_id = session.execute(select(User.id).where(User.address == address,
                                                    User.active.is_(True))).scalar_one_or_none()
    return [Target(address=address, user_id=int(user_id))] if user_id is not None else []


def _mailbox_id(session: Session, user_id: int, name: str) -> int | None:
    if name.upper() == "INBOX":
        name = "INBOX"
    found = session.execute(select(Mailbox.id).where(Mailbox.user_id == user_id,
                                                     Mailbox.name == name)).scalar_one_or_none()
    return None if found is None else int(found)


def _special_use(session: Session, user_id: int, use: str) -> tuple[str, int] | None:
    found = session.execute(select(Mailbox.name, Mailbox.id)
                            .where(Mailbox.user_id == user_id, Mailbox.special_use == use)
                            .order_by(Mailbox.id).limit(1)).first()
    return (found[0], int(found[1])) if found else None


def _head(session: Session, message_id: int) -> bytes:
    """The first HEAD_BYTES of a blob: the header block, without loading a 50 MB body."""
    data = session.execute(select(func.substring(Message.blob, 1, HEAD_BYTES))
                           .where(Message.id == message_id)).scalar_one()
    return bytes(data)


@dataclass(frozen=True)
class _Account:
    """What delivery reads about an account, in one statement: INBOX, quota, stored rules."""

    inbox_id: int | None
    quota_bytes: int | None
    quota_messages: int | None
    rules: Any


def _account(session: Session, user_id: int) -> _Account:
    inbox = (select(Mailbox.id).where(Mailbox.user_id == user_id, Mailbox.name == "INBOX")
             .scalar_subquery())
    rules = select(mail_rules.c.rules).where(mail_rules.c.user_id == user_id).scalar_subquery()
    row = session.execute(select(inbox, User.quota_bytes, User.quota_messages, rules)
                          .where(User.id == user_id)).one()
    return _Account(inbox_id=None if row[0] is None else int(row[0]), quota_bytes=row[1],
                    quota_messages=row[2], rules=row[3])


def _over_quota(session: Session, user_id: int, size: int, account: _Account) -> bool:
    quota_bytes, quota_messages = account.quota_bytes, account.quota_messages
    if quota_bytes is None and quota_messages is None:
        return False
    used_bytes, used_messages = usage(session, user_id)
    return bool((quota_bytes is not None and used_bytes + size > quota_bytes)
                or (quota_messages is not None and used_messages + 1 > quota_messages))


# --- the fast path: an existing account, no rules, no quota (most mail)
#
# Three round trips (lock and read everything, write everything, COMMIT) instead of
# the general path's sixteen (a metadata transaction, then a dozen ORM statements and
# savepoints); see docs/decisions/0005 (plain SQL on per-message paths). Anything
# unusual is left to the general path below, which runs in the same transaction and
# re-reads what it needs. The blob is parsed for the IMAP cache between the two
# statements: only the recipient row is locked then, no mailbox.

# Lock the recipient (FOR UPDATE OF r: one replica per recipient at a time) and read, in
# the same statement, the message facts, the blob when its metadata is still missing,
# and what the general path would learn from resolve_address's first step and
# _account / _special_use for the recipient's address taken as stored.
_FAST_FACTS_SQL = """
SELECT r.state, r.stream, r.attempts, r.next_attempt_at, r.parent_id, r.address,
       sm.queue_id, sm.mail_from, sm.disposition, sm.message_id, m.size, sm.received_at,
       NOT (m.metadata ? 'version') AS meta_missing,
       CASE WHEN %(parse)s AND NOT (m.metadata ? 'version') THEN m.blob END AS blob,
       EXISTS (SELECT 1 FROM domains d
               WHERE d.name = substring(r.address FROM '[^@]*$')) AS local_domain,
       EXISTS (SELECT 1 FROM aliases a WHERE a.source = r.address) AS aliased,
       u.id AS user_id, u.quota_bytes, u.quota_messages,
       (SELECT mr.rules FROM mail_rules mr WHERE mr.user_id = u.id) AS rules,
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
# then the mailbox, as in the general path (ensure_metadata runs before the mailbox
# is locked). `mb` reads `meta` in an uncorrelated subquery, so the metadata UPDATE
# has run to completion before the mailbox row is reached; without that the order of
# the two UPDATEs would be unspecified, and two deliveries of one new blob into one
# mailbox could deadlock.
_FAST_STORE_SQL = """
WITH meta AS (
    UPDATE messages SET metadata = CAST(%(meta)s AS jsonb)
    WHERE %(has_meta)s AND id = %(message_id)s AND NOT (metadata ? 'version')
    RETURNING id),
mb AS (
    UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1
    WHERE id = %(mailbox_id)s AND (SELECT count(*) FROM meta) >= 0
      AND NOT EXISTS (SELECT 1 FROM mailbox_entries e WHERE e.spool_recipient_id = %(rid)s)
    RETURNING id, uidnext - 1 AS uid, highestmodseq AS modseq),
entry AS (
    INSERT INTO mailbox_entries (mailbox_id, uid, message_id, flags, modseq, internaldate,
                                 spool_recipient_id)
    SELECT mb.id, mb.uid, %(message_id)s, CAST(%(flags)s AS text[]), mb.modseq,
           %(internaldate)s, %(rid)s
    FROM mb
    RETURNING uid, modseq),
rcpt AS (
    UPDATE spool_recipients
    SET state = 'delivered', last_error = NULL, enqueued_at = NULL, updated_at = now()
    WHERE id = %(rid)s AND EXISTS (SELECT 1 FROM entry)
    RETURNING id),
hist AS (
    INSERT INTO spool_attempts (recipient_id, result, detail)
    SELECT rcpt.id, 'delivered', %(detail)s || entry.uid FROM rcpt, entry)
SELECT uid, modseq FROM entry
"""
# prepared once per connection: planning _FAST_FACTS_SQL cost more than running it
_FAST_FACTS = Prepared("mda_fast_facts", _FAST_FACTS_SQL)
_FAST_STORE = Prepared("mda_fast_store", _FAST_STORE_SQL)


@dataclass(frozen=True)
class _FastFacts:
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
    blob: bytes | None
    local_domain: bool
    aliased: bool
    user_id: int | None
    quota_bytes: int | None
    quota_messages: int | None
    rules: Any
    inbox_id: int | None
    junk_id: int | None
    junk_name: str | None


def _fast_facts(connection: Connection, recipient_id: int,
                parse: bool = True) -> _FastFacts | None:
    row = _FAST_FACTS.execute(
        connection, {"rid": recipient_id, "junk": "\\Junk", "parse": parse}).first()
    if row is None:
        return None
    # by position (the statement's column order): a Row's attribute lookups cost more
    (state, stream, attempts, next_attempt_at, parent_id, address, queue_id, mail_from,
     disposition, message_id, size, received_at, meta_missing, blob, local_domain, aliased,
     user_id, quota_bytes, quota_messages, rules, inbox_id, junk_id, junk_name) = row
    return _FastFacts(
        recipient_id, state, stream, attempts, next_attempt_at, parent_id, address, queue_id,
        mail_from, disposition, int(message_id), int(size), received_at, bool(meta_missing),
        None if blob is None else bytes(blob), bool(local_domain), bool(aliased), user_id,
        quota_bytes, quota_messages, rules, inbox_id, junk_id, junk_name)


def _fast_target(facts: _FastFacts) -> int | None:
    """The account the general path would resolve the address to, when it is that simple.

    An alias child is final (_final_target): the account of that exact address. A
    recipient as received must be in its stored form and name an account in a local
    domain with no alias over it (resolve_address's first step). None otherwise.
    """
    if facts.user_id is None:
        return None
    if facts.parent_id is not None:
        return int(facts.user_id)
    try:
        if normalise_address(facts.address) != facts.address:
            return None
    except InvalidAddress:
        return None
    if not facts.local_domain or facts.aliased:
        return None
    return int(facts.user_id)


def _metadata_json(facts: _FastFacts) -> str | None:
    """The blob's metadata as JSON for jsonb, or None when there is nothing to store."""
    if facts.blob is None:
        return None
    try:
        return metadata_json(analyze(facts.blob))  # the one stored form (postroom.mime.stored)
    except ValueError as exc:
        # mail is never held back for its metadata: deliver it, readers re-analyze
        log.warning("message metadata not stored", queue_id=facts.queue_id,
                    message_id=facts.message_id, error=str(exc))
        return None


def _fast_deliver(connection: Connection, facts: _FastFacts, options: Options, now: datetime,
                  store_metadata: bool) -> Outcome | None:
    """Deliver through the fast path, or None when the general path must decide."""
    if facts.state != "pending" or facts.stream != "deliver":
        return None
    if facts.attempts and facts.next_attempt_at > now:
        return None
    if now - facts.received_at > timedelta(seconds=options.queue_lifetime):
        return None
    if facts.quota_bytes is not None or facts.quota_messages is not None:
        return None
    user_id = _fast_target(facts)
    if user_id is None:
        return None
    flags: list[str] = []
    mailbox_id: int | None
    if facts.disposition == "junk":
        # quarantined: Junk (else INBOX), flagged, and never the rules (as _deliver_local)
        if facts.junk_id is not None and facts.junk_name is not None:
            folder, mailbox_id = facts.junk_name, facts.junk_id
        else:
            folder, mailbox_id = "INBOX", facts.inbox_id
        flags.append("$Junk")
    elif facts.rules:
        return None
    else:
        folder, mailbox_id = "INBOX", facts.inbox_id
    if mailbox_id is None:
        return None
    meta = _metadata_json(facts) if store_metadata and facts.meta_missing else None
    row = _FAST_STORE.execute(connection, {
        "meta": meta, "has_meta": meta is not None, "message_id": facts.message_id,
        "mailbox_id": mailbox_id, "rid": facts.recipient_id, "flags": flags,
        "internaldate": facts.received_at,
        "detail": f"stored in {folder} uid "}).first()
    if row is None:
        return None
    uid, modseq = row
    return Outcome(facts.recipient_id, DELIVERED, queue_id=facts.queue_id,
                   address=facts.address, user_id=user_id, mailbox=folder,
                   mailbox_id=int(mailbox_id), uid=int(uid), modseq=int(modseq),
                   size=facts.size)


# --- one recipient


def deliver_recipient(session: Session, recipient_id: int, options: Options,
                      now: datetime, *, store_metadata: bool = True) -> Outcome:
    """Deliver one spooled recipient (see the module docstring); idempotent.

    Also stores the blob's IMAP metadata when it is still missing (parsed here,
    in the same transaction: see the fast path's notes). ``store_metadata=False``
    skips that (the service's fallback when PostgreSQL refused the metadata).
    """
    # the transaction's one connection, asked for once (each ask walks the ORM's state)
    connection = session.connection()
    facts = _fast_facts(connection, recipient_id, parse=store_metadata)
    if facts is None:
        return Outcome(recipient_id, MISSING)
    outcome = _fast_deliver(connection, facts, options, now, store_metadata)
    if outcome is not None:
        return outcome
    if store_metadata and facts.meta_missing:
        ensure_metadata(session, facts.queue_id)
    return _deliver_slow(session, recipient_id, options, now)


def _deliver_slow(session: Session, recipient_id: int, options: Options,
                  now: datetime) -> Outcome:
    """Every case the fast path leaves: aliases, rules, quotas, retries, failures."""
    info = _lock_recipient(session, recipient_id)
    if info is None:
        return Outcome(recipient_id, MISSING)
    rcpt = info.rcpt
    base = {"queue_id": info.queue_id, "address": rcpt.address, "size": info.message_size}
    if rcpt.state != "pending":
        # a redelivered entry: the work is done, except alias children a crash left behind
        return Outcome(recipient_id, DUPLICATE, children=_pending_children(session, recipient_id),
                       **base)
    if rcpt.stream != "deliver":
        return Outcome(recipient_id, SKIPPED, error="recipient is on another stream", **base)
    if rcpt.attempts and rcpt.next_attempt_at > now:
        # a stale entry for a deferred recipient: the reconciler brings it back when due
        return Outcome(recipient_id, SKIPPED, error="not yet due", **base)
    if now - info.received_at > timedelta(seconds=options.queue_lifetime):
        error = "554 5.4.7 delivery time expired"
        spool.mark_failed(session, recipient_id, error)
        return Outcome(recipient_id, FAILED, error=error, **base)

    if rcpt.parent_id is not None:
        targets = _final_target(session, rcpt.address)
    else:
        targets = resolve_address(session, rcpt.address, delimiter=options.delimiter)
    if not targets:
        error = "550 5.1.1 no such user here"
        spool.mark_failed(session, recipient_id, error)
        return Outcome(recipient_id, FAILED, error=error, **base)
    if len(targets) == 1 and targets[0].user_id is not None:
        return _deliver_local(session, info, rcpt, targets[0], options, now)
    return _expand(session, info, rcpt, targets, now)


def _expand(session: Session, info: _Work, rcpt: spool.RecipientInfo,
            targets: list[Target], now: datetime) -> Outcome:
    """One child recipient per target: local ones come back to us, remote ones go outbound."""
    spool.expand_recipient(session, rcpt.id, [t.address for t in targets])
    remote_addresses = {t.address for t in targets if t.user_id is None}
    children = _children(session, rcpt.id)
    remote = [cid for cid, address, stream in children
              if stream == "deliver" and address in remote_addresses]
    _to_outbound(session, remote, now)
    local = tuple(cid for cid, address, stream in children
                  if stream == "deliver" and address not in remote_addresses)
    envelopes = (Envelope(info.queue_id, tuple(remote), "outbound"),) if remote else ()
    result = FORWARDED if remote and not local else EXPANDED
    return Outcome(rcpt.id, result, queue_id=info.queue_id, address=rcpt.address,
                   size=info.message_size, children=local, envelopes=envelopes)


def _decide(session: Session, info: _Work, rcpt: spool.RecipientInfo,
            user_id: int, stored: Any) -> tuple[Decision | None, Any]:
    """The account's rules (``stored``, as read by _account) applied to the message."""
    try:
        rules = parse_rules(stored) if stored else []
    except RulesError as exc:
        # stored before a validation change: deliver as if there were none, and say so
        log.warning("stored rules invalid", queue_id=info.queue_id, user_id=user_id,
                    error=str(exc))
        return None, None
    if not rules:
        return None, None
    facts = facts_from_message(_head(session, info.message_id), info.message_size,
                               info.mail_from, rcpt.address)
    return evaluate(rules, facts), facts


def _deliver_local(session: Session, info: _Work, rcpt: spool.RecipientInfo,
                   target: Target, options: Options, now: datetime) -> Outcome:
    user_id = target.user_id
    assert user_id is not None
    base: dict[str, Any] = {"queue_id": info.queue_id, "address": rcpt.address,
                            "user_id": user_id, "size": info.message_size}
    flags: list[str] = []
    decision: Decision | None = None
    facts: Any = None
    account = _account(session, user_id)
    if info.disposition == "junk":
        # quarantined by DMARC: straight to Junk, and no rules, so a spoof of a known
        # sender is neither filed among real mail nor forwarded nor answered
        junk = _special_use(session, user_id, "\\Junk")
        folder, mailbox_id = junk if junk else ("INBOX", account.inbox_id)
        flags.append("$Junk")
    else:
        folder, mailbox_id = "INBOX", account.inbox_id
        if options.detail_folder and target.detail:
            detail_id = _mailbox_id(session, user_id, target.detail)
            if detail_id is not None:
                folder, mailbox_id = target.detail, detail_id
        decision, facts = _decide(session, info, rcpt, user_id, account.rules)
        if decision is not None:
            folder, mailbox_id = _rule_folder(session, user_id, decision, folder, mailbox_id)

    store = decision is None or decision.keep or bool(decision.folders)
    if store and _over_quota(session, user_id, info.message_size, account):
        return _over(session, info, rcpt, options, now, base)
    envelopes: list[Envelope] = []
    uid = modseq = None
    if store:
        if mailbox_id is None:
            # the account has no INBOX (deleted by hand): a temporary, loud failure
            raise LookupError(f"account {user_id} has no mailbox {folder}")
        uid, modseq = deliver_to_mailbox(session, user_id=user_id, mailbox_name=folder,
                                         message_id=info.message_id,
                                         spool_recipient_id=rcpt.id, flags=flags,
                                         internaldate=info.received_at)
    if decision is not None:
        envelopes.extend(_act(session, info, rcpt, user_id, decision, facts, options, now))
    spool.mark_delivered(session, rcpt.id,
                         f"stored in {folder} uid {uid}" if store else "handled by the rules")
    if not store:
        return Outcome(rcpt.id, FORWARDED if decision and decision.redirects else DISCARDED,
                       envelopes=tuple(envelopes), **base)
    return Outcome(rcpt.id, DELIVERED, mailbox=folder, mailbox_id=mailbox_id, uid=uid,
                   modseq=modseq, envelopes=tuple(envelopes), **base)


def _rule_folder(session: Session, user_id: int, decision: Decision, folder: str,
                 mailbox_id: int | None) -> tuple[str, int | None]:
    """Where the rules file the one copy: the first fileinto that exists, else the default.

    Sieve would store one copy per mailbox named; we store one (docs/mda.md).
    """
    for name in decision.folders:
        found = _mailbox_id(session, user_id, name)
        if found is not None:
            return ("INBOX" if name.upper() == "INBOX" else name), found
    return folder, mailbox_id


def _over(session: Session, info: _Work, rcpt: spool.RecipientInfo,
          options: Options, now: datetime, base: dict[str, Any]) -> Outcome:
    """Over quota: defer with back-off, and bounce (5.2.2) once the grace has run out."""
    give_up_at = info.received_at + timedelta(seconds=options.quota_grace)
    if now >= give_up_at:
        error = "552 5.2.2 mailbox full"
        spool.mark_failed(session, rcpt.id, error)
        return Outcome(rcpt.id, FAILED, error=error, **base)
    delay = spool.next_backoff(rcpt.attempts + 1, options.retry_initial, options.retry_max)
    # never wait past the end of the grace: the bounce should not be late either
    next_attempt = min(now + timedelta(seconds=delay), give_up_at)
    error = "452 4.2.2 mailbox full"
    spool.mark_deferred(session, rcpt.id, error, next_attempt)
    return Outcome(rcpt.id, DEFERRED, error=error, **base)


def _act(session: Session, info: _Work, rcpt: spool.RecipientInfo, user_id: int,
         decision: Decision, facts: Any, options: Options, now: datetime) -> list[Envelope]:
    """Redirects and the vacation reply of a rule decision; the entries to enqueue."""
    envelopes = []
    forwards = [_add_forward(session, rcpt, info.spool_message_id, address, now)
                for address in decision.redirects]
    if forwards:
        envelopes.append(Envelope(info.queue_id, tuple(forwards), "outbound"))
    if decision.vacation is not None and facts is not None:
        account = session.execute(select(User.address).where(User.id == user_id)).scalar_one()
        why_not = skip_reason(facts, account, decision.vacation)
        if why_not is not None:
            log.info("vacation reply skipped", queue_id=info.queue_id, user_id=user_id,
                     reason=why_not)
        elif not claim_vacation_reply(session, user_id, info.mail_from,
                                      decision.vacation.days, now):
            log.info("vacation reply skipped", queue_id=info.queue_id, user_id=user_id,
                     reason="already replied to this sender recently")
        else:
            message = build_reply(facts, account, decision.vacation,
                                  hostname=options.hostname, now=now)
            envelopes.append(_spool_reply(session, message, info.mail_from, now))
    return envelopes


def _spool_reply(session: Session, message: bytes, to: str, now: datetime) -> Envelope:
    """Queue an auto-reply from the null reverse-path (RFC 3834 3.3), for the relay."""
    queue_id, ids = spool.create_spool_ids(session, kind="local", mail_from="",
                                           recipients=[spool.NewRecipient(to, "outbound")],
                                           message=message, size=len(message), enqueued_at=now)
    return Envelope(queue_id, tuple(ids), "outbound")
