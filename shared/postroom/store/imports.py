"""Mailboxes filled from another server with the UIDs its clients know (`postroom import dovecot`).

An IMAP client caches a mailbox under its UIDVALIDITY and each message under
its UID; a POP3 client that leaves mail on the server remembers UIDLs. To move
a mailbox without every client fetching everything again, the import gives
the mailbox the old UIDVALIDITY, each message its old UID, and keeps the old
UIDL per message (``mailbox_entries.pop3_uidl``). The invariants of
:mod:`postroom.store.mailboxes` still hold: UIDs only grow and are never
reused, because an old UID is taken only when it is at or above the
mailbox's UIDNEXT (the counter is moved up to it, then the one entry-adding
statement takes it); below that the message gets a fresh UID.

CONDSTORE/QRESYNC clients also cache the mailbox's HIGHESTMODSEQ and ask
for what changed since. Dovecot's mod-sequences live in its binary index and
are not carried over, so a mailbox whose UIDs are kept gets a HIGHESTMODSEQ
of at least :data:`MODSEQ_FLOOR`, above any a Dovecot mailbox reaches (its
counter grows by one per change): every change made here afterwards is then
newer than what such a client knows, and none is missed. The imported
messages' own mod-sequences stay below it: as of the import, the client's
cached flags are the ones imported.

``mailboxes.import_uidnext`` records the old server's UIDNEXT at the last
import, so a rerun (import, switch MX, import again) takes only what arrived
since, and does not bring back what a user deleted here in between.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from postroom.store import mailboxes
from postroom.store.models import Mailbox, MailboxEntry, Message
from postroom.store.prepared import Prepared

#: 2^30: far above a Dovecot mailbox's mod-sequence, and within what a client keeping it
#: in a signed 32-bit integer can hold (RFC 7162 allows 63 bits)
MODSEQ_FLOOR = 1 << 30


@dataclass(frozen=True)
class ImportTarget:
    """A mailbox ready to receive imported messages, as it was before this run."""

    mailbox_id: int
    name: str
    created: bool
    #: the old UIDs can be kept: the mailbox has (now) the old server's UIDVALIDITY
    keep_uids: bool
    #: the old server's UIDNEXT at the previous import (None: never imported)
    import_uidnext: int | None
    #: uid -> (sha256, pop3_uidl) of what the mailbox held before this run
    present: dict[int, tuple[str, str | None]] = field(default_factory=dict)

    @property
    def uidls(self) -> set[str]:
        return {uidl for _sha, uidl in self.present.values() if uidl}

    @property
    def digests_without_uidl(self) -> set[str]:
        """Messages here under a UID and UIDL of ours (delivered here, or imported unlisted)."""
        return {sha for sha, uidl in self.present.values() if not uidl}


def open_import_mailbox(session: Session, user_id: int, name: str,
                        uidvalidity: int | None) -> ImportTarget:
    """The mailbox ``name`` (made when missing), given ``uidvalidity`` when that is safe.

    Safe means nothing was ever in it: a mailbox this import made, or one of
    the defaults ``user add`` made that never received mail (UIDNEXT 1). A
    mailbox that has had mail here keeps its UIDVALIDITY, and the imported
    messages get fresh UIDs (clients then fetch that mailbox again).
    """
    if name.upper() == "INBOX":
        name = "INBOX"
    created = mailboxes.ensure_mailbox(session, user_id, name)
    row = session.execute(select(Mailbox).where(Mailbox.user_id == user_id,
                                                Mailbox.name == name)
                          .with_for_update()).scalar_one()
    if uidvalidity is not None and row.uidvalidity != uidvalidity and row.uidnext == 1 \
            and row.import_uidnext is None:
        row.uidvalidity = uidvalidity
        session.flush()
    present = {int(uid): (sha, uidl) for uid, sha, uidl in session.execute(
        select(MailboxEntry.uid, Message.sha256, MailboxEntry.pop3_uidl)
        .join(Message, Message.id == MailboxEntry.message_id)
        .where(MailboxEntry.mailbox_id == row.id))}
    return ImportTarget(mailbox_id=row.id, name=name, created=created,
                        keep_uids=uidvalidity is not None and row.uidvalidity == uidvalidity,
                        import_uidnext=row.import_uidnext, present=present)


# the one entry-adding statement (mailboxes.add_entry_sql), with UIDNEXT first raised to
# the old UID (never lowered) and the old UIDL kept
_ADD_IMPORTED = Prepared("import_add_entry", "WITH " + mailboxes.add_entry_sql(  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
    "id = %(m)s", message="%(msg)s", flags="%(f)s",
    internaldate="CAST(%(d)s AS timestamptz)", uidnext="CAST(%(uid)s AS bigint)",
    pop3_uidl="CAST(%(uidl)s AS text)") + " SELECT uid FROM entry")


def add_imported(session: Session, *, target: ImportTarget, message_id: int,
                 uid: int | None, flags: list[str], internaldate: datetime,
                 pop3_uidl: str | None) -> int:
    """File stored message ``message_id`` under ``uid`` when it is free and ahead; its UID.

    One statement: the mailbox row's UIDNEXT is raised to ``uid`` (never
    lowered) and taken, so the entry gets ``uid`` when that was at or above
    UIDNEXT, else the next fresh one. Without kept UIDs, always a fresh one.
    """
    wanted = uid if uid is not None and target.keep_uids else 0
    row = _ADD_IMPORTED.execute(session.connection(), {
        "m": target.mailbox_id, "msg": message_id, "f": list(flags), "d": internaldate,
        "uid": wanted, "uidl": pop3_uidl}).one()
    return int(row[0])


def finish_import_mailbox(session: Session, target: ImportTarget, nextuid: int | None) -> None:
    """Remember the old server's UIDNEXT; with kept UIDs, new mail here gets UIDs above it,
    and changes here get mod-sequences above the old server's (:data:`MODSEQ_FLOOR`)."""
    if nextuid is None:
        return
    values: dict[str, object] = {
        "import_uidnext": func.greatest(func.coalesce(Mailbox.import_uidnext, 0), nextuid)}
    if target.keep_uids:
        values["uidnext"] = func.greatest(Mailbox.uidnext, nextuid)
        values["highestmodseq"] = func.greatest(Mailbox.highestmodseq, MODSEQ_FLOOR)
    session.execute(update(Mailbox).where(Mailbox.id == target.mailbox_id).values(**values))


def copies_present(session: Session, user_id: int, name: str, sha256: str) -> int:
    """How many copies of these bytes (by SHA-256) the mailbox ``name`` holds
    (`postroom import maildir|mbox` adds a copy only when the folder has more)."""
    return int(session.execute(
        select(func.count(MailboxEntry.id))
        .join(Mailbox, Mailbox.id == MailboxEntry.mailbox_id)
        .join(Message, Message.id == MailboxEntry.message_id)
        .where(Mailbox.user_id == user_id, Mailbox.name == name, Message.sha256 == sha256))
        .scalar_one())
