"""Mailbox entries: IMAP's queries, and the one way an entry is added to a mailbox.

Every function takes a Session first and returns plain data. Whatever changes
a mailbox's entries locks its row first (SELECT ... FOR UPDATE, or an UPDATE of
it), the order the MDA and POP3 use, and advances HIGHESTMODSEQ, so other
sessions notice. Adding an entry ("lock the mailbox row, take uidnext, bump
modseq") is written once, in ``mailboxes.add_entry_sql``; IMAP's APPEND, the mda's
fast store (postroom.store.delivery) and ``mailboxes.deliver_to_mailbox`` all
run that text.

The statements a typical IMAP session runs on every command (SELECT, FETCH,
STORE, APPEND, EXPUNGE) are server-side prepared statements
(docs/decisions/0006), written with psycopg2's ``%(name)s`` placeholders;
the rest stay text() statements. A missing mailbox is :class:`NotFound`, a
taken name :class:`AlreadyExists`, a passed quota :class:`OverQuota`; the imap
service maps them to its refusals.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import text
from sqlalchemy.orm import Session

from postroom.mime.fulltext import MessageText
from postroom.store import fts, learning, mailboxes, messages, vanished
from postroom.store.errors import AlreadyExists, NotFound, OverQuota, TooManyKeywords
from postroom.store.prepared import Prepared
from postroom.store.search import SearchKey, search_plan, search_where


@dataclass(frozen=True)
class MailboxRow:
    """One mailbox of a user, as LIST shows it."""

    name: str
    special_use: str | None
    subscribed: bool


@dataclass(frozen=True)
class MailboxStatus:
    messages: int
    uidnext: int
    uidvalidity: int
    unseen: int
    highestmodseq: int
    size: int
    deleted: int
    recent: int = 0  # messages no session has taken as \\Recent yet


@dataclass
class SelectState:
    """A selected mailbox as the store sees it at SELECT time."""

    mailbox_id: int
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    uids: Sequence[int]  # ascending; the store hands over a compact array("I")
    first_unseen_uid: int | None
    keywords: list[str] = field(default_factory=list)
    # the UIDs of ``uids`` from here up are \\Recent in this session (RFC 3501 2.3.2)
    recent_from: int | None = None


@dataclass(frozen=True)
class FlagUpdate:
    uid: int
    flags: tuple[str, ...]
    modseq: int


@dataclass(frozen=True)
class Changes:
    """What changed in a mailbox since a session's last look."""

    highestmodseq: int
    uidnext: int
    new_uids: list[int]
    # every UID <= the session's largest still present, sent only when some known one is gone
    present: list[int] | None
    flags: list[FlagUpdate]
    recent: list[int] = field(default_factory=list)  # of new_uids, those recent for the session
    keywords: tuple[str, ...] = ()  # the mailbox's keyword list (announced when it grew)


@dataclass(frozen=True)
class FetchRow:
    """One message as FETCH needs it; ``meta`` is MessageMeta.to_dict(), ``blob`` when asked.

    A fetch asked for no ``tree`` gets in ``meta`` only ``size`` and the top
    part's offsets (``body``: header_start, body_start, end): what the
    message's own header and text sections need.
    """

    uid: int
    flags: tuple[str, ...]
    modseq: int
    internaldate: datetime
    size: int
    meta: dict[str, Any] | None
    blob: bytes | None
    seen_set: bool = False  # \Seen was just set by this fetch


@dataclass(frozen=True)
class StoreResult:
    rows: list[FlagUpdate]  # current flags of every requested, existing message
    changed: list[int]  # uids this command modified
    modified: list[int]  # uids refused by UNCHANGEDSINCE
    # the mailbox's HIGHESTMODSEQ just before and after this command, when the store knows
    modseq_before: int | None = None
    modseq_after: int | None = None
    keywords: tuple[str, ...] | None = None  # the mailbox's keyword list, when this STORE grew it


@dataclass(frozen=True)
class CopyResult:
    uidvalidity: int
    source: list[int]
    dest: list[int]
    # for spam learning (a move into or out of Junk): what was copied, from where
    message_ids: list[int] = field(default_factory=list)
    source_name: str = ""
    dest_name: str = ""
    # spam or ham when this copy recorded learning requests (copy(learn=True)), else None
    learn_class: str | None = None


@dataclass(frozen=True)
class Quota:
    used_bytes: int
    limit_bytes: int | None
    used_messages: int
    limit_messages: int | None


SYSTEM = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
MAX_KEYWORDS = mailboxes.MAX_KEYWORDS


def _norm(name: str) -> str:
    return "INBOX" if name.upper() == "INBOX" else name


def _mailbox(s: Session, user_id: int, name: str, lock: bool = False) -> Any:
    sql = ("SELECT id, uidvalidity, uidnext, highestmodseq FROM mailboxes "  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
           "WHERE user_id = :u AND name = :n" + (" FOR UPDATE" if lock else ""))
    row = s.execute(text(sql), {"u": user_id, "n": _norm(name)}).first()
    if row is None:
        raise NotFound("no such mailbox")
    return row


def mailbox_identity(s: Session, user_id: int, name: str) -> tuple[int, int]:
    """(id, uidvalidity) of a user's mailbox by name; NotFound when there is none."""
    box = _mailbox(s, user_id, name)
    return int(box.id), int(box.uidvalidity)


def _lock_id(s: Session, mailbox_id: int) -> Any:
    row = s.execute(text("SELECT id, uidvalidity, uidnext, highestmodseq FROM mailboxes "
                         "WHERE id = :m FOR UPDATE"), {"m": mailbox_id}).first()
    if row is None:
        raise NotFound("no such mailbox")
    return row


def _lock_bump(s: Session, mailbox_id: int) -> tuple[int, int]:
    """Lock the mailbox row and advance its HIGHESTMODSEQ in one round trip; (before, after).

    The bump happens even when the command then changes nothing: RFC 7162
    allows gaps, and one statement instead of a locking SELECT plus a
    conditional UPDATE saves a round trip on every STORE and EXPUNGE. The
    row lock is taken before the statement that changes entries runs, so that
    statement's snapshot (READ COMMITTED: a new one per statement) sees every
    change committed by whoever held the lock before.
    """
    row = _LOCK_BUMP.execute(s.connection(), {"m": mailbox_id}).first()
    if row is None:
        raise NotFound("no such mailbox")
    return int(row[0]) - 1, int(row[0])


