"""Content-addressed message blobs: identical bytes are stored once, keyed by SHA-256."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from postroom.mime.fulltext import MessageText
from postroom.store import fts
from postroom.store.errors import NotFound
from postroom.store.models import MailboxEntry, Message, SpoolMessage


def store_message(session: Session, data: bytes, metadata: dict[str, Any] | None = None,
                  doc: MessageText | None = None) -> int:
    """The id of the message with these exact bytes, inserting it when it is new.

    ``metadata`` (cached envelope, bodystructure, headers) is kept only when the
    message is new; use :func:`set_metadata` to replace it. ``doc``, its
    searchable text (postroom.store.fts), is kept when the blob has none.
    """
    message_id = _store_blob(session, data, metadata)
    if doc is not None:
        fts.store_text(session, message_id, doc)
    return message_id


def _store_blob(session: Session, data: bytes, metadata: dict[str, Any] | None) -> int:
    digest = hashlib.sha256(data).hexdigest()
    # ON CONFLICT DO NOTHING: two concurrent writers of the same bytes both succeed
    inserted = session.execute(
        insert(Message).values(sha256=digest, size=len(data), blob=data, meta=metadata or {})
        .on_conflict_do_nothing(index_elements=[Message.sha256])
        .returning(Message.id)).scalar_one_or_none()
    if inserted is not None:
        return int(inserted)
    return int(session.execute(select(Message.id).where(Message.sha256 == digest)).scalar_one())


def get_message(session: Session, message_id: int) -> bytes:
    """The bytes of a stored message, or NotFound."""
    query = select(Message.blob).where(Message.id == message_id)
    blob = session.execute(query).scalar_one_or_none()
    if blob is None:
        raise NotFound(f"no message with id {message_id}")
    return bytes(blob)


def get_metadata(session: Session, message_id: int) -> dict[str, Any]:
    """The cached metadata of a stored message, or NotFound."""
    query = select(Message.meta).where(Message.id == message_id)
    meta = session.execute(query).scalar_one_or_none()
    if meta is None:
        raise NotFound(f"no message with id {message_id}")
    return dict(meta)


def set_metadata(session: Session, message_id: int, metadata: dict[str, Any]) -> None:
    """Replace the cached metadata of a stored message."""
    done = session.execute(update(Message).where(Message.id == message_id).values(meta=metadata))
    if not getattr(done, "rowcount", 0):
        raise NotFound(f"no message with id {message_id}")


def delete_orphans(session: Session, message_ids: list[int] | None = None) -> int:
    """Delete messages no mailbox entry and no spool message refers to; returns how many.

    With ``message_ids`` only those are considered (cheap, after a spool delete).
    """
    # the sub-selects name a column rather than `SELECT *`, so that a role granted only
    # SELECT (message_id) on these tables may run this (postroom.store.roles)
    query = delete(Message).where(
        ~select(MailboxEntry.message_id).where(MailboxEntry.message_id == Message.id).exists(),
        ~select(SpoolMessage.message_id).where(SpoolMessage.message_id == Message.id).exists())
    if message_ids is not None:
        if not message_ids:
            return 0
        query = query.where(Message.id.in_(message_ids))
    result = session.execute(query)
    return int(getattr(result, "rowcount", 0))


def stale_metadata(session: Session, after_id: int, limit: int) -> list[tuple[int, bytes]]:
    """(id, blob) of up to ``limit`` messages past ``after_id`` whose metadata predates the
    IMAP search keys (``sort.text``: FROM/TO/CC/BCC as clients see them, ``sort.sent_day``,
    the display names and ``sort.thread``, all added together), by id.
    """
    query = (select(Message.id, Message.blob)
             .where(Message.id > after_id, ~Message.meta["sort"].has_key("thread"))
             .order_by(Message.id).limit(limit))
    return [(int(r[0]), bytes(r[1])) for r in session.execute(query)]
