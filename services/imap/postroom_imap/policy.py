"""What the IMAP protocol asks of the store side: plain-data results and the refusals it maps.

protocol.py calls only :class:`Accounts` and the :class:`UserStore` a login
returns; every method returns a Deferred. backend.py implements them over
PostgreSQL and Redis; the unit tests implement them in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from postroom_imap.spool import SpooledLiteral
from postroom_imap.syntax_types import SearchKey


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


class OverQuota(Refusal):
    code = "OVERQUOTA"
    text = "quota exceeded"


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


@dataclass(frozen=True)
class CopyResult:
    uidvalidity: int
    source: list[int]
    dest: list[int]


@dataclass(frozen=True)
class Quota:
    used_bytes: int
    limit_bytes: int | None
    used_messages: int
    limit_messages: int | None


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
    def append(self, name: str, data: bytes | SpooledLiteral, flags: Sequence[str],
               when: datetime | None) -> Deferred[tuple[int, int]]: ...
    def select(self, name: str) -> Deferred[SelectState]: ...
    def changes(self, mailbox_id: int, modseq: int, max_uid: int,
                count: int) -> Deferred[Changes]: ...
    def fetch(self, mailbox_id: int, uids: Sequence[int], *, blob: bool, meta: bool,
              mark_seen: bool, changedsince: int | None,
              tree: bool = True) -> Deferred[list[FetchRow]]: ...
    def fetch_flags(self, mailbox_id: int, uids: Sequence[int], *,
                    changedsince: int | None) -> Deferred[list[tuple[int, str, int]]]: ...
    def store(self, mailbox_id: int, uids: Sequence[int], mode: str, flags: Sequence[str],
              unchangedsince: int | None) -> Deferred[StoreResult]: ...
    def search(self, mailbox_id: int, key: SearchKey,
               max_uid: int) -> Deferred[list[tuple[int, int]]]: ...
    def copy(self, mailbox_id: int, uids: Sequence[int], dest: str,
             move: bool) -> Deferred[CopyResult]: ...
    def expunge(self, mailbox_id: int, uids: Sequence[int] | None) -> Deferred[list[int]]: ...
    def quota(self) -> Deferred[Quota]: ...

    # optional (the protocol uses getattr): what the last command changed itself
    # def take_own_changes(self) -> list[OwnChange]: ...
    def watch(self, mailbox_id: int, callback: Callable[..., None]) -> Callable[[], None]:
        """Call ``callback`` (on the reactor) when the mailbox may have changed; returns unwatch.

        The callback gets the change's new HIGHESTMODSEQ as its argument when the
        event carries one, and no argument otherwise.
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