_LOCK_BUMP = Prepared("imap_lock_bump", "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 "
                      "WHERE id = %(m)s RETURNING highestmodseq")


def _bump(s: Session, mailbox_id: int, modseq: int) -> None:
    s.execute(text("UPDATE mailboxes SET highestmodseq = :ms WHERE id = :m"),
              {"ms": modseq, "m": mailbox_id})


# --- mailboxes


def list_rows(s: Session, user_id: int) -> list[MailboxRow]:
    rows = s.execute(text("SELECT name, special_use, subscribed FROM mailboxes "
                          "WHERE user_id = :u ORDER BY name"), {"u": user_id}).all()
    return [MailboxRow(r[0], r[1], bool(r[2])) for r in rows]


def create(s: Session, user_id: int, name: str, special_use: str | None) -> None:
    """Create ``name`` and any missing parents (RFC 3501 6.3.3)."""
    parts = name.split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        exists = s.execute(text("SELECT 1 FROM mailboxes WHERE user_id = :u AND name = :n"),
                           {"u": user_id, "n": _norm(parent)}).first()
        if exists is None:
            mailboxes.create_mailbox(s, user_id, parent)
    try:
        mailboxes.create_mailbox(s, user_id, name, special_use=special_use)
    except AlreadyExists:
        raise AlreadyExists("mailbox already exists") from None


def delete(s: Session, user_id: int, name: str) -> None:
    box = _mailbox(s, user_id, name, lock=True)
    ids = [int(r[0]) for r in s.execute(text(
        "DELETE FROM mailbox_entries WHERE mailbox_id = :m RETURNING message_id"),
        {"m": box.id}).all()]
    s.execute(text("DELETE FROM mailboxes WHERE id = :m"), {"m": box.id})
    messages.delete_orphans(s, sorted(set(ids)))


def rename(s: Session, user_id: int, old: str, new: str) -> None:
    """Rename a mailbox and its children; renaming INBOX moves its messages (RFC 3501 6.3.5)."""
    old, new = _norm(old), _norm(new)
    box = _mailbox(s, user_id, old, lock=True)
    taken = s.execute(text("SELECT 1 FROM mailboxes WHERE user_id = :u AND "
                           "(name = :n OR name LIKE :p ESCAPE '\\')"),
                      {"u": user_id, "n": new, "p": _like_prefix(new)}).first()
    if taken is not None:
        raise AlreadyExists("mailbox already exists")
    if old == "INBOX":
        create(s, user_id, new, None)
        uids = [int(r[0]) for r in s.execute(text(
            "SELECT uid FROM mailbox_entries WHERE mailbox_id = :m ORDER BY uid"),
            {"m": box.id}).all()]
        if uids:
            copy(s, user_id, box.id, uids, new, move=True)
        return
    s.execute(text("UPDATE mailboxes SET name = :new || substr(name, :cut) WHERE user_id = :u "
                   "AND (name = :old OR name LIKE :p ESCAPE '\\')"),
              {"new": new, "cut": len(old) + 1, "u": user_id, "old": old,
               "p": _like_prefix(old)})


