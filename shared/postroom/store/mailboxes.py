"""IMAP mailboxes: creation with a fresh UIDVALIDITY, listing, and UID/MODSEQ allocation.

:func:`add_entry_sql` is the one implementation of "lock the mailbox row,
take uidnext, bump modseq": :func:`deliver_to_mailbox`, IMAP's APPEND
(postroom.store.entries) and the mda's fast store (postroom.store.delivery)
all add their entries with its text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from postroom.store.common import insert_unique
from postroom.store.errors import NotFound
from postroom.store.models import Mailbox, MailboxEntry, Message
from postroom.store.prepared import Prepared

# created with every account (RFC 6154 special-use attributes)
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


@dataclass(frozen=True)
class MailboxInfo:
    id: int
    user_id: int
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None
    subscribed: bool


def _info(row: Mailbox) -> MailboxInfo:
    return MailboxInfo(id=row.id, user_id=row.user_id, name=row.name,
                       uidvalidity=row.uidvalidity, uidnext=row.uidnext,
                       highestmodseq=row.highestmodseq, special_use=row.special_use,
                       subscribed=row.subscribed)


def new_uidvalidity(session: Session) -> int:
    """A UIDVALIDITY greater than any handed out before, and at least the Unix time.

    The clock part keeps values increasing even after a restore from a backup
    whose sequence is behind (RFC 3501 2.3.1.1: a re-created mailbox must get a
    greater value, or clients would trust stale UIDs).
    """
    return int(session.execute(text(
        "SELECT setval('mailbox_uidvalidity_seq', greatest(nextval('mailbox_uidvalidity_seq'),"
        " extract(epoch FROM clock_timestamp())::bigint))")).scalar_one())


def create_mailbox(session: Session, user_id: int, name: str, *,
                   special_use: str | None = None, subscribed: bool = True) -> MailboxInfo:
    """Create mailbox ``name`` for a user; AlreadyExists when the user has one of that name."""
    # INBOX is case-insensitive in IMAP (RFC 3501 5.1); other names are kept as given
    if name.upper() == "INBOX":
        name = "INBOX"

    def insert() -> Mailbox:
        row = Mailbox(user_id=user_id, name=name, uidvalidity=new_uidvalidity(session),
                      special_use=special_use, subscribed=subscribed)
        session.add(row)
        session.flush()
        return row

    row = insert_unique(session, insert, f"mailbox {name} already exists")
    session.refresh(row)
    return _info(row)


def create_default_mailboxes(session: Session, user_id: int) -> list[MailboxInfo]:
    return [create_mailbox(session, user_id, name, special_use=use)
            for name, use in DEFAULT_MAILBOXES]


def list_mailboxes(session: Session, user_id: int) -> list[MailboxInfo]:
    """A user's mailboxes, INBOX first, then by name."""
    rows = session.execute(
        select(Mailbox).where(Mailbox.user_id == user_id)
        .order_by(Mailbox.name != "INBOX", Mailbox.name)).scalars()
    return [_info(r) for r in rows]


