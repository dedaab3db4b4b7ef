"""The spool: queued messages with their envelope and per-recipient delivery state.

PostgreSQL is the truth; Redis streams only carry recipient ids. A recipient is
``pending`` until delivered, failed (permanent error, bounce still to send) or
bounced (DSN sent). ``next_attempt_at`` says when it may be tried again and
``enqueued_at`` when it was last put on a stream, so the reconciler can find
work that Redis lost.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.orm import Session

from postroom.store.errors import NotFound
from postroom.store.messages import delete_orphans, store_message
from postroom.store.models import (
    RECIPIENT_STATES,
    SPOOL_KINDS,
    STREAMS,
    Message,
    SpoolAttempt,
    SpoolMessage,
    SpoolRecipient,
)
from postroom.store.prepared import Prepared
from postroom.store.queueid import new_queue_id

# how much of an error text is kept (a remote server's reply can be long)
MAX_ERROR_CHARS = 2000


class NewRecipient(NamedTuple):
    """A recipient to spool; a plain (address, stream, orcpt, notify) tuple works too."""

    address: str
    stream: str
    orcpt: str | None = None
    notify: str | None = None


@dataclass(frozen=True)
class RecipientInfo:
    id: int
    address: str
    orcpt: str | None
    notify: str | None
    stream: str
    state: str
    attempts: int
    next_attempt_at: datetime
    enqueued_at: datetime | None
    last_error: str | None
    updated_at: datetime
    parent_id: int | None = None


@dataclass(frozen=True)
class SpoolInfo:
    id: int
    queue_id: str
    kind: str
    mail_from: str
    size: int | None
    body: str | None
    smtputf8: bool
    ret: str | None
    envid: str | None
    message_id: int
    message_size: int
    received_at: datetime
    peer_ip: str | None
    helo: str | None
    auth_user: str | None
    disposition: str
    recipients: list[RecipientInfo] = field(default_factory=list)


@dataclass(frozen=True)
class SpoolSummary:
    """One line of `postroom queue list`; ``state`` is the least finished recipient's."""

    queue_id: str
    kind: str
    mail_from: str
    recipients: int
    state: str
    received_at: datetime
    size: int


def _recipient(row: SpoolRecipient) -> RecipientInfo:
    return RecipientInfo(id=row.id, address=row.address, orcpt=row.orcpt, notify=row.notify,
                         stream=row.stream, state=row.state, attempts=row.attempts,
                         next_attempt_at=row.next_attempt_at, enqueued_at=row.enqueued_at,
                         last_error=row.last_error, updated_at=row.updated_at,
                         parent_id=row.parent_id)


def _check_recipient(rcpt: NewRecipient) -> None:
    if rcpt.stream not in STREAMS:
        raise ValueError(f"unknown stream {rcpt.stream!r}")
    if not rcpt.address or any(c in rcpt.address for c in "\r\n\0"):
        raise ValueError("invalid recipient address")


def create_spool(session: Session, *, kind: str, mail_from: str,
                 recipients: Sequence[tuple[str, str, str | None, str | None] | NewRecipient],
                 message: bytes, size: int | None = None, body: str | None = None,
                 smtputf8: bool = False, ret: str | None = None, envid: str | None = None,
                 peer_ip: str | None = None, helo: str | None = None,
                 auth_user: str | None = None, disposition: str = "inbox",
                 metadata: dict[str, Any] | None = None, queue_id: str | None = None,
                 enqueued_at: datetime | None = None) -> str:
    """Spool a message for its recipients in the caller's transaction; returns the queue id.

    The blob is stored content-addressed (identical bytes once). Duplicate
    (address, stream) recipients are kept once. ``queue_id`` may be made earlier
    (e.g. at MAIL FROM, for logs); ``enqueued_at`` marks the recipients as
    already handed to Redis when the caller enqueues right after commit.
    """
    return create_spool_ids(
        session, kind=kind, mail_from=mail_from, recipients=recipients, message=message,
        size=size, body=body, smtputf8=smtputf8, ret=ret, envid=envid, peer_ip=peer_ip,
        helo=helo, auth_user=auth_user, disposition=disposition, metadata=metadata,
        queue_id=queue_id, enqueued_at=enqueued_at)[0]


