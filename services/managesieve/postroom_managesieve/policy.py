"""What the ManageSieve protocol asks of the store side: Authority, Scripts, refusals.

The protocol (protocol.py) parses and replies; it calls only these methods,
each returning a Deferred, and maps the exceptions below to ``NO`` replies
with RFC 5804 response codes. scripts.py implements them over PostgreSQL
and Redis (the shared failed-login limiter); the unit tests in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted.internet.defer import Deferred

from postroom.auth.sasl import ScramSecrets
from postroom.sieve import SieveError
from postroom.store.apppasswords import TWO_FACTOR_REFUSAL_TEXT


class Refusal(Exception):
    """A refusal the client is told about: ``NO (<code>) "<text>"``."""

    code: str | None = "TRYLATER"
    text = "temporary failure, try again later"

    def __init__(self, text: str | None = None, code: str | None = None) -> None:
        super().__init__(text or self.text)
        if text is not None:
            self.text = text
        if code is not None:
            self.code = code


class AuthFailed(Refusal):
    """Unknown user, wrong password or disabled account (never says which)."""

    code = None
    text = "authentication failed"


class AppPasswordRequired(AuthFailed):
    """The main password of an account with two-factor login on: only app passwords log in."""

    text = TWO_FACTOR_REFUSAL_TEXT


class LoginDelayed(Refusal):
    """Too many failed logins from this address or for this account."""

    text = "too many failed logins, try again later"


class TemporaryFailure(Refusal):
    """The store or Redis could not be reached; nothing changed."""


class ScriptRefused(Refusal):
    """A script command that cannot be done: ``code`` is NONEXISTENT, ACTIVE, ALREADYEXISTS,
    QUOTA/MAXSCRIPTS, QUOTA/MAXSIZE, or None (an invalid name)."""

    code = None
    text = "refused"


class Scripts(Protocol):
    """One logged-in account's Sieve scripts."""

    address: str

    def list(self) -> Deferred[list[tuple[str, bool]]]:
        """(name, active) of each script, by name."""
        ...

    def get(self, name: str) -> Deferred[str]:
        """The script's text; ScriptRefused (NONEXISTENT)."""
        ...

    def check(self, text: str) -> Deferred[Sequence[SieveError]]:
        """The problems in ``text`` (empty: it is a valid script here)."""
        ...

    def have_space(self, name: str, size: int) -> Deferred[None]:
        """Whether ``size`` octets under ``name`` fit; ScriptRefused (QUOTA/...)."""
        ...

    def put(self, name: str, text: str) -> Deferred[None]:
        """Store a checked script; ScriptRefused (QUOTA/..., or an invalid name)."""
        ...

    def set_active(self, name: str | None) -> Deferred[None]:
        """Make ``name`` the active script (None: none); ScriptRefused (NONEXISTENT)."""
        ...

    def delete(self, name: str) -> Deferred[None]:
        """ScriptRefused (NONEXISTENT, ACTIVE)."""
        ...

    def rename(self, old: str, new: str) -> Deferred[None]:
        """ScriptRefused (NONEXISTENT, ALREADYEXISTS, or an invalid name)."""
        ...


class Authority(Protocol):
    """Logs users in (the shared check and limiter) and hands out their scripts."""

    def login(self, username: str, password: str, peer: str) -> Deferred[Scripts]:
        """Fails with AuthFailed, AppPasswordRequired, LoginDelayed or TemporaryFailure."""
        ...

    def scram_secrets(self, username: str, peer: str) -> Deferred[ScramSecrets | None]:
        """The account's SCRAM secrets (None: unknown, or the client is locked out)."""
        ...

    def login_verified(self, username: str, verified: bool, peer: str) -> Deferred[Scripts]:
        """After a SCRAM exchange: the account's scripts, or a Refusal as for login."""
        ...