def get_mailbox(session: Session, user_id: int, name: str) -> MailboxInfo:
    """One mailbox of a user by name, or NotFound."""
    if name.upper() == "INBOX":
        name = "INBOX"
    row = session.execute(select(Mailbox).where(Mailbox.user_id == user_id,
                                                Mailbox.name == name)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no mailbox {name}")
    return _info(row)


def _lock_mailbox(session: Session, user_id: int, name: str) -> Mailbox:
    row = session.execute(
        select(Mailbox).where(Mailbox.user_id == user_id, Mailbox.name == name)
        .with_for_update()).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no mailbox {name}")
    return row


def _lock_mailbox_and_find(session: Session, user_id: int, name: str, spool_recipient_id: int
                           ) -> tuple[Mailbox, tuple[int, int] | None]:
    earlier = (select(MailboxEntry.uid, MailboxEntry.modseq)
               .where(MailboxEntry.spool_recipient_id == spool_recipient_id).limit(1))
    # the subqueries may run on a snapshot from before the lock was granted; a copy a
    # concurrent delivery committed meanwhile is then caught by the unique key on
    # spool_recipient_id (deliver_to_mailbox's IntegrityError path), so nothing doubles
    row = session.execute(
        select(Mailbox, earlier.with_only_columns(MailboxEntry.uid).scalar_subquery(),
               earlier.with_only_columns(MailboxEntry.modseq).scalar_subquery())
        .where(Mailbox.user_id == user_id, Mailbox.name == name)
        .with_for_update(of=Mailbox)).first()
    if row is None:
        raise NotFound(f"no mailbox {name}")
    return row[0], (None if row[1] is None else (int(row[1]), int(row[2])))


def _existing_delivery(session: Session, spool_recipient_id: int) -> tuple[int, int] | None:
    found = session.execute(
        select(MailboxEntry.uid, MailboxEntry.modseq)
        .where(MailboxEntry.spool_recipient_id == spool_recipient_id)).first()
    return (found[0], found[1]) if found else None


def deliver_to_mailbox(session: Session, *, user_id: int, mailbox_name: str, message_id: int,
                       spool_recipient_id: int | None, flags: list[str] | None = None,
                       internaldate: datetime | None = None) -> tuple[int, int]:
    """Put stored message ``message_id`` into a mailbox; returns its (uid, modseq).

    The mailbox row is locked (SELECT ... FOR UPDATE) while its uidnext and
    highestmodseq advance, so concurrent deliveries get consecutive UIDs with no
    reuse and no gap. A ``spool_recipient_id`` already delivered returns the
    first delivery's (uid, modseq) and adds nothing: redelivery is harmless.
    """
    if mailbox_name.upper() == "INBOX":
        mailbox_name = "INBOX"
    if spool_recipient_id is None:
        mailbox = _lock_mailbox(session, user_id, mailbox_name)
    else:
        # one statement: lock the mailbox and look for an earlier delivery
        mailbox, existing = _lock_mailbox_and_find(session, user_id, mailbox_name,
                                                   spool_recipient_id)
        if existing is not None:
            return existing
    try:
        # a savepoint, so that losing a race on spool_recipient_id into ANOTHER mailbox
        # (whose lock we do not hold) undoes this mailbox's counters too
        with session.begin_nested():
            row = _ADD_ENTRY.execute(session.connection(), {
                "m": mailbox.id, "msg": message_id, "f": list(flags or []),
                "d": internaldate, "rid": spool_recipient_id}).one()
    except IntegrityError:
        if spool_recipient_id is None:
            raise
        session.refresh(mailbox)
        existing = _existing_delivery(session, spool_recipient_id)
        if existing is None:
            raise
        return existing
    # the statement moved the counters behind the ORM's back: reload them when next read
    session.expire(mailbox, ["uidnext", "highestmodseq"])
    return int(row[1]), int(row[2])


# distinct keywords one mailbox lists (IMAP FLAGS and PERMANENTFLAGS announce them all)
MAX_KEYWORDS = 200


def add_entry_sql(box: str, *, message: str, flags: str, internaldate: str,
                  spool_recipient: str = "NULL", uidnext: str | None = None,
                  pop3_uidl: str | None = None) -> str:
    """The one way to add an entry: lock the mailbox row, take uidnext, bump modseq.

    Two CTEs for a ``WITH`` clause, the SQL fragments in the arguments naming
    their values: ``box`` is the mailbox row's condition (``id = %(m)s``, plus
    whatever else must hold for the entry to be added). The UPDATE of the
    row takes its lock, held to COMMIT, so concurrent writers get
    consecutive UIDs in commit order with no reuse and no gap; the entry gets
    the old uidnext and the new highestmodseq. ``box`` yields (id,
    uidvalidity, uid, modseq) and ``entry`` (mailbox_id, uid, modseq), one row
    each, or none when no mailbox row matched (then nothing changed).

    ``uidnext`` may raise the counter first (``greatest(uidnext, %(uid)s)``:
    `postroom import dovecot` keeping an old UID that is still ahead, see
    :mod:`postroom.store.imports`); it can never lower it, so no UID is reused.
    ``pop3_uidl`` is an imported message's old UIDL. Without either, the
    statement is the plain one every delivery path uses.

    The entry's keywords join the mailbox's keyword list (which IMAP
    announces before a FETCH shows them), up to MAX_KEYWORDS.
    """
    taken = "uidnext" if uidnext is None else f"greatest(uidnext, {uidnext})"
    uidl_column, uidl_value = ("", "") if pop3_uidl is None else (", pop3_uidl", f", {pop3_uidl}")
    return (
        f"box AS (UPDATE mailboxes SET uidnext = {taken} + 1, "  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
        f"highestmodseq = highestmodseq + 1, keywords = {_merged_keywords(flags)} "
        f"WHERE {box} "
        "RETURNING id, uidvalidity, uidnext - 1 AS uid, highestmodseq AS modseq), "
        "entry AS (INSERT INTO mailbox_entries (mailbox_id, uid, message_id, flags, modseq, "
        f"internaldate, spool_recipient_id{uidl_column}) "
        f"SELECT box.id, box.uid, {message}, CAST({flags} AS text[]), box.modseq, "
        f"{internaldate}, {spool_recipient}{uidl_value} FROM box "
        "RETURNING mailbox_id, uid, modseq)")



def _merged_keywords(flags: str) -> str:
    """SQL for the keyword list with the keywords of ``flags`` added (unchanged past the cap)."""
    new = f"coalesce(CAST({flags} AS text[]), '{{}}')"
    merged = (f"ARRAY(SELECT DISTINCT x FROM unnest(keywords || {new}) x "  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
              "WHERE left(x, 1) <> '\\' ORDER BY x)")
    return (f"CASE WHEN keywords @> {new} OR NOT EXISTS (SELECT 1 FROM unnest({new}) f "  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
            "WHERE left(f, 1) <> '\\') THEN keywords "
            f"WHEN cardinality({merged}) > {MAX_KEYWORDS} THEN keywords ELSE {merged} END")


_ADD_ENTRY = Prepared("mailbox_add_entry", "WITH " + add_entry_sql(  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
    "id = %(m)s", message="%(msg)s", flags="%(f)s",
    internaldate="coalesce(CAST(%(d)s AS timestamptz), now())", spool_recipient="%(rid)s")
    + " SELECT mailbox_id, uid, modseq FROM entry")


def ensure_mailbox(session: Session, user_id: int, name: str) -> bool:
    """Create the mailbox and its parents when missing; True when ``name`` itself was made
    (the importers: a Maildir++ or Dovecot folder tree names children before parents)."""
    made = False
    parts = name.split("/")
    for depth in range(1, len(parts) + 1):
        path = "/".join(parts[:depth])
        try:
            get_mailbox(session, user_id, path)
        except NotFound:
            create_mailbox(session, user_id, path)
            made = depth == len(parts)
    return made


def next_modseq(session: Session, mailbox_id: int) -> int:
    """Advance and return a mailbox's HIGHESTMODSEQ (for flag changes and expunges)."""
    mailbox = session.execute(select(Mailbox).where(Mailbox.id == mailbox_id)
                              .with_for_update()).scalar_one_or_none()
    if mailbox is None:
        raise NotFound(f"no mailbox with id {mailbox_id}")
    mailbox.highestmodseq += 1
    session.flush()
    return mailbox.highestmodseq


def usage(session: Session, user_id: int) -> tuple[int, int]:
    """(bytes, messages) a user's mailboxes hold, for quota checks (RFC 9208 STORAGE/MESSAGE)."""
    row = session.execute(
        select(func.coalesce(func.sum(Message.size), 0), func.count(MailboxEntry.id))
        .select_from(MailboxEntry)
        .join(Mailbox, Mailbox.id == MailboxEntry.mailbox_id)
        .join(Message, Message.id == MailboxEntry.message_id)
        .where(Mailbox.user_id == user_id)).one()
    return int(row[0]), int(row[1])