def create_spool_ids(session: Session, *, kind: str, mail_from: str,
                     recipients: Sequence[tuple[str, str, str | None, str | None]
                                          | NewRecipient],
                     message: bytes, size: int | None = None, body: str | None = None,
                     smtputf8: bool = False, ret: str | None = None, envid: str | None = None,
                     peer_ip: str | None = None, helo: str | None = None,
                     auth_user: str | None = None, disposition: str = "inbox",
                     metadata: dict[str, Any] | None = None, queue_id: str | None = None,
                     enqueued_at: datetime | None = None) -> tuple[str, list[int]]:
    """:func:`create_spool` that also returns the new recipient ids, in the order given.

    One statement (blob, message and recipients, with RETURNING): the caller
    learns the ids it enqueues without reading the spool back.
    """
    params = _spool_params(
        kind=kind, mail_from=mail_from, recipients=recipients, message=message, size=size,
        body=body, smtputf8=smtputf8, ret=ret, envid=envid, peer_ip=peer_ip, helo=helo,
        auth_user=auth_user, disposition=disposition, metadata=metadata, queue_id=queue_id,
        enqueued_at=enqueued_at)
    return _spool_one(session, params, message, metadata)


def _spool_params(*, kind: str, mail_from: str,
                  recipients: Sequence[tuple[str, str, str | None, str | None] | NewRecipient],
                  message: bytes, size: int | None = None, body: str | None = None,
                  smtputf8: bool = False, ret: str | None = None, envid: str | None = None,
                  peer_ip: str | None = None, helo: str | None = None,
                  auth_user: str | None = None, disposition: str = "inbox",
                  metadata: dict[str, Any] | None = None, queue_id: str | None = None,
                  enqueued_at: datetime | None = None) -> dict[str, Any]:
    """The checked parameters of one message's spool statement (raises on a bad argument)."""
    if kind not in SPOOL_KINDS:
        raise ValueError(f"unknown spool kind {kind!r}")
    wanted = [NewRecipient(*r) for r in recipients]
    if not wanted:
        raise ValueError("a spooled message needs at least one recipient")
    for rcpt in wanted:
        _check_recipient(rcpt)
    queue_id = queue_id or new_queue_id()
    seen: set[tuple[str, str]] = set()
    unique = []
    for rcpt in wanted:
        if (rcpt.address, rcpt.stream) not in seen:
            seen.add((rcpt.address, rcpt.stream))
            unique.append(rcpt)
    return {
        "sha": hashlib.sha256(message).hexdigest(), "msize": len(message), "blob": message,
        "meta": json.dumps(metadata or {}), "queue_id": queue_id, "kind": kind,
        "mail_from": mail_from, "size": size, "body": body, "smtputf8": smtputf8, "ret": ret,
        "envid": envid, "peer_ip": peer_ip, "helo": helo, "auth_user": auth_user,
        "disposition": disposition, "enqueued_at": enqueued_at,
        "addresses": [r.address for r in unique], "orcpts": [r.orcpt for r in unique],
        "notifies": [r.notify for r in unique], "streams": [r.stream for r in unique]}


def _spool_one(session: Session, params: dict[str, Any], message: bytes,
               metadata: dict[str, Any] | None) -> tuple[str, list[int]]:
    # the hot path of every front door: one round trip, no ORM (see _SPOOL_SQL)
    # (exec_driver_sql, not a raw cursor: errors still tell the pool a connection died)
    ids = [int(i) for i in _SPOOL.execute(session.connection(), params).scalars()]
    if ids:
        return params["queue_id"], sorted(ids)
    return _spool_rows(session, params, message, metadata)