def _like_prefix(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%"


def subscribe(s: Session, user_id: int, name: str, subscribed: bool) -> None:
    done = s.execute(text("UPDATE mailboxes SET subscribed = :f WHERE user_id = :u AND name = :n"),
                     {"f": subscribed, "u": user_id, "n": _norm(name)})
    if not getattr(done, "rowcount", 0):
        raise NotFound("no such mailbox")


def status(s: Session, user_id: int, name: str) -> MailboxStatus:
    box = _mailbox(s, user_id, name)
    row = s.execute(text(
        "SELECT count(*), count(*) FILTER (WHERE NOT ('\\Seen' = ANY(e.flags))), "
        "count(*) FILTER (WHERE '\\Deleted' = ANY(e.flags)), coalesce(sum(m.size), 0), "
        "count(*) FILTER (WHERE e.uid >= b.recent_uid) "
        "FROM mailboxes b JOIN mailbox_entries e ON e.mailbox_id = b.id "
        "JOIN messages m ON m.id = e.message_id "
        "WHERE b.id = :m"), {"m": box.id}).one()
    return MailboxStatus(messages=int(row[0]), uidnext=int(box.uidnext),
                         uidvalidity=int(box.uidvalidity), unseen=int(row[1]),
                         highestmodseq=int(box.highestmodseq), size=int(row[3]),
                         deleted=int(row[2]), recent=int(row[4]))


def quota(s: Session, user_id: int) -> Quota:
    limits = s.execute(text("SELECT quota_bytes, quota_messages FROM users WHERE id = :u"),
                       {"u": user_id}).one()
    used_bytes, used_messages = mailboxes.usage(s, user_id)
    return Quota(used_bytes, limits[0], used_messages, limits[1])


def _check_quota(s: Session, user_id: int, add_bytes: int, add_messages: int,
                 limits: tuple[int | None, int | None] | None = None) -> None:
    """OverQuota when adding this much passes a limit; ``limits`` when already read."""
    if limits is None:
        row = s.execute(text("SELECT quota_bytes, quota_messages FROM users WHERE id = :u"),
                        {"u": user_id}).one()
        limits = (row[0], row[1])
    if limits[0] is None and limits[1] is None:
        return  # no limits: skip summing every message the user has (a scan of all entries)
    used_bytes, used_messages = mailboxes.usage(s, user_id)
    if limits[0] is not None and used_bytes + add_bytes > limits[0]:
        raise OverQuota()
    if limits[1] is not None and used_messages + add_messages > limits[1]:
        raise OverQuota()


def _store_blob(s: Session, user_id: int, data: bytes, metadata: str,
                doc: MessageText | None = None) -> tuple[int, tuple[int | None, int | None]]:
    """``messages.store_message`` in plain SQL, plus the user's quota limits in the same trip.

    (message id, (quota bytes, quota messages)). The same content addressing
    (SHA-256, ON CONFLICT DO NOTHING, then a look-up for bytes that were
    already there) without the ORM's per-statement cost. The look-up is its
    own statement so that it sees a row a concurrent writer committed while
    this insert waited on it. ``doc``, the blob's searchable text
    (:mod:`postroom.store.fts`), is stored by the same statement when the
    blob is new, and by one more when it was there already (it may predate
    full-text search).
    """
    digest = hashlib.sha256(data).hexdigest()
    params = {"h": digest, "n": len(data), "b": data, "meta": metadata, "u": user_id}
    if doc is None:
        row = _STORE_BLOB.execute(s.connection(), params).one()
    else:
        params.update({f"fts_{k}": v for k, v in fts.text_params(doc).items()})
        row = _STORE_BLOB_TEXT.execute(s.connection(), params).one()
    limits = (row[1], row[2])
    if row[0] is not None:
        return int(row[0]), limits
    message_id = int(s.execute(text("SELECT id FROM messages WHERE sha256 = :h"),
                               {"h": digest}).scalar_one())
    if doc is not None:
        fts.store_text(s, message_id, doc)
    return message_id, limits


_STORED = ("stored AS (INSERT INTO messages (sha256, size, blob, metadata) "
           "VALUES (%(h)s, %(n)s, %(b)s, CAST(%(meta)s AS jsonb)) "
           "ON CONFLICT (sha256) DO NOTHING RETURNING id)")
_STORE_BLOB_RESULT = ("SELECT (SELECT id FROM stored), quota_bytes, quota_messages FROM users "
                      "WHERE id = %(u)s")
_STORE_BLOB = Prepared("imap_store_blob", "WITH " + _STORED + " " + _STORE_BLOB_RESULT)
_STORE_BLOB_TEXT = Prepared("imap_store_blob_text", (
    "WITH " + _STORED + ", ftext AS (" + fts.INSERT_SQL.format(
        id="stored.id", h="%(fts_h)s", b="%(fts_b)s", hw="%(fts_hw)s", bw="%(fts_bw)s",
        t="%(fts_t)s", where="FROM stored") + ") " + _STORE_BLOB_RESULT))


def append(s: Session, user_id: int, name: str, data: bytes, metadata: str,
           flags: Sequence[str], when: datetime | None,
           doc: MessageText | None = None) -> tuple[int, int, int, int]:
    """Store a message into a mailbox; (uidvalidity, uid, mailbox id, modseq).

    ``metadata`` is the message's analysis as the store keeps it (``postroom.mime.metadata_json``).
    Two statements in the usual case, rather than ``mailboxes.deliver_to_mailbox``
    and its ORM flushes: IMAP has no spool recipient to deduplicate on, so
    there is no savepoint to take. The first stores the blob and reads the
    quota limits; the second adds the entry (``mailboxes.add_entry_sql``) in one
    data-modifying statement, as MDA deliveries do. Over quota, or no such
    mailbox, rolls all of it back.
    """
    # ``doc``: its searchable text (postroom.store.fts), stored with the blob
    message_id, limits = _store_blob(s, user_id, data, metadata, doc)
    _check_quota(s, user_id, len(data), 1, limits)
    row = _APPEND.execute(s.connection(), {
        "u": user_id, "n": _norm(name), "msg": message_id, "f": list(dict.fromkeys(flags)),
        "d": when}).first()
    if row is None:
        raise NotFound("no such mailbox")
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


_APPEND = Prepared("imap_append", "WITH " + mailboxes.add_entry_sql(  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
    "user_id = %(u)s AND name = %(n)s", message="%(msg)s", flags="%(f)s",
    internaldate="coalesce(CAST(%(d)s AS timestamptz), now())")
    + " SELECT box.uidvalidity, entry.uid, entry.mailbox_id, entry.modseq FROM box, entry")


# --- the selected mailbox


def _uid_array(packed: bytes | memoryview | None) -> array[int]:
    """A bigint[] in PostgreSQL's binary form (``array_send``) as a compact array of UIDs.

    Binary, because parsing 100,000 integers from the text form costs more
    than the query. Layout: a 20-byte header for one dimension, then per
    element a 4-byte length and the 8-byte big-endian value, i.e. three
    32-bit words (length, high, low); IMAP UIDs fit in 32 bits, so high is 0.
    """
    words = array("I")
    if packed is not None and len(packed) > 20:
        words.frombytes(bytes(packed)[20:])
        if sys.byteorder == "little":
            words.byteswap()
    high = words[1::3]
    if high.count(0) != len(high):
        raise ValueError("a UID does not fit in 32 bits")
    return words[2::3]


@dataclass(frozen=True)
class _Loaded:
    """A mailbox's SELECT data as of one snapshot, and the mailbox row values it was read with."""

    key: tuple[int, int, int, int]  # id, uidvalidity, uidnext, highestmodseq
    uids: array[int]
    first_unseen_uid: int | None
    keywords: tuple[str, ...]


class SelectCache:
    """Per-process SELECT data of mailboxes, valid while the mailbox row is unchanged.

    Every writer of a mailbox's entries or flags (IMAP, the MDA, POP3, the
    importer) advances the row's HIGHESTMODSEQ in the same transaction, so
    (id, uidvalidity, uidnext, highestmodseq) equal to what was cached means
    the entries are exactly those cached, whichever process changed them.
    Mailboxes of every size are kept (decision 0038): the check and the load
    are one statement (:data:`_SELECT`), so a cached entry never costs a round
    trip, and an unchanged mailbox of 50 messages skips the aggregate as one of
    100,000 does. Bounded by the UIDs held (4 bytes each) plus ``ENTRY_COST``
    for each entry's own objects, least recently used first out.
    """

    # an entry's key, _Loaded, tuples and array header: about 500 bytes, counted as UIDs
    ENTRY_COST = 128

    def __init__(self, max_uids: int = 4_000_000, min_messages: int = 0) -> None:
        self.max_uids = max_uids
        self.min_messages = min_messages
        self._entries: OrderedDict[tuple[int, str], _Loaded] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def get(self, user_id: int, name: str) -> _Loaded | None:
        with self._lock:
            found = self._entries.get((user_id, name))
            if found is not None:
                self._entries.move_to_end((user_id, name))
            return found

    def put(self, user_id: int, name: str, loaded: _Loaded) -> None:
        with self._lock:
            old = self._entries.pop((user_id, name), None)
            if old is not None:
                self._held -= len(old.uids) + self.ENTRY_COST
            cost = len(loaded.uids) + self.ENTRY_COST
            if len(loaded.uids) < self.min_messages or cost > self.max_uids:
                return
            self._entries[(user_id, name)] = loaded
            self._held += cost
            while self._held > self.max_uids:
                _, dropped = self._entries.popitem(last=False)
                self._held -= len(dropped.uids) + self.ENTRY_COST


SELECT_CACHE = SelectCache()

# One statement whether or not the process has the mailbox cached: the mailbox row, and the
# aggregate over its entries only when the row differs from the cached key (%(cm)s ...; 0 when
# nothing is cached, as no mailbox has id 0). The condition refers to the outer row only, so
# PostgreSQL makes it a One-Time Filter above the entries' scan: an unchanged mailbox reads
# its row and no entry, whatever its size. Unchanged, the aggregate's columns come back NULL
# (as for an empty mailbox): the caller tells the two apart by the key it gets.
_SELECT = Prepared("imap_select", (
    "SELECT b.id, b.uidvalidity, b.uidnext, b.highestmodseq, a.packed, a.unseen, "
    "a.has_keywords, b.keywords, b.recent_uid "
    "FROM mailboxes b CROSS JOIN LATERAL ("
    "SELECT array_send(array_agg(uid ORDER BY uid)) AS packed, "
    "min(uid) FILTER (WHERE NOT ('\\Seen' = ANY(flags))) AS unseen, "
    "coalesce(bool_or(NOT (flags <@ CAST(%(sys)s AS text[]))), false) AS has_keywords "
    "FROM mailbox_entries WHERE mailbox_id = b.id AND NOT (b.id = %(cm)s AND "
    "b.uidvalidity = %(cv)s AND b.uidnext = %(cn)s AND b.highestmodseq = %(ch)s)) a "
    "WHERE b.user_id = %(u)s AND b.name = %(n)s"))
_KEYWORDS = Prepared("imap_keywords", (
    "SELECT DISTINCT f FROM (SELECT unnest(flags) AS f FROM mailbox_entries "
    "WHERE mailbox_id = %(m)s AND NOT (flags <@ CAST(%(sys)s AS text[]))) k "
    "WHERE left(f, 1) <> '\\' ORDER BY f LIMIT 100"))


# the system flags as the statements' text[] parameter (a list for psycopg2's ARRAY)
_SYSTEM_LIST = list(SYSTEM)


_NOT_CACHED = (0, 0, 0, 0)


def select(s: Session, user_id: int, name: str, cache: SelectCache | None = None,
           take_recent: bool = False) -> SelectState:
    """The mailbox's UIDs, first unseen and keywords: from ``cache`` when still valid.

    ``take_recent`` (a read-write SELECT) takes the messages of this view that
    no session took before as this session's \\Recent ones, in this
    transaction (:func:`take_recent`); without it (EXAMINE) they are only
    reported. ``recent_from`` says where they start.

    One statement (:data:`_SELECT`) reads the mailbox row and, only when the
    row is not the cached entry's, its UIDs, first unseen and keywords, all of
    one snapshot: an unchanged mailbox costs a read of its row. Each session
    gets its own copy of the UID array (sessions change theirs as they
    announce EXISTS and EXPUNGE). The recent mark is taken
    (:func:`take_recent_uids`, one more statement) only when the row shows
    UIDs below UIDNEXT that no session took: the mark only moves forward, so
    a mark at or past UIDNEXT in any snapshot is past every UID of this view,
    and SELECT stays one statement. No lock is held across statements, so
    SELECT may run without a transaction (``Database.run_read``).
    """
    name = _norm(name)
    cache = SELECT_CACHE if cache is None else cache
    cached = cache.get(user_id, name)
    cm, cv, cn, ch = cached.key if cached is not None else _NOT_CACHED
    connection = s.connection()
    found = _SELECT.read_rows(connection, {"u": user_id, "n": name, "sys": _SYSTEM_LIST,
                                           "cm": cm, "cv": cv, "cn": cn, "ch": ch})
    if not found:
        raise NotFound("no such mailbox")
    row = found[0]
    key = (int(row[0]), int(row[1]), int(row[2]), int(row[3]))
    mark = int(row[8])
    if cached is not None and key == cached.key:
        loaded = cached
    else:
        # the mailbox's keyword list, and any keyword a writer that does not keep it (the
        # MDA's sieve flags, an older release) left on a message: a second pass only when
        # some message has one
        keywords: set[str] = {str(k) for k in row[7] or ()}
        if row[6]:
            keywords.update(str(r[0]) for r in _KEYWORDS.read_rows(
                connection, {"m": key[0], "sys": _SYSTEM_LIST}))
        loaded = _Loaded(key, _uid_array(row[4]), int(row[5]) if row[5] is not None else None,
                         tuple(sorted(keywords)))
        cache.put(user_id, name, loaded)
    mailbox_id, uidvalidity, uidnext, highestmodseq = key
    recent_from = mark
    if take_recent and mark < uidnext:
        recent_from = take_recent_uids(s, mailbox_id, uidnext, seen=mark)
    return SelectState(mailbox_id=mailbox_id, name=name, uidvalidity=uidvalidity,
                       uidnext=uidnext, highestmodseq=highestmodseq, uids=loaded.uids[:],
                       first_unseen_uid=loaded.first_unseen_uid,
                       keywords=list(loaded.keywords), recent_from=recent_from)


def take_recent_uids(s: Session, mailbox_id: int, upto: int, seen: int | None = None) -> int:
    """Take the UIDs below ``upto`` that no session took yet; where they start (RFC 3501 2.3.2).

    The recent mark only moves forward, and only here (or in
    :func:`take_recent_uids_locked`): by compare-and-set, one UPDATE that
    moves it from the value read to ``upto`` only if it still has that
    value (READ COMMITTED re-checks the condition on the row's latest
    version after waiting for its lock). So each UID is taken by exactly one
    session, whichever process or replica runs it, and this holds with or
    without a surrounding transaction (a read that runs in autocommit, such
    as SELECT, may take the mark too): the caller's recent messages are those
    of its view from the returned UID up (none when the mark was already past
    ``upto``). ``seen`` is the mark as the caller just read it, which saves
    reading it again.
    """
    connection = s.connection()
    mark = seen if seen is not None else int(
        _READ_RECENT.execute(connection, {"m": mailbox_id}).scalar_one())
    while mark < upto:
        if _TAKE_RECENT.execute(connection, {"m": mailbox_id, "n": upto,
                                             "old": mark}).first() is not None:
            return mark
        mark = int(_READ_RECENT.execute(connection, {"m": mailbox_id}).scalar_one())
    return mark


_READ_RECENT = Prepared("imap_read_recent", "SELECT recent_uid FROM mailboxes WHERE id = %(m)s")
_TAKE_RECENT = Prepared("imap_take_recent", (
    "UPDATE mailboxes SET recent_uid = %(n)s WHERE id = %(m)s AND recent_uid = %(old)s "
    "RETURNING 1"))


def take_recent_uids_locked(s: Session, mailbox_id: int, upto: int) -> int:
    """:func:`take_recent_uids` in one statement, for a caller that holds the row's lock.

    APPEND has locked the mailbox row already (adding the entry took UIDNEXT),
    so no other transaction can move the mark between reading and writing it:
    one UPDATE reads the mark as it was (``o``, this statement's snapshot,
    which has this transaction's own writes) and moves it forward.
    """
    return int(_TAKE_RECENT_LOCKED.execute(s.connection(),
                                           {"m": mailbox_id, "n": upto}).scalar_one())


_TAKE_RECENT_LOCKED = Prepared("imap_take_recent_locked", (
    "UPDATE mailboxes x SET recent_uid = greatest(x.recent_uid, %(n)s) FROM mailboxes o "
    "WHERE x.id = %(m)s AND o.id = x.id RETURNING o.recent_uid"))


def changes(s: Session, mailbox_id: int, modseq: int, max_uid: int, count: int,
            take_recent: bool = False) -> Changes:
    """New messages, flag changes since ``modseq`` and, when needed, the UIDs still present.

    Of the new messages, ``recent`` are those \\Recent for the caller: taken
    by it (``take_recent``, a read-write session) or, read-only, those no
    session took yet. ``keywords`` is the mailbox's keyword list.
    """
    box = s.execute(text("SELECT highestmodseq, uidnext, recent_uid, keywords FROM mailboxes "
                         "WHERE id = :m"), {"m": mailbox_id}).first()
    if box is None:
        return Changes(modseq, 0, [], [], [])
    highest, uidnext = int(box[0]), int(box[1])
    keywords = tuple(box[3] or ())
    if highest == modseq:
        return Changes(highest, uidnext, [], None, [], keywords=keywords)
    rows = s.execute(text("SELECT uid, flags, modseq FROM mailbox_entries "
                          "WHERE mailbox_id = :m AND modseq > :ms ORDER BY uid"),
                     {"m": mailbox_id, "ms": modseq}).all()
    new = [int(r[0]) for r in rows if r[0] > max_uid]
    flags = [FlagUpdate(int(r[0]), tuple(r[1]), int(r[2])) for r in rows if r[0] <= max_uid]
    still = s.execute(text("SELECT count(*) FROM mailbox_entries WHERE mailbox_id = :m "
                           "AND uid <= :max"), {"m": mailbox_id, "max": max_uid}).scalar_one()
    present = None
    if int(still) < count:
        present = [int(u) for u in s.execute(text(
            "SELECT uid FROM mailbox_entries WHERE mailbox_id = :m AND uid <= :max"),
            {"m": mailbox_id, "max": max_uid}).scalars()]
    recent: list[int] = []
    if new:
        start = (take_recent_uids(s, mailbox_id, max(new) + 1, seen=int(box[2])) if take_recent
                 else int(box[2]))
        recent = [u for u in new if u >= start]
    return Changes(highest, uidnext, new, present, flags, recent=recent, keywords=keywords)


# the UID limits of a FETCH: a range, and within it a sparse set
_UID_RANGE = "e.uid BETWEEN %(lo)s AND %(hi)s"
_UID_SPARSE = " AND e.uid = ANY(CAST(%(uids)s AS bigint[]))"


def _uid_condition(uids: Sequence[int], params: dict[str, Any]) -> tuple[str, set[int] | None]:
    """SQL limiting ``e.uid`` to ``uids`` and, when needed, the set to filter rows by.

    A range is an index range scan on (mailbox_id, uid) whose cost is the
    range, not the mailbox; a dense set is fetched as its range and the few
    extra rows dropped in Python, a sparse one adds an array test within it.
    The SQL has psycopg2's ``%(name)s`` placeholders (a DB-API cursor, or a
    Prepared statement).
    """
    params["lo"], params["hi"] = min(uids), max(uids)
    condition = _UID_RANGE
    span = params["hi"] - params["lo"] + 1
    if span == len(uids):
        return condition, None
    if span <= 4 * len(uids):
        return condition, set(uids)
    params["uids"] = list(uids)
    return condition + _UID_SPARSE, None


def fetch_flags(s: Session, mailbox_id: int, uids: Sequence[int],
                changedsince: int | None) -> list[tuple[int, str, int]]:
    """(uid, flags joined by spaces, modseq) for ``FETCH 1:* (UID FLAGS)``: no join, no blobs.

    Flags come as one string: parsing 100,000 text[] values and building a
    tuple each costs more than the query, and the caller renders per distinct string.
    """
    if not uids:
        return []
    params: dict[str, Any] = {"m": mailbox_id}
    condition, keep = _uid_condition(uids, params)
    sql = ("SELECT e.uid, array_to_string(e.flags, ' '), e.modseq FROM mailbox_entries e "  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
           f"WHERE e.mailbox_id = %(m)s AND {condition}")
    if changedsince is not None:
        sql += " AND e.modseq > %(cs)s"
        params["cs"] = changedsince
    # the DB-API cursor of the session's own connection (same transaction): plain tuples
    # cost far less than SQLAlchemy Row objects at 10,000 rows a batch
    cursor = s.connection().connection.cursor()
    try:
        cursor.execute(sql + " ORDER BY e.uid", params)
        rows = cast("list[tuple[int, str, int]]", cursor.fetchall())
    finally:
        cursor.close()
    if keep is None:
        return rows
    return [r for r in rows if r[0] in keep]


def fetch(s: Session, mailbox_id: int, uids: Sequence[int], blob: bool, meta: bool,
          mark_seen: bool, changedsince: int | None, tree: bool = True,
          head: bool = False) -> list[FetchRow]:
    """Rows for FETCH; ``meta`` without ``tree``: only the size and top part offsets of it.

    ``head`` (with ``blob`` and ``meta``, without ``tree``): the blob only up to
    the end of the message's header when the cached analysis knows where that
    is (PostgreSQL then decompresses and sends only that prefix), else whole.
    """
    if not uids:
        return []
    seen: dict[int, tuple[tuple[str, ...], int]] = {}
    if mark_seen:
        box = _lock_id(s, mailbox_id)
        modseq = int(box.highestmodseq) + 1
        updated = s.execute(text(
            "UPDATE mailbox_entries SET flags = array_append(flags, '\\Seen'), modseq = :ms "
            "WHERE mailbox_id = :m AND uid BETWEEN :lo AND :hi "
            "AND uid = ANY(CAST(:uids AS bigint[])) AND NOT ('\\Seen' = ANY(flags)) "
            "RETURNING uid, flags, modseq"),
            {"m": mailbox_id, "uids": list(uids), "ms": modseq, "lo": min(uids),
             "hi": max(uids)}
        ).all()
        if updated:
            _bump(s, mailbox_id, modseq)
        seen = {int(r[0]): (tuple(r[1]), int(r[2])) for r in updated}
    params: dict[str, Any] = {"m": mailbox_id}
    _, keep = _uid_condition(uids, params)
    if changedsince is not None:
        params["cs"] = changedsince
    analysis = ("tree" if tree else "top") if meta else ""
    if head and blob and analysis == "top":
        statement = _FETCH_HEAD["uids" in params, changedsince is not None]
    else:
        statement = _FETCH[analysis, blob, "uids" in params, changedsince is not None]
    top = analysis == "top"
    out = []
    for r in statement.read_rows(s.connection(), params):
        uid = int(r[0])
        if keep is not None and uid not in keep:
            continue
        flags, modseq = seen.get(uid, (tuple(r[1]), int(r[2])))
        out.append(FetchRow(uid=uid, flags=flags, modseq=modseq, internaldate=r[3],
                            size=int(r[4]), meta=_top_meta(r[5]) if top else r[5],
                            blob=bytes(r[6]) if r[6] is not None else None,
                            seen_set=uid in seen))
    return out


def _top_meta(top: list[int | None] | None) -> dict[str, Any] | None:
    """The cached analysis's size and top part offsets, as the "top" column's JSON was."""
    if top is None:
        return None
    size, header_start, body_start, end = top
    return {"size": size, "body": {"header_start": header_start, "body_start": body_start,
                                   "end": end}}


# what of the cached analysis a FETCH reads: nothing, the top part's offsets, or all of it
_ANALYSIS = {
    "": "NULL",
    # for the message's own header and text sections (a header FETCH of a message list)
    # as four integers (size, header_start, body_start, end; _top_meta): an int[] is
    # parsed by the driver in C, where a JSON object went through json.loads a row
    "top": ("CASE WHEN m.metadata ? 'body' THEN ARRAY["
            "(m.metadata ->> 'size')::bigint, "
            "(m.metadata #>> '{body,header_start}')::bigint, "
            "(m.metadata #>> '{body,body_start}')::bigint, "
            "(m.metadata #>> '{body,end}')::bigint] END"),
    # without its decoded header list, which FETCH never renders and which is most
    # of its size (decoding JSON is the main cost of a header FETCH)
    "tree": "m.metadata - 'headers'",
}


# the blob up to the end of the message's header (where its body starts), when known
_HEAD = ("CASE WHEN m.metadata ? 'body' THEN substring(m.blob FROM 1 FOR "
         "(m.metadata #>> '{body,body_start}')::int) ELSE m.blob END")


def _fetch_sql(analysis: str, blob: bool, sparse: bool, since: bool, head: bool = False) -> str:
    columns = "e.uid, e.flags, e.modseq, e.internaldate, m.size, " + _ANALYSIS[analysis]
    columns += (", " + _HEAD) if head else ", m.blob" if blob else ", NULL"
    # what _uid_condition writes for a range, and for a sparse set
    condition = _UID_RANGE + (_UID_SPARSE if sparse else "")
    if since:
        condition += " AND e.modseq > %(cs)s"
    return (f"SELECT {columns} FROM mailbox_entries e JOIN messages m ON m.id = e.message_id "  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
            f"WHERE e.mailbox_id = %(m)s AND {condition} ORDER BY e.uid")


# one prepared statement per shape: (analysis, blob, sparse UID set, CHANGEDSINCE)
_FETCH = {
    (analysis, blob, sparse, since): Prepared(
        f"imap_fetch_{analysis or 'no'}_{blob:d}{sparse:d}{since:d}",
        _fetch_sql(analysis, blob, sparse, since))
    for analysis in _ANALYSIS for blob in (False, True)
    for sparse in (False, True) for since in (False, True)
}

# header sections only: (sparse UID set, CHANGEDSINCE)
_FETCH_HEAD = {
    (sparse, since): Prepared(f"imap_fetch_head_{sparse:d}{since:d}",
                              _fetch_sql("top", True, sparse, since, head=True))
    for sparse in (False, True) for since in (False, True)
}

_NEW_FLAGS = {
    "+": "ARRAY(SELECT DISTINCT x FROM unnest(flags || CAST(%(f)s AS text[])) x ORDER BY x)",
    "-": "ARRAY(SELECT x FROM unnest(flags) x WHERE x <> ALL(CAST(%(f)s AS text[])))",
    "": "CAST(%(f)s AS text[])",
}
_CHANGES = {
    "+": "NOT (flags @> CAST(%(f)s AS text[]))",
    "-": "flags && CAST(%(f)s AS text[])",
    "": "NOT (flags @> CAST(%(f)s AS text[]) AND flags <@ CAST(%(f)s AS text[]))",
}
# the BETWEEN keeps every statement an index range scan on (mailbox_id, uid)
_WITHIN = ("mailbox_id = %(m)s AND uid BETWEEN %(lo)s AND %(hi)s "
           "AND uid = ANY(CAST(%(uids)s AS bigint[]))")


def _store_sql(mode: str, guarded: bool) -> str:
    guard = " AND modseq <= %(us)s" if guarded else ""
    return (
        f"WITH changed AS (UPDATE mailbox_entries SET flags = {_NEW_FLAGS[mode]}, "  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
        f"modseq = %(ms)s WHERE {_WITHIN} AND {_CHANGES[mode]}{guard} "
        "RETURNING uid, flags, modseq) "
        "SELECT uid, flags, modseq, true FROM changed UNION ALL "
        f"SELECT uid, flags, modseq, false FROM mailbox_entries WHERE {_WITHIN} "
        "AND uid NOT IN (SELECT uid FROM changed) ORDER BY 1")


# one prepared statement per mode ("+", "-", "") and with or without UNCHANGEDSINCE
_STORE = {
    (mode, guarded): Prepared(f"imap_store_{name}{guarded:d}", _store_sql(mode, guarded))
    for mode, name in (("+", "add"), ("-", "remove"), ("", "replace"))
    for guarded in (False, True)
}


def store(s: Session, mailbox_id: int, uids: Sequence[int], mode: str, flags: Sequence[str],
          unchangedsince: int | None) -> StoreResult:
    """Change flags; two statements: lock-and-bump, then the update and the rows' flags at once.

    The second is one statement (a data-modifying CTE): the changed rows come
    from its RETURNING, the unchanged ones from the same snapshot, which
    still holds their (unchanged) values.
    """
    if not uids:
        return StoreResult([], [], [])
    before, modseq = _lock_bump(s, mailbox_id)
    params: dict[str, Any] = {"m": mailbox_id, "uids": list(uids), "f": list(dict.fromkeys(flags)),
                              "ms": modseq, "lo": min(uids), "hi": max(uids)}
    if unchangedsince is not None:
        params["us"] = unchangedsince
    rows = _STORE[mode, unchangedsince is not None].execute(s.connection(), params).all()
    changed = [int(r[0]) for r in rows if r[3]]
    keywords = add_keywords(s, mailbox_id, flags) if changed and mode != "-" else None
    modified = [] if unchangedsince is None else [
        int(r[0]) for r in rows if not r[3] and int(r[2]) > unchangedsince]
    return StoreResult([FlagUpdate(int(r[0]), tuple(r[1]), int(r[2])) for r in rows],
                       changed, modified, modseq_before=before, modseq_after=modseq,
                       keywords=keywords)


def add_keywords(s: Session, mailbox_id: int, flags: Sequence[str]) -> tuple[str, ...] | None:
    """Add the keywords among ``flags`` to the mailbox's list; the new list when it grew.

    The caller holds the mailbox row's lock (it changed entries). Past
    MAX_KEYWORDS it raises TooManyKeywords, and the caller's transaction,
    flag changes included, rolls back.
    """
    keywords = sorted({f for f in flags if not f.startswith("\\")})
    if not keywords:
        return None
    row = _ADD_KEYWORDS.execute(s.connection(), {"m": mailbox_id, "k": keywords}).first()
    if row is None:
        return None
    if len(row[0]) > MAX_KEYWORDS:
        raise TooManyKeywords(f"more than {MAX_KEYWORDS} keywords in one mailbox")
    return tuple(row[0])


_ADD_KEYWORDS = Prepared("imap_add_keywords", (
    "UPDATE mailboxes SET keywords = ARRAY(SELECT DISTINCT x FROM "
    "unnest(keywords || CAST(%(k)s AS text[])) x ORDER BY x) "
    "WHERE id = %(m)s AND NOT keywords @> CAST(%(k)s AS text[]) RETURNING keywords"))


def search(s: Session, mailbox_id: int, key: SearchKey, max_uid: int) -> list[tuple[int, int]]:
    where, candidate, params = search_plan(key)
    params.update({"mbox": mailbox_id, "maxuid": max_uid})
    if candidate is None:
        sql = ("SELECT e.uid, e.modseq FROM mailbox_entries e JOIN messages m "  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
               "ON m.id = e.message_id "
               f"WHERE e.mailbox_id = :mbox AND e.uid <= :maxuid AND ({where}) ORDER BY e.uid")
    else:
        sql = _HEADER_SEARCH_SQL % (candidate, where)
    rows = s.execute(text(sql), params).all()
    return [(int(r[0]), int(r[1])) for r in rows]


# SEARCH with HEADER on an uncached field (docs/decisions/0025): the candidates' UIDs first,
# from the mailbox's entries left-joined to the narrow header rows (a blob without a row is a
# candidate), as one array; then only those entries and their messages, by index, under the
# full condition. The array keeps the planner from joining (and filtering) all of
# ``messages``, and its estimate small (a join estimated at half the mailbox cost a JIT
# compile of ~30 ms a statement).
_HEADER_SEARCH_SQL = """
SELECT e.uid, e.modseq FROM mailbox_entries e JOIN messages m ON m.id = e.message_id
WHERE e.mailbox_id = :mbox AND e.uid = ANY(ARRAY(
    SELECT c.uid FROM mailbox_entries c LEFT JOIN message_headers h ON h.message_id = c.message_id
    WHERE c.mailbox_id = :mbox AND c.uid <= :maxuid AND (%s)))
AND (%s) ORDER BY e.uid
"""


def copy(s: Session, user_id: int, mailbox_id: int, uids: Sequence[int], dest: str,
         move: bool, learn: bool = False) -> CopyResult:
    """Copy (or move) entries; the destination's UIDs come from its locked row.

    With ``learn``, a copy into or out of Junk records its spam/ham learning
    requests in this transaction (postroom.store.learning.record).
    """
    target = s.execute(text("SELECT id, name, (SELECT name FROM mailboxes WHERE id = :src) "
                            "FROM mailboxes WHERE user_id = :u AND name = :n"),
                       {"u": user_id, "n": _norm(dest), "src": mailbox_id}).first()
    if target is None:
        raise NotFound("no such mailbox")
    source_name, dest_name = str(target[2] or ""), str(target[1])
    # lock both rows in id order, so two opposite moves cannot deadlock
    locked = {}
    for mid in sorted({mailbox_id, int(target[0])}):
        locked[mid] = _lock_id(s, mid)
    dst = locked[int(target[0])]
    rows = s.execute(text(
        "SELECT e.uid, e.message_id, e.flags, e.internaldate, m.size FROM mailbox_entries e "
        "JOIN messages m ON m.id = e.message_id WHERE e.mailbox_id = :m "
        "AND e.uid = ANY(CAST(:uids AS bigint[])) ORDER BY e.uid"),
        {"m": mailbox_id, "uids": list(uids)}).all()
    if not rows:
        return CopyResult(int(dst.uidvalidity), [], [], source_name=source_name,
                          dest_name=dest_name)
    if not move:
        _check_quota(s, user_id, sum(int(r[4]) for r in rows), len(rows))
    uid = int(dst.uidnext)
    modseq = int(dst.highestmodseq) + 1
    source, new = [], []
    for r in rows:
        s.execute(text("INSERT INTO mailbox_entries (mailbox_id, uid, message_id, flags, modseq, "
                       "internaldate) VALUES (:m, :uid, :msg, :f, :ms, :d)"),
                  {"m": dst.id, "uid": uid, "msg": r[1], "f": list(r[2]), "ms": modseq,
                   "d": r[3]})
        source.append(int(r[0]))
        new.append(uid)
        uid += 1
    s.execute(text("UPDATE mailboxes SET uidnext = :n, highestmodseq = :ms WHERE id = :m"),
              {"n": uid, "ms": modseq, "m": dst.id})
    add_keywords(s, int(dst.id), [f for r in rows for f in r[2]])
    if move:
        src = locked[mailbox_id]
        src_modseq = max(int(src.highestmodseq), modseq if src.id == dst.id else 0) + 1
        s.execute(text("DELETE FROM mailbox_entries WHERE mailbox_id = :m "
                       "AND uid = ANY(CAST(:uids AS bigint[]))"),
                  {"m": mailbox_id, "uids": source})
        _bump(s, mailbox_id, src_modseq)
        vanished.remember(s, mailbox_id, source, src_modseq)
    message_ids = [int(r[1]) for r in rows]
    klass = learning.learn_class(source_name, dest_name) if learn else None
    if klass is not None:
        learning.record(s, user_id, message_ids, klass)
    return CopyResult(int(dst.uidvalidity), source, new, message_ids,
                      source_name=source_name, dest_name=dest_name, learn_class=klass)


def expunge(s: Session, mailbox_id: int,
            uids: Sequence[int] | None) -> tuple[list[int], int, int]:
    """Remove \\Deleted messages (only among ``uids`` when given).

    (UIDs removed, HIGHESTMODSEQ before, after): the caller may skip asking
    what changed when ``before`` is what it knew. Two statements: the row
    lock and bump (:func:`_lock_bump`; the removal must see every change
    committed before the lock was granted, so it cannot share its snapshot),
    then one data-modifying statement that removes the entries, remembers
    their UIDs for QRESYNC (:data:`vanished.REMEMBER_SQL`), deletes the blobs
    no entry or spool row uses any more and says whether old QRESYNC entries
    are due for pruning (rare: a third statement then).
    """
    before, after = _lock_bump(s, mailbox_id)
    params: dict[str, Any] = {"m": mailbox_id, "ms": after, "keep": vanished.KEEP}
    statement = _EXPUNGE_ALL
    if uids is not None:
        if not uids:
            return [], before, after
        params.update({"uids": list(uids), "lo": min(uids), "hi": max(uids)})
        statement = _EXPUNGE_UIDS
    removed = statement.execute(s.connection(), params).all()
    if removed and removed[0][1]:
        vanished.prune(s, mailbox_id)
    return sorted(int(r[0]) for r in removed), before, after


def _expunge_sql(within: str) -> str:
    # the statement's parts share one snapshot, in which the removed entries are still
    # present: the orphan test leaves them out by name
    return (
        "WITH gone AS (DELETE FROM mailbox_entries WHERE mailbox_id = %(m)s "  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
        f"AND '\\Deleted' = ANY(flags){within} RETURNING uid, message_id), "
        "kept AS (" + vanished.REMEMBER_SQL.format(m="%(m)s", ms="%(ms)s", uids="gone") + "), "
        "orphans AS (DELETE FROM messages m WHERE m.id IN (SELECT message_id FROM gone) "
        "AND NOT EXISTS (SELECT 1 FROM mailbox_entries e WHERE e.message_id = m.id "
        "AND NOT (e.mailbox_id = %(m)s AND e.uid IN (SELECT uid FROM gone))) "
        "AND NOT EXISTS (SELECT 1 FROM spool_messages p WHERE p.message_id = m.id)) "
        "SELECT uid, " + vanished.OLDEST_SQL.format(m="%(m)s", keep="%(keep)s") + " FROM gone")


_EXPUNGE_ALL = Prepared("imap_expunge_all", _expunge_sql(""))
_EXPUNGE_UIDS = Prepared("imap_expunge_some", _expunge_sql(
    " AND uid BETWEEN %(lo)s AND %(hi)s AND uid = ANY(CAST(%(uids)s AS bigint[]))"))


def user_mailbox_ids(s: Session, user_id: int, names: Sequence[str]) -> list[int]:
    rows = s.execute(text("SELECT id FROM mailboxes WHERE user_id = :u AND name = ANY(:n)"),
                     {"u": user_id, "n": [_norm(n) for n in names]}).scalars()
    return [int(r) for r in rows]


# one row per match for SORT and THREAD: only what the cached metadata holds, never the blob.
# ``metadata.sort`` is read out once per row (OFFSET 0 keeps the lateral from being inlined,
# which would decompress the whole metadata for each use); mail analysed before the sort
# object carried the thread and display keys gets them from the envelope instead
_ORDERING_SQL = """
SELECT e.uid, extract(epoch FROM e.internaldate)::float8, m.size,
       extract(epoch FROM (x.srt->>'date')::timestamptz)::float8,
       x.srt->>'from', x.srt->>'to', x.srt->>'cc', x.srt->>'display_from', x.srt->>'display_to',
       y.thr->>'subject', y.thr->>'message_id', y.thr->>'in_reply_to', y.thr->>'references',
       y.thr->'from', y.thr->'to'
FROM mailbox_entries e JOIN messages m ON m.id = e.message_id
CROSS JOIN LATERAL (SELECT coalesce(m.metadata->'sort', '{}'::jsonb) AS srt OFFSET 0) x
CROSS JOIN LATERAL (SELECT CASE WHEN x.srt ? 'thread' THEN x.srt->'thread' ELSE jsonb_build_object(
    'subject', m.metadata->'envelope'->'subject',
    'message_id', m.metadata->'envelope'->'message_id',
    'in_reply_to', m.metadata->'envelope'->'in_reply_to',
    'from', m.metadata->'envelope'->'from_'->0,
    'to', m.metadata->'envelope'->'to'->0,
    'references', (SELECT h->'raw' FROM jsonb_array_elements(
        coalesce(m.metadata->'headers', '[]'::jsonb)) h
        WHERE h->>'name' = 'references' LIMIT 1)) END AS thr OFFSET 0) y
WHERE e.mailbox_id = :mbox AND e.uid <= :maxuid AND (%s) ORDER BY e.uid
"""


def ordering_rows(s: Session, mailbox_id: int, key: SearchKey,
                  max_uid: int) -> list[tuple[Any, ...]]:
    """SORT/THREAD facts of the messages matching ``key``, plain columns (see ``_ORDERING_SQL``):
    uid, INTERNALDATE and Date: as epoch seconds, size, first from/to/cc mailbox, display
    from/to, subject, message-id, in-reply-to, references, and (old mail only) the first
    From and To envelope addresses."""
    where, params = search_where(key)
    params.update({"mbox": mailbox_id, "maxuid": max_uid})
    rows = s.execute(text(_ORDERING_SQL % where), params).all()
    return [tuple(r) for r in rows]
