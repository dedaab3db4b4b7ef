"""What the IMAP protocol asks of the store side: plain-data results and the refusals it maps.

protocol.py calls only :class:`Accounts` and the :class:`UserStore` a login
returns; every method returns a Deferred. backend.py implements them over
PostgreSQL and Redis; the unit tests implement them in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from twisted.internet.defer import Deferred

# the plain-data results are the store's (postroom.store.entries)
from postroom.store.entries import (
    Changes,
    CopyResult,
    FetchRow,
    FlagUpdate,
    MailboxRow,
    MailboxStatus,
    Quota,
    SelectState,
    StoreResult,
)
from postroom_imap.ordering import SortItem
from postroom_imap.spool import SpooledLiteral
from postroom_imap.syntax_types import CatText, CatUrl, SearchKey

__all__ = [
    "Accounts",
    "AuthFailed",
    "Changes",
    "CopyResult",
    "FetchRow",
    "FlagUpdate",
    "LoginDelayed",
    "MailboxExists",
    "MailboxRow",
    "MailboxStatus",
    "MetadataMaxSize",
    "MetadataTooMany",
    "NoSuchMailbox",
    "OverQuota",
    "OwnChange",
    "Quota",
    "Refusal",
    "SelectState",
    "StoreResult",
    "TooManyKeywords",
    "Unavailable",
    "UserStore",
]


class Refusal(Exception):
    """A refusal the client is told about: ``tag NO [CODE] text``."""

    code: str | None = "UNAVAILABLE"
    text = "temporary failure, try again later"

    def __init__(self, text: str | None = None) -> None:
        super().__init__(text or self.text)
        if text:
            self.text = text

    def response(self) -> str:
        return f"[{self.code}] {self.text}" if self.code else self.text


class AuthFailed(Refusal):
    code = "AUTHENTICATIONFAILED"
    text = "authentication failed"


class LoginDelayed(Refusal):
    code = "UNAVAILABLE"
    text = "too many failed logins, try again later"


class Unavailable(Refusal):
    code = "UNAVAILABLE"
    text = "temporary failure, try again later"


class NoSuchMailbox(Refusal):
    code = "NONEXISTENT"
    text = "no such mailbox"


class MailboxExists(Refusal):
    code = "ALREADYEXISTS"
    text = "mailbox already exists"


class MetadataMaxSize(Refusal):
    """RFC 5464 4.3: a value over the limit; the code names the limit."""

    text = "metadata value too large"

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self.code = f"METADATA MAXSIZE {max_size}"


class MetadataTooMany(Refusal):
    code = "METADATA TOOMANY"
    text = "too many metadata entries"


class OverQuota(Refusal):
    code = "OVERQUOTA"
    text = "quota exceeded"


class TooManyKeywords(Refusal):
    code = "LIMIT"
    text = "too many keywords in this mailbox"


@dataclass(frozen=True)
class OwnChange:
    """A change a session committed: the mailbox's HIGHESTMODSEQ went ``before`` -> ``after``.

    Read under the mailbox's row lock, so when ``before`` is the HIGHESTMODSEQ
    the session last knew, nothing else happened in between and the session
    can skip asking the store what changed (see ``Selected.own_change``).
    """

    mailbox_id: int
    before: int
    after: int
    uid: int | None = None  # the message an APPEND added
    # an APPEND into the session's selected mailbox took \\Recent of the UIDs from this one
    # up to its last message (RFC 3501 2.3.2: this session is the first to be told of them)
    recent_from: int | None = None



# one message of an APPEND: its bytes (in memory or spooled), flags, and INTERNALDATE if given
# (CATENATE: the parts it is made of)
NewMessage = tuple[bytes | SpooledLiteral | tuple[CatText | CatUrl, ...], Sequence[str],
                   datetime | None]


class UserStore(Protocol):
    """A logged-in user's mailboxes; ``uids`` arguments are ordered, existing UIDs."""

    address: str

    def list_mailboxes(self) -> Deferred[list[MailboxRow]]: ...
    # pure CPU work too large for the reactor thread (a LIST over many mailboxes)
    def offload(self, fn: Callable[[], Any]) -> Deferred[Any]: ...
    def create(self, name: str, special_use: str | None) -> Deferred[None]: ...
    def delete(self, name: str) -> Deferred[None]: ...
    def rename(self, old: str, new: str) -> Deferred[None]: ...
    def subscribe(self, name: str, subscribed: bool) -> Deferred[None]: ...
    def status(self, name: str) -> Deferred[MailboxStatus]: ...
    def append(self, name: str, messages: Sequence[NewMessage], max_size: int, *,
               recent_for: int | None = None) -> Deferred[tuple[int, list[int]]]:
        """Store the messages in one transaction (all or none); (uidvalidity, their UIDs).

        A CATENATE message is assembled there, from this user's messages; at
        most ``max_size`` bytes (else TOOBIG), a URL naming nothing BADURL.
        ``recent_for``: the mailbox id the session has selected read-write and
        takes \\Recent in; when the messages go there, the same transaction
        takes them (``OwnChange.recent_from``).
        """
        ...
    # ``take_recent``: a read-write SELECT or session takes the \\Recent messages it sees
    def select(self, name: str, *, take_recent: bool = False) -> Deferred[SelectState]: ...
    def changes(self, mailbox_id: int, modseq: int, max_uid: int,
                count: int, *, take_recent: bool = False) -> Deferred[Changes]: ...
    def fetch(self, mailbox_id: int, uids: Sequence[int], *, blob: bool, meta: bool,
              mark_seen: bool, changedsince: int | None,
              tree: bool = True, head: bool = False) -> Deferred[list[FetchRow]]: ...
    def fetch_flags(self, mailbox_id: int, uids: Sequence[int], *,
                    changedsince: int | None) -> Deferred[list[tuple[int, str, int]]]: ...
    def store(self, mailbox_id: int, uids: Sequence[int], mode: str, flags: Sequence[str],
              unchangedsince: int | None) -> Deferred[StoreResult]: ...
    def search(self, mailbox_id: int, key: SearchKey,
               max_uid: int) -> Deferred[list[tuple[int, int]]]: ...
    def ordering(self, mailbox_id: int, key: SearchKey,
                 max_uid: int) -> Deferred[list[SortItem]]: ...
    def copy(self, mailbox_id: int, uids: Sequence[int], dest: str,
             move: bool) -> Deferred[CopyResult]: ...
    def expunge(self, mailbox_id: int, uids: Sequence[int] | None) -> Deferred[list[int]]: ...
    def quota(self) -> Deferred[Quota]: ...
    # METADATA (RFC 5464): mailbox "" is the server
    def get_metadata(self, mailbox: str, names: Sequence[str],
                     depth: str) -> Deferred[list[tuple[str, bytes | None]]]: ...
    def set_metadata(self, mailbox: str,
                     entries: Sequence[tuple[str, bytes | None]]) -> Deferred[None]: ...
    # QRESYNC: UID ranges expunged after modseq ``since`` (within ``spans`` when given)
    def vanished(self, mailbox_id: int, since: int,
                 spans: list[tuple[int, int]] | None) -> Deferred[list[tuple[int, int]]]: ...

    # optional (the protocol uses getattr): what the last command changed itself
    # def take_own_changes(self) -> list[OwnChange]: ...
    def watch(self, mailbox_id: int, callback: Callable[..., None],
              known: int | None = None) -> Callable[[], None]:
        """Call ``callback`` (on the reactor) when the mailbox may have changed; returns unwatch.

        The callback gets the change's new HIGHESTMODSEQ as its argument when the
        event carries one, and no argument otherwise. ``known``: the watcher's
        HIGHESTMODSEQ; a change above it announced before the watch began calls
        the callback at once.
        """
        ...
    def close(self) -> None: ...


class Accounts(Protocol):
    """Logs users in."""

    def login(self, username: str, password: str, peer: str) -> Deferred[UserStore]:
        """The user's store; fails with AuthFailed, LoginDelayed or Unavailable."""
        ...

    def scram_secrets(self, username: str, peer: str) -> Deferred[Any]:
        """The stored SCRAM-SHA-256 secrets (``sasl.ScramSecrets``) of ``username``, or None
        (unknown, no secrets, or ``peer``/``username`` locked out by the limiter)."""
        ...

    def login_verified(self, username: str, verified: bool, peer: str) -> Deferred[UserStore]:
        """The store after a SCRAM exchange; ``verified`` False counts as a failed login.
        Fails like :meth:`login`."""
        ...