def _spool_rows(session: Session, params: dict[str, Any], message: bytes,
                metadata: dict[str, Any] | None) -> tuple[str, list[int]]:
    """The statement-per-row path: when the blob was committed by another transaction after
    the spool statement's snapshot (its row is then in the next statement's snapshot)."""
    message_id = store_message(session, message, metadata)
    spool_id = session.execute(
        insert(SpoolMessage).values(
            queue_id=params["queue_id"], kind=params["kind"], mail_from=params["mail_from"],
            size=params["size"], body=params["body"], smtputf8=params["smtputf8"],
            ret=params["ret"], envid=params["envid"], message_id=message_id,
            peer_ip=params["peer_ip"], helo=params["helo"], auth_user=params["auth_user"],
            disposition=params["disposition"])
        .returning(SpoolMessage.id)).scalar_one()
    rows = [{"spool_message_id": spool_id, "address": address, "orcpt": orcpt,
             "notify": notify, "stream": stream, "enqueued_at": params["enqueued_at"]}
            for address, orcpt, notify, stream in zip(
                params["addresses"], params["orcpts"], params["notifies"], params["streams"],
                strict=True)]
    # one multi-row INSERT; ordered by id, which a sequence hands out in VALUES order
    inserted = session.execute(insert(SpoolRecipient).values(rows)
                               .returning(SpoolRecipient.id)).scalars().all()
    return params["queue_id"], sorted(int(i) for i in inserted)


def create_spool_many(session: Session,
                      members: Sequence[dict[str, Any]]) -> list[tuple[str, list[int]]]:
    """:func:`create_spool_ids` for each of ``members`` (its keyword arguments), in one
    statement for them all (a group commit's members: docs/decisions/0018).

    The same rows as one :func:`create_spool_ids` per member, in order: each blob stored
    once (also when two members carry the same bytes), each member's recipient ids in
    its own order. Any bad argument raises before anything runs; so does any row
    PostgreSQL refuses (the caller's transaction then holds nothing of the group).
    """
    every = [_spool_params(**kwargs) for kwargs in members]
    if len(every) == 1:
        only = members[0]
        return [_spool_one(session, every[0], only["message"], only.get("metadata"))]
    blobs: dict[str, dict[str, Any]] = {}
    for params in every:
        blobs.setdefault(params["sha"], params)
    rcpt = [(str(n), address, orcpt, notify, stream)
            for n, params in enumerate(every)
            for address, orcpt, notify, stream in zip(
                params["addresses"], params["orcpts"], params["notifies"], params["streams"],
                strict=True)]
    group = {
        # text arrays throughout (the statement casts them): psycopg2 writes a list of
        # NULLs as an untyped ARRAY[NULL], which no other array type accepts
        "shas": list(blobs), "msizes": [str(p["msize"]) for p in blobs.values()],
        "blobs": [p["blob"] for p in blobs.values()],
        "metas": [p["meta"] for p in blobs.values()],
        "queue_ids": [p["queue_id"] for p in every], "kinds": [p["kind"] for p in every],
        "mail_froms": [p["mail_from"] for p in every],
        "sizes": [None if p["size"] is None else str(p["size"]) for p in every],
        "bodies": [p["body"] for p in every],
        "smtputf8s": ["t" if p["smtputf8"] else "f" for p in every],
        "rets": [p["ret"] for p in every], "envids": [p["envid"] for p in every],
        "member_shas": [p["sha"] for p in every], "peer_ips": [p["peer_ip"] for p in every],
        "helos": [p["helo"] for p in every], "auth_users": [p["auth_user"] for p in every],
        "dispositions": [p["disposition"] for p in every],
        "enqueued": [None if p["enqueued_at"] is None else p["enqueued_at"].isoformat()
                     for p in every],
        "r_members": [r[0] for r in rcpt], "addresses": [r[1] for r in rcpt],
        "orcpts": [r[2] for r in rcpt], "notifies": [r[3] for r in rcpt],
        "streams": [r[4] for r in rcpt]}
    ids: list[list[int]] = [[] for _ in every]
    for member, rid in _SPOOL_GROUP.execute(session.connection(), group):
        ids[int(member)].append(int(rid))
    results = []
    for params, member_ids, kwargs in zip(every, ids, members, strict=True):
        if member_ids:
            results.append((params["queue_id"], sorted(member_ids)))
        else:
            # its blob committed by another transaction after the statement's snapshot
            results.append(_spool_rows(session, params, kwargs["message"],
                                       kwargs.get("metadata")))
    return results


