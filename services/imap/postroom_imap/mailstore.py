"""IMAP's calls into the mailbox store, with the store's errors told as IMAP refusals.

The SQL lives in :mod:`postroom.store.entries` (rule 11); each function here
is the store function of the same name, run inside a Database.run
transaction, with a missing mailbox answered ``NO [NONEXISTENT]``, a taken
name ``NO [ALREADYEXISTS]`` and a passed quota ``NO [OVERQUOTA]``. APPEND
analyses the message here (the store keeps what it is given).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from postroom.mime import analyze, metadata_json
from postroom.mime.fulltext import DEFAULT_MAX_BYTES, text_or_unreadable
from postroom.mime.headers import decode_words
from postroom.store import entries, imap_metadata
from postroom.store import vanished as expunges
from postroom.store.errors import AlreadyExists, NotFound
from postroom.store.errors import OverQuota as QuotaPassed
from postroom.store.errors import TooManyKeywords as KeywordsPassed
from postroom_imap.ordering import SortItem
from postroom_imap.policy import (
    MailboxExists,
    MetadataMaxSize,
    MetadataTooMany,
    NoSuchMailbox,
    OverQuota,
    TooManyKeywords,
)

__all__ = ["append", "changes", "copy", "create",
           "delete", "expunge", "fetch", "fetch_flags", "get_metadata", "list_rows",
           "mailbox_identity", "ordering", "quota",
           "rename", "search", "select", "set_metadata", "status", "store", "subscribe",
           "user_mailbox_ids", "vanished"]

P = ParamSpec("P")
T = TypeVar("T")


def _refusing(fn: Callable[P, T]) -> Callable[P, T]:
    """``fn`` with the store's errors raised as the refusals IMAP answers with."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except NotFound:
            raise NoSuchMailbox() from None
        except AlreadyExists:
            raise MailboxExists() from None
        except QuotaPassed:
            raise OverQuota() from None
        except KeywordsPassed:
            raise TooManyKeywords() from None
        except imap_metadata.TooLarge as exc:
            raise MetadataMaxSize(exc.max_size) from None
        except imap_metadata.TooMany as exc:
            raise MetadataTooMany(str(exc)) from None

    return call


@_refusing
def append(s: Any, user_id: int, name: str, data: bytes, flags: Sequence[str],
           when: datetime | None,
           fts_max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[int, int, int, int]:
    """Store a message and its searchable text; (uidvalidity, uid, mailbox id, modseq)."""
    return entries.append(s, user_id, name, data, metadata_json(analyze(data)),
                          flags, when, doc=text_or_unreadable(data, fts_max_bytes))


list_rows = _refusing(entries.list_rows)
take_recent_uids = entries.take_recent_uids
take_recent_uids_locked = entries.take_recent_uids_locked
create = _refusing(entries.create)
delete = _refusing(entries.delete)
rename = _refusing(entries.rename)
subscribe = _refusing(entries.subscribe)
status = _refusing(entries.status)
quota = _refusing(entries.quota)


@_refusing
def select(s: Any, user_id: int, name: str, take_recent: bool = False) -> entries.SelectState:
    return entries.select(s, user_id, name, take_recent=take_recent)


changes = _refusing(entries.changes)
fetch_flags = _refusing(entries.fetch_flags)
fetch = _refusing(entries.fetch)
store = _refusing(entries.store)
search = _refusing(entries.search)
copy = _refusing(entries.copy)
expunge = _refusing(entries.expunge)
user_mailbox_ids = _refusing(entries.user_mailbox_ids)
mailbox_identity = _refusing(entries.mailbox_identity)
vanished = _refusing(expunges.vanished)
get_metadata = _refusing(imap_metadata.get)
set_metadata = _refusing(imap_metadata.set_entries)


def _display(address: Any) -> str:
    """RFC 5957 display of a cached envelope address (mail analysed before it was kept)."""
    if not isinstance(address, dict) or address.get("host") is None:
        return ""
    name = " ".join(decode_words(address.get("name") or "").split())
    return name or f"{address.get('mailbox') or ''}@{address['host']}"


@_refusing
def ordering(s: Any, mailbox_id: int, key: Any, max_uid: int) -> list[SortItem]:
    """The SORT/THREAD facts of the messages matching ``key``, from cached metadata."""
    items = []
    for row in entries.ordering_rows(s, mailbox_id, key, max_uid):
        (uid, arrival, size, sent, from_, to, cc, display_from, display_to, subject,
         message_id, in_reply_to, references, first_from, first_to) = row
        items.append(SortItem(
            uid=int(uid), arrival=float(arrival),
            sent=float(sent) if sent is not None else float(arrival), size=int(size),
            subject=subject or "", from_=from_ or "", to=to or "", cc=cc or "",
            display_from=display_from if display_from is not None else _display(first_from),
            display_to=display_to if display_to is not None else _display(first_to),
            message_id=message_id, in_reply_to=in_reply_to, references=references))
    return items
