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

Last use (time and client address) is written after the hash check, in a short
transaction of its own that first checks the account is as it was read (decision
0027: :func:`read_login`, :func:`check_login`, :func:`finish_login`), at
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
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from postroom.auth.passwords import hash_password, needs_rehash, verify_password
from postroom.store import users
from postroom.store.common import insert_unique
from postroom.store.errors import NotFound
from postroom.store.models import APP_PASSWORD_PROTOCOLS, Domain, User, app_passwords

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


def authenticate(session: Session, address: str, password: str, *, protocol: str,
                 peer: str | None = None, hash_fn: users.HashFn = hash_password) -> Login:
    """The login check of every mail protocol service (``protocol``: imap, pop3, submission
    or managesieve; ``peer``: the client's IP address, recorded as an app password's last use),
    all in the caller's transaction (CLI, tests). The services use
    :func:`postroom.auth.logincheck.authenticate`, which runs the same three steps
    (:func:`read_login`, :func:`check_login`, :func:`finish_login`) with the hash check
    outside any transaction.

    Accepts the main password unless two-factor login is on, or a live app password
    allowed for ``protocol``; an inactive account is refused either way. See the module
    docstring for what it costs and what it tells.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}")
    read = read_login(session, address, password, protocol=protocol)
    for _ in range(LOGIN_ROUNDS):
        checked = check_login(read, password, protocol=protocol, hash_fn=hash_fn)
        if not needs_finish(checked):
            return checked.login
        done = finish_login(session, checked, address, password, protocol=protocol, peer=peer)
        if isinstance(done, Login):
            return done
        read = done
    return Login(None)


# --- the login in three steps (decision 0027): read, check the hash with no transaction open
# and no pooled connection held, write what the login changes in a short transaction of its own

# a login whose account changed between its read and its write reads and checks again at most
# this often, then fails like a wrong password (only a flood of password changes gets there)
LOGIN_ROUNDS = 3


@dataclass(frozen=True)
class LoginRead:
    """What a login's hash check needs of the account, read in one statement (no lock held).

    ``info`` is None for an unknown address. ``app_*``: the live app password whose lookup
    is the typed secret's first group, when the password has the app-password shape and
    the account is active (``protocol`` given); else None.
    """

    info: users.UserInfo | None
    password_hash: str = ""
    has_scram: bool = False
    app_id: int | None = None
    app_name: str | None = None
    app_hash: str | None = None
    app_protocols: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LoginChecked:
    """What :func:`check_login` found, for :func:`finish_login` to write and answer."""

    read: LoginRead
    login: Login
    # a current hash (and SCRAM secrets, when the account had none) to store: the old one
    # was verified but made with other parameters (or imported)
    new_hash: str | None = None
    new_scram: str | None = None


def read_login(session: Session, address: str, password: str, *,
               protocol: str | None) -> LoginRead:
    """The account's hash and state, and the app password the typed secret could be (one
    statement; ``protocol`` None: the web console's first factor, main password only)."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}")
    normal = users.login_name(address)
    if normal is None:
        return LoginRead(None)
    letters = normalise_secret(password) if protocol is not None else None
    user, domain = User, Domain
    columns = [user.id, user.address, user.localpart, domain.name, user.active,
               user.quota_bytes, user.quota_messages, user.created_at, user.is_admin,
               user.totp_enabled, user.password_hash, user.scram_secrets.is_not(None)]
    query = select(*columns).join(domain, domain.id == user.domain_id)
    if letters is not None:
        query = query.add_columns(app_passwords.c.id, app_passwords.c.name,
                                  app_passwords.c.hash, app_passwords.c.protocols) \
            .outerjoin(app_passwords, (app_passwords.c.user_id == user.id)
                       & (app_passwords.c.lookup == letters[:GROUP_LETTERS])
                       & app_passwords.c.revoked_at.is_(None))
    row: Any = session.execute(query.where(user.address == normal)).first()
    if row is None:
        return LoginRead(None)
    info = users.UserInfo(id=row[0], address=row[1], localpart=row[2], domain=row[3],
                          active=row[4], quota_bytes=row[5], quota_messages=row[6],
                          created_at=row[7], is_admin=row[8], totp_enabled=row[9])
    read = LoginRead(info, password_hash=row[10], has_scram=bool(row[11]))
    if letters is not None and info.active and row[12] is not None:
        read = LoginRead(info, password_hash=row[10], has_scram=bool(row[11]), app_id=row[12],
                         app_name=row[13], app_hash=row[14],
                         app_protocols=tuple(row[15]) if row[15] else None)
    return read


def check_login(read: LoginRead, password: str, *, protocol: str | None,
                hash_fn: users.HashFn = hash_password) -> LoginChecked:
    """The hash checks of a login (scrypt: run it off the reactor, with no transaction open).

    Costs what :func:`authenticate` always did: the dummy hash for an unknown address,
    the app password's hash when there is a candidate, the main password's otherwise or
    when that was wrong (or not allowed for ``protocol``), and a new hash when the main
    one is out of date."""
    if read.info is None:
        users.verify_dummy(password)
        return LoginChecked(read, Login(None))
    letters = normalise_secret(password) if protocol is not None else None
    if letters is not None and read.app_hash is not None \
            and verify_password(letters, read.app_hash) \
            and (not read.app_protocols or protocol in read.app_protocols):
        return LoginChecked(read, Login(read.info, app_password=read.app_name))
    if not verify_password(password, read.password_hash) or not read.info.active:
        return LoginChecked(read, Login(None))
    new_hash = new_scram = None
    if needs_rehash(read.password_hash):
        new_hash = hash_fn(password)
        if not read.has_scram:
            new_scram = users.new_scram_text(password)
    if protocol is not None and read.info.totp_enabled:
        return LoginChecked(read, Login(None, refusal=TWO_FACTOR_REFUSAL), new_hash, new_scram)
    return LoginChecked(read, Login(read.info), new_hash, new_scram)


def needs_finish(checked: LoginChecked) -> bool:
    """True when the login writes something (an app password's last use, a new hash)."""
    return checked.login.app_password is not None or checked.new_hash is not None


def finish_login(session: Session, checked: LoginChecked, address: str, password: str, *,
                 protocol: str | None, peer: str | None) -> Login | LoginRead:
    """Write what the checked login changes, if what was checked is still current; else the
    account as it is now (a :class:`LoginRead`), for the caller to check again.

    Reads the account again in this transaction; the new hash is written only where the
    old one is still stored, so a password set meanwhile is never overwritten."""
    now = read_login(session, address, password, protocol=protocol)
    if now != checked.read:
        return now
    info = checked.read.info
    if info is None:
        return checked.login
    if checked.new_hash is not None:
        values: dict[str, str] = {"password_hash": checked.new_hash}
        if checked.new_scram is not None:
            values["scram_secrets"] = checked.new_scram
        done = session.execute(update(User).where(
            User.id == info.id, User.password_hash == checked.read.password_hash,
            *([User.scram_secrets.is_(None)] if checked.new_scram is not None else []))
            .values(**values))
        if not done.rowcount:  # type: ignore[attr-defined]
            return read_login(session, address, password, protocol=protocol)
    if checked.login.app_password is not None:
        ip = _peer_ip(peer)
        session.execute(update(app_passwords).where(
            app_passwords.c.id == checked.read.app_id,
            or_(app_passwords.c.last_used_at.is_(None),
                app_passwords.c.last_used_at < func.now() - USE_INTERVAL,
                app_passwords.c.last_used_ip.is_distinct_from(ip)))
            .values(last_used_at=func.now(), last_used_ip=ip))
    return checked.login
