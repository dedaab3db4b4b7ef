"""Who may use the web console and the REST API: admins, domain managers, API tokens, sessions.

The one owner of the SQL on ``users.is_admin``, ``domain_managers``, ``api_tokens``
and ``web_sessions`` (migration 0013). Secrets (API tokens, session cookies) are
shown once and kept only as their SHA-256: a copy of the database lets no one in,
and a presented secret is found by its hash through a unique index, so no
comparison of secret bytes runs in Python (nothing to time). A
:class:`Principal` is what the web service checks every request against
(docs/operations.md, "Console access").
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from postroom.store.addresses import login_name, normalise_domain
from postroom.store.common import domain_id, insert_unique
from postroom.store.errors import NotFound
from postroom.store.models import Domain, User, api_tokens, domain_managers, web_sessions

TOKEN_PREFIX = "prt_"  # noqa: S105 - a marker that tells a token apart, not a secret
# 32 random bytes: 43 url-safe base64 characters
TOKEN_BYTES = 32
MAX_TOKEN_NAME_CHARS = 64
# a presented secret longer than this is no one's (ours are 47 and 43 characters): not hashed
MAX_SECRET_CHARS = 128
# last_used_at and last_seen_at are written at most this often (not on every request)
TOUCH_INTERVAL = timedelta(seconds=60)


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: an API token or a logged-in account, and what it may manage."""

    kind: str                 # "token" or "user"
    name: str                 # token name, or the user's address
    user_id: int | None
    is_admin: bool            # global admin: every domain
    domains: frozenset[str] = field(default_factory=frozenset)  # managed (empty for admins)

    def can_manage(self, domain: str) -> bool:
        """True for an admin, or when ``domain`` (any case) is one this principal manages."""
        return self.is_admin or domain.strip().rstrip(".").lower() in self.domains

    @property
    def is_console_user(self) -> bool:
        """May use the console at all: an admin or the manager of at least one domain."""
        return self.is_admin or bool(self.domains)


@dataclass(frozen=True)
class TokenInfo:
    name: str
    domain: str | None        # None: a token for every domain
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _presented(secret: str) -> str | None:
    """The SHA-256 of a secret a client presented, or None when it cannot be one of ours."""
    if not secret or len(secret) > MAX_SECRET_CHARS or not secret.isascii():
        return None
    return _sha256(secret)


def _check_token_name(name: str) -> str:
    if not name or len(name) > MAX_TOKEN_NAME_CHARS or not name.isascii() \
            or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"token name {name!r}: 1 to {MAX_TOKEN_NAME_CHARS} letters, digits, "
                         "'-', '_' or '.'")
    return name


def _user_id(session: Session, address: str) -> int:
    normal = login_name(address)
    found = None if normal is None else session.execute(
        select(User.id).where(User.address == normal)).scalar_one_or_none()
    if found is None:
        raise NotFound(f"no user {address}")
    return found


# --- API tokens

def create_token(session: Session, name: str, domain: str | None) -> str:
    """Make an API token for ``domain`` (None: every domain); its secret, shown only now.

    Raises ValueError (bad name), NotFound (unknown domain) or AlreadyExists (the
    name is taken, also by a revoked token).
    """
    _check_token_name(name)
    ident = None if domain is None else domain_id(session, normalise_domain(domain))
    secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)

    def add() -> None:
        session.execute(insert(api_tokens).values(name=name, token_sha256=_sha256(secret),
                                                  domain_id=ident))

    insert_unique(session, add, f"token {name} already exists")
    return secret


