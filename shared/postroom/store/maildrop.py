"""The POP3 maildrop's view of the mailbox entries: the INBOX snapshot, one message, expunge.

The maildrop is the user's INBOX as it was at login (RFC 1939: message
numbers do not change during a session); QUIT expunges the marked entries in
one transaction that also advances the mailbox's HIGHESTMODSEQ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from postroom.store import vanished
from postroom.store.mailboxes import next_modseq
from postroom.store.messages import delete_orphans
from postroom.store.models import Mailbox, MailboxEntry, Message


@dataclass(frozen=True)
class Snapshot:
    """The INBOX at login: its id, UIDVALIDITY and (uid, size) of each entry by uid.

    ``uidls`` holds the UIDLs imported messages had on their old server
    (`postroom import dovecot`), by uid; the others answer the default.
    """

    mailbox_id: int | None
    uidvalidity: int
    entries: tuple[tuple[int, int], ...]
    uidls: dict[int, str] = field(default_factory=dict)

    def uidl(self, uid: int) -> str:
        """The POP3 unique-id of the entry ``uid``: imported, else ``<uidvalidity>.<uid>``."""
        return self.uidls.get(uid) or f"{self.uidvalidity}.{uid}"


def load_snapshot(session: Session, user_id: int) -> Snapshot:
    """The user's INBOX entries with their sizes, oldest uid first (empty without an INBOX)."""
    mailbox = session.execute(
        select(Mailbox.id, Mailbox.uidvalidity)
        .where(Mailbox.user_id == user_id, Mailbox.name == "INBOX")).first()
    if mailbox is None:
        return Snapshot(None, 0, ())
    rows = session.execute(
        select(MailboxEntry.uid, Message.size, MailboxEntry.pop3_uidl)
        .join(Message, Message.id == MailboxEntry.message_id)
        .where(MailboxEntry.mailbox_id == mailbox.id)
        .order_by(MailboxEntry.uid)).all()
    return Snapshot(mailbox.id, mailbox.uidvalidity,
                    tuple((int(uid), int(size)) for uid, size, _uidl in rows),
                    {int(uid): uidl for uid, _size, uidl in rows if uidl})


def message_at(session: Session, mailbox_id: int, uid: int) -> bytes | None:
    """The stored message under ``uid``, or None when it was expunged."""
    blob = session.execute(
        select(Message.blob)
        .join(MailboxEntry, MailboxEntry.message_id == Message.id)
        .where(MailboxEntry.mailbox_id == mailbox_id, MailboxEntry.uid == uid)
    ).scalar_one_or_none()
    return None if blob is None else bytes(blob)


def expunge_uids(session: Session, mailbox_id: int, uids: Sequence[int]) -> tuple[list[int], int]:
    """Remove the entries ``uids`` still present; (removed uids, new HIGHESTMODSEQ or 0).

    The mailbox row is locked first, the order IMAP and delivery use, so the
    three never deadlock; blobs nothing else refers to are deleted too.
    """
    session.execute(select(Mailbox.id).where(Mailbox.id == mailbox_id).with_for_update())
    removed = session.execute(
        delete(MailboxEntry)
        .where(MailboxEntry.mailbox_id == mailbox_id, MailboxEntry.uid.in_(list(uids)))
        .returning(MailboxEntry.uid, MailboxEntry.message_id)).all()
    if not removed:
        return [], 0
    modseq = next_modseq(session, mailbox_id)
    vanished.remember(session, mailbox_id, sorted(int(uid) for uid, _ in removed), modseq)
    delete_orphans(session, sorted({int(message_id) for _, message_id in removed}))
    return sorted(int(uid) for uid, _ in removed), modseq
