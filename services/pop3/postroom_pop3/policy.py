"""What the POP3 protocol asks of the store side: Authority, Maildrop and their refusals.

The protocol (protocol.py) parses and replies; it calls only these methods,
each returning a Deferred, and maps the exceptions below to ``-ERR`` replies
with RFC 2449/3206 response codes. maildrop.py implements them over
PostgreSQL and Redis; the unit tests implement them in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred

from postroom.store.apppasswords import TWO_FACTOR_REFUSAL_TEXT


class Refusal(Exception):
    """A refusal the client is told about: ``-ERR <code> <reply>``."""

    code = "[SYS/TEMP]"
    reply = "temporary failure, try again later"

    def response(self) -> str:
        return f"{self.code} {self.reply}" if self.code else self.reply


class AuthFailed(Refusal):
    """Unknown user, wrong password or disabled account (never says which)."""

    code = "[AUTH]"
    reply = "authentication failed"


class AppPasswordRequired(AuthFailed):
    """The main password of an account with two-factor login on: only app passwords log in."""

    reply = TWO_FACTOR_REFUSAL_TEXT


class LoginDelayed(Refusal):
    """Too many failed logins from this address or for this account."""

    code = "[LOGIN-DELAY]"
    reply = "too many failed logins, try again later"


class MaildropInUse(Refusal):
    """Another session (on any replica) holds this user's maildrop."""

    code = "[IN-USE]"
    reply = "maildrop is locked by another session"


class TemporaryFailure(Refusal):
    """The store, Redis or the lock could not be reached; nothing changed."""

    code = "[SYS/TEMP]"
    reply = "temporary failure, try again later"


class MessageGone(Refusal):
    """The message was expunged (by IMAP) after this session's snapshot was taken."""

    code = "[SYS/PERM]"
    reply = "message was deleted"


@dataclass(frozen=True)
class DropMessage:
    """One message of the maildrop snapshot taken at login."""

    uid: int
    # octets RETR sends: the message with CRLF line endings, before dot-stuffing
    size: int
    # the UIDL value: "<uidvalidity>.<uid>", stable for the life of the mailbox, or the one
    # an imported message had on the old server (Snapshot.uidl)
    unique_id: str


class Maildrop(Protocol):
    """A user's locked maildrop for one session."""

    @property
    def messages(self) -> Sequence[DropMessage]:
        """The snapshot, in order: message number n is ``messages[n - 1]``."""
        ...

    def retrieve(self, index: int) -> Deferred[bytes]:
        """The CRLF bytes of ``messages[index]``; fails with MessageGone or TemporaryFailure."""
        ...

    def commit(self, deleted: Sequence[int]) -> Deferred[int]:
        """Expunge ``messages[i]`` for each i in one transaction; how many were removed."""
        ...

    def release(self) -> None:
        """Give up the lock (QUIT, timeout or dropped connection); idempotent."""
        ...


class Authority(Protocol):
    """Logs users in and hands out their locked maildrop."""

    def login(self, username: str, password: str, peer: str) -> Deferred[Maildrop]:
        """The locked maildrop; fails with a Refusal (AuthFailed, LoginDelayed, MaildropInUse,
        TemporaryFailure)."""
        ...