def revoke_token(session: Session, name: str) -> bool:
    """Revoke the token ``name`` for good; False when there is no such unrevoked token."""
    done = session.execute(update(api_tokens)
                           .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
                           .values(revoked_at=func.now()))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def list_tokens(session: Session) -> list[TokenInfo]:
    """Every token (revoked ones too), by name; never a secret."""
    rows = session.execute(
        select(api_tokens.c.name, Domain.name, api_tokens.c.created_at,
               api_tokens.c.last_used_at, api_tokens.c.revoked_at)
        .outerjoin(Domain, Domain.id == api_tokens.c.domain_id)
        .order_by(api_tokens.c.name))
    return [TokenInfo(name=r[0], domain=r[1], created_at=r[2], last_used_at=r[3],
                      revoked_at=r[4]) for r in rows]


def principal_for_token(session: Session, secret: str) -> Principal | None:
    """Who an ``Authorization: Bearer`` secret is: None when unknown or revoked.

    Notes the use (``last_used_at``) at most once a minute, in the caller's transaction.
    """
    digest = _presented(secret)
    if digest is None:
        return None
    found = session.execute(
        select(api_tokens.c.id, api_tokens.c.name, Domain.name)
        .outerjoin(Domain, Domain.id == api_tokens.c.domain_id)
        .where(api_tokens.c.token_sha256 == digest, api_tokens.c.revoked_at.is_(None))).first()
    if found is None:
        return None
    ident, name, domain = found
    session.execute(update(api_tokens).where(
        api_tokens.c.id == ident,
        or_(api_tokens.c.last_used_at.is_(None),
            api_tokens.c.last_used_at < func.now() - TOUCH_INTERVAL))
        .values(last_used_at=func.now()))
    if domain is None:
        return Principal(kind="token", name=name, user_id=None, is_admin=True,
                         domains=frozenset())
    return Principal(kind="token", name=name, user_id=None, is_admin=False,
                     domains=frozenset({domain}))


# --- admins and domain managers

def principal_for_user(session: Session, user_id: int) -> Principal | None:
    """What the account may manage; None when it is unknown or inactive.

    A plain account (neither admin nor manager) gets a principal with no domains:
    :attr:`Principal.is_console_user` is False for it.
    """
    found = session.execute(select(User.address, User.is_admin)
                            .where(User.id == user_id, User.active.is_(True))).first()
    if found is None:
        return None
    address, is_admin = found
    domains: frozenset[str] = frozenset()
    if not is_admin:
        domains = frozenset(session.execute(
            select(Domain.name).join(domain_managers, domain_managers.c.domain_id == Domain.id)
            .where(domain_managers.c.user_id == user_id)).scalars())
    return Principal(kind="user", name=address, user_id=user_id, is_admin=bool(is_admin),
                     domains=domains)


def set_admin(session: Session, address: str, on: bool) -> None:
    """Make the account a global admin (or not); NotFound when there is no such account."""
    ident = _user_id(session, address)
    session.execute(update(User).where(User.id == ident).values(is_admin=on))


def add_manager(session: Session, address: str, domain: str) -> None:
    """Let the account manage ``domain`` (again: no change); NotFound for either unknown."""
    user = _user_id(session, address)
    ident = domain_id(session, normalise_domain(domain))
    session.execute(pg_insert(domain_managers).values(user_id=user, domain_id=ident)
                    .on_conflict_do_nothing())


def remove_manager(session: Session, address: str, domain: str) -> bool:
    """The account no longer manages ``domain``; False when it did not (or either is unknown)."""
    normal = login_name(address)
    if normal is None:
        return False
    try:
        name = normalise_domain(domain)
    except ValueError:
        return False
    user = select(User.id).where(User.address == normal).scalar_subquery()
    ident = select(Domain.id).where(Domain.name == name).scalar_subquery()
    done = session.execute(delete(domain_managers).where(
        domain_managers.c.user_id == user, domain_managers.c.domain_id == ident))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def managers(session: Session, domain: str | None = None) -> list[tuple[str, str]]:
    """(address, domain) of every domain manager, or of ``domain``'s, by domain and address."""
    query = (select(User.address, Domain.name)
             .select_from(domain_managers)
             .join(User, User.id == domain_managers.c.user_id)
             .join(Domain, Domain.id == domain_managers.c.domain_id))
    if domain is not None:
        query = query.where(Domain.name == normalise_domain(domain))
    return [(r[0], r[1]) for r in session.execute(query.order_by(Domain.name, User.address))]


