"""Mail accounts: add (with default mailboxes), list, password changes, removal, login."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from postroom.auth.passwords import hash_password, needs_rehash, verify_password
from postroom.store.addresses import normalise_domain, split_address
from postroom.store.common import domain_id, insert_unique
from postroom.store.errors import InvalidAddress, NotFound
from postroom.store.mailboxes import create_default_mailboxes
from postroom.store.models import Domain, User

HashFn = Callable[[str], str]



@functools.cache
def _dummy_hash() -> str:
    """Verified against when the address is unknown, so that a miss costs as much as a wrong
    password and login timing does not tell which addresses exist."""
    return hash_password("postroom-dummy-password")


@dataclass(frozen=True)
class UserInfo:
    id: int
    address: str
    localpart: str
    domain: str
    active: bool
    quota_bytes: int | None
    quota_messages: int | None
    created_at: datetime


def _info(row: User, domain: str) -> UserInfo:
    return UserInfo(id=row.id, address=row.address, localpart=row.localpart, domain=domain,
                    active=row.active, quota_bytes=row.quota_bytes,
                    quota_messages=row.quota_messages, created_at=row.created_at)


def _check_password(password: str) -> None:
    if not password:
        raise ValueError("empty password")


def add_user(session: Session, address: str, password: str, *, quota_bytes: int | None = None,
             quota_messages: int | None = None, hash_fn: HashFn = hash_password) -> UserInfo:
    """Add an account in an existing domain, with INBOX, Sent, Drafts, Trash, Junk, Archive.

    Raises InvalidAddress, NotFound (unknown domain) or AlreadyExists.
    """
    localpart, domain = split_address(address)
    _check_password(password)
    for quota in (quota_bytes, quota_messages):
        if quota is not None and quota < 0:
            raise ValueError("quota must not be negative")
    ident = domain_id(session, domain)
    normal = f"{localpart}@{domain}"

    def insert() -> User:
        row = User(domain_id=ident, localpart=localpart, address=normal,
                   password_hash=hash_fn(password), quota_bytes=quota_bytes,
                   quota_messages=quota_messages)
        session.add(row)
        session.flush()
        return row

    row = insert_unique(session, insert, f"user {normal} already exists")
    session.refresh(row)
    create_default_mailboxes(session, row.id)
    return _info(row, domain)


def _find(session: Session, address: str) -> tuple[User, str] | None:
    try:
        localpart, domain = split_address(address)
    except InvalidAddress:
        return None
    found = session.execute(
        select(User, Domain.name).join(Domain, Domain.id == User.domain_id)
        .where(User.address == f"{localpart}@{domain}")).first()
    return (found[0], found[1]) if found else None


def get_user(session: Session, address: str) -> UserInfo | None:
    """The account with this address (any case), or None."""
    found = _find(session, address)
    return _info(*found) if found else None


def get_user_by_id(session: Session, user_id: int) -> UserInfo | None:
    found = session.execute(
        select(User, Domain.name).join(Domain, Domain.id == User.domain_id)
        .where(User.id == user_id)).first()
    return _info(found[0], found[1]) if found else None


def list_users(session: Session, domain: str | None = None) -> list[UserInfo]:
    """Every account, or those of one domain, by address."""
    query = select(User, Domain.name).join(Domain, Domain.id == User.domain_id)
    if domain is not None:
        query = query.where(Domain.name == normalise_domain(domain))
    return [_info(r[0], r[1]) for r in session.execute(query.order_by(User.address))]


def set_password(session: Session, address: str, password: str, *,
                 hash_fn: HashFn = hash_password) -> None:
    """Replace an account's password; NotFound when there is no such account."""
    _check_password(password)
    found = _find(session, address)
    if found is None:
        raise NotFound(f"no user {address}")
    found[0].password_hash = hash_fn(password)


def set_active(session: Session, address: str, active: bool) -> None:
    """Enable or disable logins and delivery for an account."""
    found = _find(session, address)
    if found is None:
        raise NotFound(f"no user {address}")
    found[0].active = active


def remove_user(session: Session, address: str) -> None:
    """Remove an account with its mailboxes (blobs stay until no one refers to them)."""
    found = _find(session, address)
    if found is None:
        raise NotFound(f"no user {address}")
    session.execute(delete(User).where(User.id == found[0].id))


def authenticate(session: Session, address: str, password: str, *,
                 hash_fn: HashFn = hash_password) -> UserInfo | None:
    """The active account when ``password`` is right, else None (unknown, inactive, wrong).

    A hash made with old parameters (or bcrypt) is replaced by a current one on
    a successful login, inside the caller's transaction.
    """
    found = _find(session, address)
    if found is None:
        verify_password(password, _dummy_hash())
        return None
    row, domain = found
    if not verify_password(password, row.password_hash) or not row.active:
        return None
    if needs_rehash(row.password_hash):
        row.password_hash = hash_fn(password)
    return _info(row, domain)