# Blob, spool message and recipients in one statement. The blob is content-addressed: when
# the bytes are already stored, ON CONFLICT inserts nothing and `msg` finds the existing
# row. Recipient ids come from a sequence in the order of unnest's rows (ORDER BY n).
# Returns no rows only when the conflicting blob was committed by another transaction
# after this statement's snapshot; the caller then takes the statement-per-row path.
_SPOOL_SQL = """
WITH blob AS (
    INSERT INTO messages (sha256, size, blob, metadata)
    VALUES (%(sha)s, %(msize)s, %(blob)s, CAST(%(meta)s AS jsonb))
    ON CONFLICT (sha256) DO NOTHING RETURNING id),
msg AS (
    SELECT id FROM blob
    UNION ALL
    SELECT id FROM messages WHERE sha256 = %(sha)s AND NOT EXISTS (SELECT 1 FROM blob)),
sp AS (
    INSERT INTO spool_messages (queue_id, kind, mail_from, size, body, smtputf8, ret, envid,
                                message_id, peer_ip, helo, auth_user, disposition)
    SELECT %(queue_id)s, %(kind)s, %(mail_from)s, %(size)s, %(body)s, %(smtputf8)s, %(ret)s,
           %(envid)s, msg.id, CAST(%(peer_ip)s AS inet), %(helo)s, %(auth_user)s,
           %(disposition)s
    FROM msg
    RETURNING id)
INSERT INTO spool_recipients (spool_message_id, address, orcpt, notify, stream, enqueued_at)
SELECT sp.id, r.address, r.orcpt, r.notify, r.stream, %(enqueued_at)s
FROM sp, unnest(CAST(%(addresses)s AS text[]), CAST(%(orcpts)s AS text[]),
                CAST(%(notifies)s AS text[]), CAST(%(streams)s AS text[]))
         WITH ORDINALITY AS r(address, orcpt, notify, stream, n)
ORDER BY r.n
RETURNING id
"""
_SPOOL = Prepared("spool_message", _SPOOL_SQL)

# _SPOOL_SQL for a group of messages (create_spool_many): the distinct blobs (inserted in
# sha256 order, so that two groups holding the same blobs lock them in the same order),
# then one spool message per member in member order, then their recipients in member
# and recipient order; returns (member index, recipient id). A member whose blob was
# committed by another transaction after this statement's snapshot gets no row.
_SPOOL_GROUP_SQL = """
WITH b AS (
    SELECT * FROM unnest(CAST(%(shas)s AS text[]), CAST(%(msizes)s AS text[]),
                         CAST(%(blobs)s AS bytea[]), CAST(%(metas)s AS text[]))
        AS b(sha256, size, blob, metadata)),
blob AS (
    INSERT INTO messages (sha256, size, blob, metadata)
    SELECT sha256, CAST(size AS bigint), blob, CAST(metadata AS jsonb) FROM b ORDER BY sha256
    ON CONFLICT (sha256) DO NOTHING RETURNING id, sha256),
msg AS (
    SELECT id, sha256 FROM blob
    UNION ALL
    SELECT m.id, m.sha256 FROM messages m
    WHERE m.sha256 IN (SELECT sha256 FROM b)
      AND NOT EXISTS (SELECT 1 FROM blob WHERE blob.sha256 = m.sha256)),
sp AS (
    INSERT INTO spool_messages (queue_id, kind, mail_from, size, body, smtputf8, ret, envid,
                                message_id, peer_ip, helo, auth_user, disposition)
    SELECT s.queue_id, s.kind, s.mail_from, CAST(s.size AS bigint), s.body,
           CAST(s.smtputf8 AS boolean), s.ret, s.envid, msg.id, CAST(s.peer_ip AS inet),
           s.helo, s.auth_user, s.disposition
    FROM unnest(CAST(%(queue_ids)s AS text[]), CAST(%(kinds)s AS text[]),
                CAST(%(mail_froms)s AS text[]), CAST(%(sizes)s AS text[]),
                CAST(%(bodies)s AS text[]), CAST(%(smtputf8s)s AS text[]),
                CAST(%(rets)s AS text[]), CAST(%(envids)s AS text[]),
                CAST(%(member_shas)s AS text[]), CAST(%(peer_ips)s AS text[]),
                CAST(%(helos)s AS text[]), CAST(%(auth_users)s AS text[]),
                CAST(%(dispositions)s AS text[]))
         WITH ORDINALITY AS s(queue_id, kind, mail_from, size, body, smtputf8, ret, envid, sha,
                              peer_ip, helo, auth_user, disposition, n)
    JOIN msg ON msg.sha256 = s.sha
    ORDER BY s.n
    RETURNING id, queue_id),
mem AS (
    SELECT sp.id, s.n - 1 AS member, CAST(s.enqueued_at AS timestamptz) AS enqueued_at
    FROM sp JOIN unnest(CAST(%(queue_ids)s AS text[]), CAST(%(enqueued)s AS text[]))
                 WITH ORDINALITY AS s(queue_id, enqueued_at, n) ON s.queue_id = sp.queue_id),
rc AS (
    INSERT INTO spool_recipients (spool_message_id, address, orcpt, notify, stream,
                                  enqueued_at)
    SELECT mem.id, r.address, r.orcpt, r.notify, r.stream, mem.enqueued_at
    FROM unnest(CAST(%(r_members)s AS text[]), CAST(%(addresses)s AS text[]),
                CAST(%(orcpts)s AS text[]), CAST(%(notifies)s AS text[]),
                CAST(%(streams)s AS text[]))
         WITH ORDINALITY AS r(member, address, orcpt, notify, stream, n)
    JOIN mem ON mem.member = CAST(r.member AS bigint)
    ORDER BY r.n
    RETURNING id, spool_message_id)
SELECT mem.member, rc.id FROM rc JOIN mem ON mem.id = rc.spool_message_id
"""
_SPOOL_GROUP = Prepared("spool_group", _SPOOL_GROUP_SQL)