def may_change_account(session: Session, principal: Principal, address: str) -> bool:
    """Whether ``principal`` may change or remove the account ``address`` (its password,
    state, quota) beyond seeing it: an admin any; anyone else only an account with no more
    power than its own, i.e. not an admin and managing no domain the principal does not
    manage (else setting its password would hand those over). True for an unknown account
    (the change then finds none). Which domain's accounts it may see is checked apart
    (``can_manage`` of the address's domain)."""
    if principal.is_admin:
        return True
    normal = login_name(address)
    found = None if normal is None else session.execute(
        select(User.id, User.is_admin).where(User.address == normal)).first()
    if found is None:
        return True
    if found[1]:
        return False
    theirs = set(session.execute(
        select(Domain.name).join(domain_managers, domain_managers.c.domain_id == Domain.id)
        .where(domain_managers.c.user_id == found[0])).scalars())
    return theirs <= set(principal.domains)


# --- console sessions

def create_web_session(session: Session, user_id: int, ttl_seconds: int) -> tuple[str, str]:
    """Start a console session for the account: (cookie secret, CSRF token), shown only now.

    The session ends ``ttl_seconds`` from now whatever happens; NotFound for an unknown
    account.
    """
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    if session.execute(select(User.id).where(User.id == user_id)).scalar_one_or_none() is None:
        raise NotFound(f"no user with id {user_id}")
    secret = secrets.token_urlsafe(TOKEN_BYTES)
    csrf = secrets.token_urlsafe(TOKEN_BYTES)
    session.execute(insert(web_sessions).values(
        id_sha256=_sha256(secret), user_id=user_id, csrf_token=csrf,
        expires_at=func.now() + timedelta(seconds=ttl_seconds)))
    return secret, csrf


def web_session(session: Session, secret: str,
                idle_seconds: int) -> tuple[Principal, str] | None:
    """(principal, CSRF token) of the session whose cookie is ``secret``.

    None when unknown, expired, unused for ``idle_seconds``, or its account is
    inactive. Notes the use (``last_seen_at``) at most once a minute, so idleness is
    measured to the minute.
    """
    digest = _presented(secret)
    if digest is None:
        return None
    found = session.execute(
        select(web_sessions.c.user_id, web_sessions.c.csrf_token)
        .where(web_sessions.c.id_sha256 == digest,
               web_sessions.c.expires_at > func.now(),
               web_sessions.c.last_seen_at > func.now() - timedelta(seconds=idle_seconds))).first()
    if found is None:
        return None
    principal = principal_for_user(session, found[0])
    if principal is None:
        return None
    session.execute(update(web_sessions).where(
        web_sessions.c.id_sha256 == digest,
        web_sessions.c.last_seen_at < func.now() - TOUCH_INTERVAL).values(last_seen_at=func.now()))
    return principal, found[1]


def delete_web_session(session: Session, secret: str) -> None:
    """End the session whose cookie is ``secret`` (log out); nothing when there is none."""
    digest = _presented(secret)
    if digest is not None:
        session.execute(delete(web_sessions).where(web_sessions.c.id_sha256 == digest))


def delete_user_web_sessions(session: Session, user_id: int) -> int:
    """End every session of the account (its password changed, it was disabled); how many."""
    done = session.execute(delete(web_sessions).where(web_sessions.c.user_id == user_id))
    return int(done.rowcount)  # type: ignore[attr-defined]


def purge_web_sessions(session: Session) -> int:
    """Delete the expired sessions; how many."""
    done = session.execute(delete(web_sessions).where(web_sessions.c.expires_at <= func.now()))
    return int(done.rowcount)  # type: ignore[attr-defined]

