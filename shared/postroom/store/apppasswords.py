"""App passwords, and the one login check of the mail protocols (IMAP, POP3, submission,
ManageSieve): the main password unless two-factor login is on, or an app password.

An app password is made by the server (:func:`create`), shown once, and kept
only as its scrypt hash (:mod:`postroom.auth.passwords`). It is four groups of
four lowercase letters, ``abcd-efgh-ijkl-mnop`` (75 bits); the first group,
the *lookup*, is also stored in clear and picks the row, so a login verifies
at most one app-password hash however many devices an account has. A client
may type it with or without the dashes, with spaces, in any case.

:func:`authenticate` is what every protocol service calls, with its protocol
name. Its cost, in scrypt checks: one for a password that does not have the
app-password shape, or whose lookup is no live app password of the account
(the main password); one for a right app password; two for a wrong
app-password-shaped one whose lookup exists. With two-factor login on
(:mod:`postroom.store.totp`) the main password is refused with
``refusal="app_password_required"`` so the services can say why; that answer
is only given after the main password was verified, so it tells nothing to
someone who does not know it. App passwords cannot do SCRAM-SHA-256 (their
SCRAM secrets are not kept): clients use PLAIN or LOGIN under TLS.

Last use (time and client address) is written in the login's transaction, at
most once a minute per app password unless the address changed. Revoking,
like changing a password or turning two-factor login on, must be announced
after commit with :func:`postroom.queue.authevents.publish`, so every
process's login cache forgets the account (docs/security.md).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from postroom.auth.passwords import hash_password, verify_password
from postroom.store import users
from postroom.store.common import insert_unique
from postroom.store.errors import NotFound
from postroom.store.models import APP_PASSWORD_PROTOCOLS, app_passwords

PROTOCOLS = APP_PASSWORD_PROTOCOLS
ALPHABET = "abcdefghijklmnopqrstuvwxyz"
GROUPS = 4
GROUP_LETTERS = 4
SECRET_LETTERS = GROUPS * GROUP_LETTERS
MAX_NAME_CHARS = 64
# last_used_at / last_used_ip are written at most this often for one app password (same client)
USE_INTERVAL = timedelta(seconds=60)
# what authenticate() refuses with a reason the services show
TWO_FACTOR_REFUSAL = "app_password_required"
# what IMAP (NO), POP3 (-ERR) and SMTP (535) say then; one text, so users search for one thing
TWO_FACTOR_REFUSAL_TEXT = ("app password required: two-factor login is on for this "
                              "account, create an app password in the web console")
_LOOKUP_TRIES = 20


@dataclass(frozen=True)
class AppPasswordInfo:
    """One app password as lists show it (never its secret)."""

    name: str
    protocols: tuple[str, ...] | None   # None: every protocol
    created_at: datetime
    last_used_at: datetime | None
    last_used_ip: str | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Login:
    """The outcome of a protocol login: ``user`` on success, else why not when it can say."""

    user: users.UserInfo | None
    # the app password that logged in (its name); None for the main password
    app_password: str | None = None
    # TWO_FACTOR_REFUSAL: the main password was right but two-factor login is on
    refusal: str | None = None

    @property
    def credential(self) -> str | None:
        """For metrics: ``password``, ``app_password``, ``app_password_required``, or None
        (a plain failure)."""
        if self.refusal is not None:
            return self.refusal
        if self.user is None:
            return None
        return "app_password" if self.app_password is not None else "password"


def new_secret() -> str:
    """A fresh app password, ``abcd-efgh-ijkl-mnop`` (random lowercase letters)."""
    return "-".join("".join(secrets.choice(ALPHABET) for _ in range(GROUP_LETTERS))
                    for _ in range(GROUPS))


def normalise_secret(text: str) -> str | None:
    """The 16 letters of something typed as an app password, or None when it cannot be one."""
    if len(text) > 64:
        return None
    letters = text.replace("-", "").replace(" ", "").lower()
    if len(letters) != SECRET_LETTERS or not all(c in ALPHABET for c in letters):
        return None
    return letters


def check_name(name: str) -> str:
    """The name, unless it is empty, too long or holds control characters (ValueError)."""
    name = name.strip()
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"app password name: 1 to {MAX_NAME_CHARS} printable characters")
    return name


def check_protocols(protocols: Iterable[str] | None) -> tuple[str, ...] | None:
    """The protocols, sorted and without repeats (None or empty: every protocol)."""
    if protocols is None:
        return None
    chosen = tuple(sorted({p.strip().lower() for p in protocols}))
    unknown = [p for p in chosen if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol {unknown[0]!r}: one of {', '.join(PROTOCOLS)}")
    return chosen or None


def _user_id(session: Session, address: str) -> int:
    found = users.login_account(session, address)
    if found is None:
        raise NotFound(f"no user {address}")
    return found[1].id


def create(session: Session, address: str, name: str,
           protocols: Iterable[str] | None = None, *,
           hash_fn: users.HashFn = hash_password) -> str:
    """Make an app password ``name`` for the account; its secret, to be shown only now.

    ``protocols``: some of imap, pop3, submission, managesieve (None: all). A
    revoked app password of the same name is replaced; a live one is AlreadyExists.
    Raises NotFound (no such account) or ValueError (bad name or protocol).
    """
    name = check_name(name)
    chosen = check_protocols(protocols)
    user_id = _user_id(session, address)
    session.execute(delete(app_passwords).where(
        app_passwords.c.user_id == user_id, app_passwords.c.name == name,
        app_passwords.c.revoked_at.is_not(None)))
    taken = set(session.execute(select(app_passwords.c.lookup).where(
        app_passwords.c.user_id == user_id)).scalars())
    for _ in range(_LOOKUP_TRIES):
        secret = new_secret()
        if secret[:GROUP_LETTERS] not in taken:
            break
    else:  # a few hundred thousand lookups per account: only reached by a flood of creates
        raise ValueError("too many app passwords for this account")
    letters = secret.replace("-", "")

    def add() -> None:
        session.execute(insert(app_passwords).values(
            user_id=user_id, name=name, lookup=letters[:GROUP_LETTERS],
            hash=hash_fn(letters), protocols=list(chosen) if chosen else None))

    insert_unique(session, add, f"app password {name} already exists")
    return secret


def list_app_passwords(session: Session, address: str) -> list[AppPasswordInfo]:
    """The account's app passwords (revoked ones too), by name; NotFound for no account."""
    user_id = _user_id(session, address)
    rows = session.execute(
        select(app_passwords.c.name, app_passwords.c.protocols, app_passwords.c.created_at,
               app_passwords.c.last_used_at, app_passwords.c.last_used_ip,
               app_passwords.c.revoked_at)
        .where(app_passwords.c.user_id == user_id).order_by(app_passwords.c.name))
    return [AppPasswordInfo(name=r[0], protocols=tuple(r[1]) if r[1] else None,
                            created_at=r[2], last_used_at=r[3],
                            last_used_ip=str(r[4]) if r[4] is not None else None,
                            revoked_at=r[5]) for r in rows]