def _info(session: Session, row: SpoolMessage) -> SpoolInfo:
    message_size = session.execute(
        select(Message.size).where(Message.id == row.message_id)).scalar_one()
    return SpoolInfo(
        id=row.id, queue_id=row.queue_id, kind=row.kind, mail_from=row.mail_from,
        size=row.size, body=row.body, smtputf8=row.smtputf8, ret=row.ret, envid=row.envid,
        message_id=row.message_id, message_size=message_size, received_at=row.received_at,
        peer_ip=row.peer_ip, helo=row.helo, auth_user=row.auth_user,
        disposition=row.disposition, recipients=[_recipient(r) for r in row.recipients])


def get_spool(session: Session, queue_id: str) -> SpoolInfo:
    """A spooled message with all its recipients; NotFound when there is none."""
    row = session.execute(select(SpoolMessage).where(SpoolMessage.queue_id == queue_id)
                          ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no queued message {queue_id}")
    return _info(session, row)


def get_recipient(session: Session, recipient_id: int) -> tuple[SpoolInfo, RecipientInfo]:
    """A recipient and its message: what a stream consumer needs to act on an entry."""
    row = session.get(SpoolRecipient, recipient_id)
    if row is None:
        raise NotFound(f"no spool recipient {recipient_id}")
    return _info(session, row.spool_message), _recipient(row)


# 'pending' sorts first: a message is shown as pending while any recipient is
_STATE_RANK = {state: rank for rank, state in enumerate(("pending", "failed", "bounced",
                                                         "delivered"))}


#: what `postroom queue list --state` filters on: a recipient's state, or for a pending one
#: whether it was tried yet (``queued``: not yet; ``deferred``: tried, waiting for a retry)
LIST_STATES = ("queued", "deferred", *RECIPIENT_STATES)


def _state_filter(state: str) -> Any:
    pending = SpoolRecipient.state == "pending"
    if state == "queued":
        return pending & (SpoolRecipient.attempts == 0)
    if state == "deferred":
        return pending & (SpoolRecipient.attempts > 0)
    return SpoolRecipient.state == state


def _contains(column: Any, text: str) -> Any:
    """Case-insensitive substring match, ``%`` and ``_`` in ``text`` taken literally."""
    return func.lower(column).contains(text.strip().lower(), autoescape=True)


def address_domain(address: str) -> str | None:
    """The domain of ``address`` (after its last ``@``), lowercased; None without one (``<>``)."""
    _, at, domain = address.rpartition("@")
    if not at:
        return None
    return domain.strip().rstrip(".").lower() or None


def domain_sql(column: Any) -> Any:
    """:func:`address_domain` in SQL (NULL without an ``@``)."""
    return func.rtrim(func.lower(func.substring(column, "@([^@]*)$")), ".")


def _filtered(state: str | None, *, mail_from: str | None, rcpt_to: str | None,
              address: str | None, domains: Collection[str] | None) -> Any:
    """The messages :func:`list_spool` and :func:`count_spool` agree on: one row each."""
    if state is not None and state not in LIST_STATES:
        raise ValueError(f"unknown state {state!r} (one of {', '.join(LIST_STATES)})")
    rank = case(_STATE_RANK, value=SpoolRecipient.state)
    query = (
        select(SpoolMessage.queue_id, SpoolMessage.kind, SpoolMessage.mail_from,
               func.count(SpoolRecipient.id), func.min(rank), SpoolMessage.received_at,
               Message.size)
        .join(SpoolRecipient, SpoolRecipient.spool_message_id == SpoolMessage.id)
        .join(Message, Message.id == SpoolMessage.message_id)
        .group_by(SpoolMessage.id, Message.size))
    if state is not None:
        query = query.having(func.bool_or(_state_filter(state)))
    if mail_from:
        query = query.where(_contains(SpoolMessage.mail_from, mail_from))
    if rcpt_to:
        query = query.having(func.bool_or(_contains(SpoolRecipient.address, rcpt_to)))
    if address:
        query = query.having(_contains(SpoolMessage.mail_from, address)
                             | func.bool_or(_contains(SpoolRecipient.address, address)))
    if domains is not None:
        # a domain manager's view: the sender's or a recipient's domain is one of theirs
        wanted = sorted({d.lower() for d in domains})
        query = query.having(func.coalesce(domain_sql(SpoolMessage.mail_from).in_(wanted), False)
                             | func.bool_or(domain_sql(SpoolRecipient.address).in_(wanted)))
    return query


def list_spool(session: Session, state: str | None = None, *, mail_from: str | None = None,
               rcpt_to: str | None = None, address: str | None = None,
               domains: Collection[str] | None = None, offset: int = 0,
               limit: int = 1000) -> list[SpoolSummary]:
    """Queued messages, oldest first; with ``state`` (one of LIST_STATES), those having a
    recipient in it; ``mail_from``, ``rcpt_to``, ``address`` (either) keep messages whose
    sender or a recipient contains the text, in any case (``@example.org`` = a domain);
    ``domains`` (None: all) keeps messages whose sender or a recipient is in one of them."""
    query = (_filtered(state, mail_from=mail_from, rcpt_to=rcpt_to, address=address,
                       domains=domains)
             .order_by(SpoolMessage.received_at, SpoolMessage.queue_id)
             .offset(offset).limit(limit))
    names = {rank: name for name, rank in _STATE_RANK.items()}
    return [SpoolSummary(queue_id=r[0], kind=r[1], mail_from=r[2], recipients=r[3],
                         state=names[r[4]], received_at=r[5], size=r[6])
            for r in session.execute(query)]


def count_spool(session: Session, state: str | None = None, *, mail_from: str | None = None,
                rcpt_to: str | None = None, address: str | None = None,
                domains: Collection[str] | None = None) -> int:
    """How many messages :func:`list_spool` lists with the same filters, without a limit."""
    inner = _filtered(state, mail_from=mail_from, rcpt_to=rcpt_to, address=address,
                      domains=domains).subquery()
    return int(session.execute(select(func.count()).select_from(inner)).scalar_one())


def _set(session: Session, recipient_id: int, **values: Any) -> None:
    done = session.execute(update(SpoolRecipient).where(SpoolRecipient.id == recipient_id)
                           .values(updated_at=func.now(), **values))
    if not getattr(done, "rowcount", 0):
        raise NotFound(f"no spool recipient {recipient_id}")


def _error(text: str) -> str:
    return text[:MAX_ERROR_CHARS]


def _history(session: Session, recipient_ids: Iterable[int], result: str,
             detail: str | None) -> None:
    """Append to the recipients' attempt history (read by `postroom trace`)."""
    rows = [{"recipient_id": rid, "result": result, "detail": detail} for rid in recipient_ids]
    if rows:
        session.execute(insert(SpoolAttempt), rows)


@dataclass(frozen=True)
class AttemptInfo:
    """One outcome in a recipient's history."""

    recipient_id: int
    at: datetime
    result: str
    detail: str | None


def attempts_of(session: Session, recipient_ids: Collection[int]) -> list[AttemptInfo]:
    """The recipients' histories (each attempt, the bounce), oldest first."""
    if not recipient_ids:
        return []
    rows = session.execute(
        select(SpoolAttempt.recipient_id, SpoolAttempt.at, SpoolAttempt.result,
               SpoolAttempt.detail)
        .where(SpoolAttempt.recipient_id.in_(sorted(recipient_ids)))
        .order_by(SpoolAttempt.at, SpoolAttempt.id))
    return [AttemptInfo(recipient_id=r, at=at, result=result, detail=detail)
            for r, at, result, detail in rows]


def mark_delivered(session: Session, recipient_id: int, detail: str | None = None) -> None:
    """The recipient's copy is delivered (stored locally, or accepted by the remote MX)."""
    _set(session, recipient_id, state="delivered", last_error=None, enqueued_at=None)
    _history(session, [recipient_id], "delivered", detail)


def mark_deferred(session: Session, recipient_id: int, error: str,
                  next_attempt_at: datetime) -> None:
    """A temporary failure: count the attempt and try again at ``next_attempt_at``."""
    _set(session, recipient_id, attempts=SpoolRecipient.attempts + 1, last_error=_error(error),
         next_attempt_at=next_attempt_at, enqueued_at=None)
    _history(session, [recipient_id], "deferred", _error(error))


def mark_failed(session: Session, recipient_id: int, error: str) -> None:
    """A permanent failure (or the queue lifetime ran out): a bounce is due."""
    _set(session, recipient_id, state="failed", attempts=SpoolRecipient.attempts + 1,
         last_error=_error(error), enqueued_at=None)
    _history(session, [recipient_id], "failed", _error(error))


def mark_bounced(session: Session, recipient_ids: Iterable[int]) -> None:
    """The DSN for these failed recipients has been spooled."""
    ids = list(recipient_ids)
    if ids:
        session.execute(update(SpoolRecipient).where(SpoolRecipient.id.in_(ids))
                        .values(state="bounced", updated_at=func.now()))
        _history(session, ids, "bounced", None)


def next_backoff(attempts: int, initial: float, maximum: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: initial, doubling, capped."""
    if attempts <= 1:
        return min(initial, maximum)
    # cap the exponent: 2**big overflows float long after the cap already applies
    return min(maximum, initial * 2.0 ** min(attempts - 1, 60))


def retry_now(session: Session, queue_id: str) -> int:
    """Make every pending recipient of a message due now; returns how many."""
    ident = session.execute(select(SpoolMessage.id).where(SpoolMessage.queue_id == queue_id)
                            ).scalar_one_or_none()
    if ident is None:
        raise NotFound(f"no queued message {queue_id}")
    done = session.execute(
        update(SpoolRecipient)
        .where(SpoolRecipient.spool_message_id == ident, SpoolRecipient.state == "pending")
        .values(next_attempt_at=func.now(), enqueued_at=None, updated_at=func.now()))
    return int(getattr(done, "rowcount", 0))


def delete_spool(session: Session, queue_id: str) -> None:
    """Remove a message from the queue (its blob too, unless a mailbox still holds it)."""
    found = session.execute(
        select(SpoolMessage.id, SpoolMessage.message_id).where(SpoolMessage.queue_id == queue_id)
    ).first()
    if found is None:
        raise NotFound(f"no queued message {queue_id}")
    session.execute(delete(SpoolMessage).where(SpoolMessage.id == found[0]))
    delete_orphans(session, [found[1]])


def _finished_before(before: datetime) -> Any:
    """Received before ``before``, and every recipient delivered or bounced before it too.

    Both times count: a message that took days to bounce keeps its history (``postroom
    trace``) for the retention after its last outcome, not only after its arrival.
    """
    unfinished = select(SpoolRecipient.id).where(
        SpoolRecipient.spool_message_id == SpoolMessage.id,
        SpoolRecipient.state.in_(("pending", "failed")) | (SpoolRecipient.updated_at >= before))
    return (SpoolMessage.received_at < before) & ~unfinished.exists()


def purge_finished(session: Session, before: datetime, *, limit: int = 1000) -> int:
    """Delete up to ``limit`` finished messages (see :func:`_finished_before`); how many.

    Their recipients, attempt history and (through mailbox_entries.spool_recipient_id)
    delivery keys go by ON DELETE CASCADE / SET NULL; then their blobs unless a mailbox
    entry or another spool message still uses them. Rows another transaction holds are
    skipped (SKIP LOCKED), so several mta replicas purging at once split the work.
    """
    rows = session.execute(
        select(SpoolMessage.id, SpoolMessage.message_id)
        .where(_finished_before(before))
        .limit(limit).with_for_update(skip_locked=True)).all()
    if not rows:
        return 0
    session.execute(delete(SpoolMessage).where(SpoolMessage.id.in_([r[0] for r in rows]))
                    .execution_options(synchronize_session=False))
    delete_orphans(session, sorted({r[1] for r in rows}))
    return len(rows)


def count_finished(session: Session, before: datetime) -> int:
    """How many messages :func:`purge_finished` would delete now (`postroom queue purge -n`)."""
    return int(session.execute(select(func.count()).select_from(SpoolMessage)
                               .where(_finished_before(before))).scalar_one())


def expand_recipient(session: Session, recipient_id: int,
                     addresses: Sequence[str]) -> list[int]:
    """Replace a recipient by ``addresses`` (alias expansion) on the deliver stream.

    Each final address gets its own recipient row, so each mailbox copy has its
    own idempotency key. Idempotent: a second call returns the same new ids.
    The original is marked delivered (its work now lives in its children).
    """
    parent = session.execute(select(SpoolRecipient).where(SpoolRecipient.id == recipient_id)
                             .with_for_update()).scalar_one_or_none()
    if parent is None:
        raise NotFound(f"no spool recipient {recipient_id}")
    children = list(session.execute(select(SpoolRecipient.id)
                                    .where(SpoolRecipient.parent_id == recipient_id)
                                    .order_by(SpoolRecipient.id)).scalars())
    if children or parent.state != "pending":
        return children
    made = []
    for address in dict.fromkeys(addresses):
        child = SpoolRecipient(spool_message_id=parent.spool_message_id, parent_id=parent.id,
                               address=address, orcpt=parent.orcpt or parent.address,
                               notify=parent.notify, stream="deliver")
        session.add(child)
        made.append(child)
    parent.state = "delivered"
    parent.enqueued_at = None
    parent.updated_at = func.now()  # type: ignore[assignment]
    session.flush()
    return [c.id for c in made]


def due_recipients(session: Session, now: datetime, stale_before: datetime,
                   limit: int = 500) -> list[dict[str, Any]]:
    """Pending recipients due by ``now`` and not on a stream since ``stale_before``.

    Rows are locked with SKIP LOCKED, so two reconcilers running at once split
    the work; call :func:`mark_enqueued` in the same transaction.
    """
    rows = session.execute(
        select(SpoolRecipient.id, SpoolMessage.queue_id, SpoolRecipient.spool_message_id,
               SpoolRecipient.address, SpoolRecipient.stream, SpoolRecipient.attempts,
               SpoolRecipient.next_attempt_at, SpoolRecipient.enqueued_at, SpoolMessage.kind)
        .join(SpoolMessage, SpoolMessage.id == SpoolRecipient.spool_message_id)
        .where(SpoolRecipient.state == "pending", SpoolRecipient.next_attempt_at <= now,
               (SpoolRecipient.enqueued_at.is_(None)) | (SpoolRecipient.enqueued_at < stale_before))
        .order_by(SpoolRecipient.next_attempt_at, SpoolRecipient.id)
        .limit(limit)
        .with_for_update(of=SpoolRecipient, skip_locked=True))
    return [{"recipient_id": r[0], "queue_id": r[1], "spool_message_id": r[2], "address": r[3],
             "stream": r[4], "attempts": r[5], "next_attempt_at": r[6], "enqueued_at": r[7],
             "kind": r[8]} for r in rows]


def mark_enqueued(session: Session, recipient_ids: Iterable[int], at: datetime) -> None:
    """Record that these recipients were just put on their Redis stream."""
    ids = list(recipient_ids)
    if ids:
        session.execute(update(SpoolRecipient).where(SpoolRecipient.id.in_(ids))
                        .values(enqueued_at=at))