def revoke(session: Session, address: str, name: str) -> bool:
    """Revoke the app password ``name`` for good; False when there is no live one by that name.

    The caller announces it after commit (postroom.queue.authevents.publish).
    """
    user_id = _user_id(session, address)
    done = session.execute(update(app_passwords).where(
        app_passwords.c.user_id == user_id, app_passwords.c.name == name.strip(),
        app_passwords.c.revoked_at.is_(None)).values(revoked_at=func.now()))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def revoke_all(session: Session, address: str) -> int:
    """Revoke every live app password of the account; how many."""
    user_id = _user_id(session, address)
    done = session.execute(update(app_passwords).where(
        app_passwords.c.user_id == user_id, app_passwords.c.revoked_at.is_(None))
        .values(revoked_at=func.now()))
    return int(done.rowcount)  # type: ignore[attr-defined]


def _peer_ip(peer: str | None) -> str | None:
    if not peer:
        return None
    try:
        return str(ipaddress.ip_address(peer))
    except ValueError:
        return None


def _try_app_password(session: Session, user_id: int, letters: str, protocol: str,
                      peer: str | None) -> str | None:
    """The name of the live app password ``letters`` when it is right and allowed for
    ``protocol`` (its last use noted), else None."""
    row = session.execute(
        select(app_passwords.c.id, app_passwords.c.name, app_passwords.c.hash,
               app_passwords.c.protocols, app_passwords.c.last_used_at,
               app_passwords.c.last_used_ip)
        .where(app_passwords.c.user_id == user_id,
               app_passwords.c.lookup == letters[:GROUP_LETTERS],
               app_passwords.c.revoked_at.is_(None))).first()
    if row is None or not verify_password(letters, row.hash):
        return None
    if row.protocols and protocol not in row.protocols:
        return None
    ip = _peer_ip(peer)
    session.execute(update(app_passwords).where(
        app_passwords.c.id == row.id,
        or_(app_passwords.c.last_used_at.is_(None),
            app_passwords.c.last_used_at < func.now() - USE_INTERVAL,
            app_passwords.c.last_used_ip.is_distinct_from(ip)))
        .values(last_used_at=func.now(), last_used_ip=ip))
    return str(row.name)


def authenticate(session: Session, address: str, password: str, *, protocol: str,
                 peer: str | None = None, hash_fn: users.HashFn = hash_password) -> Login:
    """The login check of every mail protocol service (``protocol``: imap, pop3, submission
    or managesieve; ``peer``: the client's IP address, recorded as an app password's last use).

    Accepts the main password unless two-factor login is on, or a live app password
    allowed for ``protocol``; an inactive account is refused either way. See the module
    docstring for what it costs and what it tells.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}")
    found = users.login_account(session, address)
    if found is None:
        users.verify_dummy(password)
        return Login(None)
    row, info = found
    letters = normalise_secret(password)
    if letters is not None and row.active:
        name = _try_app_password(session, info.id, letters, protocol, peer)
        if name is not None:
            return Login(info, app_password=name)
    if not users.check_main_password(row, password, hash_fn=hash_fn):
        return Login(None)
    if row.totp_enabled:
        return Login(None, refusal=TWO_FACTOR_REFUSAL)
    return Login(info)

