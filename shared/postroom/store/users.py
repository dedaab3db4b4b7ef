"""Mail accounts: add (with default mailboxes), list, password changes, removal, login.

A password is kept twice, neither readable back: an scrypt hash for PLAIN/LOGIN
and the SCRAM-SHA-256 secrets (RFC 5802 section 3) for SCRAM, in the text form
``SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>`` that
Dovecot and PostgreSQL use. Accounts whose password was set before the secrets
were kept have none and cannot use SCRAM until the password is set again.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session

from postroom.auth.dovecotpw import is_plaintext, split_scheme
from postroom.auth.passwords import hash_password, needs_rehash, verify_password
from postroom.auth.sasl import ScramSecrets, scram_secrets
from postroom.store.addresses import login_name, normalise_domain, split_address, valid_domains
from postroom.store.aliases import (
    ROLE_LOCALPARTS,
    drop_role_alias,
    ensure_role_addresses,
    user_count,
)
from postroom.store.common import check_page, domain_id, insert_unique, search_text
from postroom.store.errors import NotFound
from postroom.store.mailboxes import create_default_mailboxes
from postroom.store.models import Domain, Mailbox, MailboxEntry, Message, User
from postroom.store.webaccess import delete_user_web_sessions

HashFn = Callable[[str], str]

SCRAM_PREFIX = "SCRAM-SHA-256$"
#: RFC 7677 asks for at least 4096; more makes a stolen secrets column costlier to attack
DEFAULT_SCRAM_ITERATIONS = 10000
MIN_SCRAM_ITERATIONS = 4096


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
    # a global admin of the web console and REST API (postroom.store.webaccess)
    is_admin: bool = False
    # two-factor login is on: the main password logs in to the web console only (with a
    # TOTP code); the mail protocols take app passwords (postroom.store.apppasswords)
    totp_enabled: bool = False


def encode_info(info: UserInfo) -> str:
    """``info`` as compact JSON (a login shared between processes, postroom.auth.authcache)."""
    fields = dataclasses.asdict(info)
    fields["created_at"] = info.created_at.isoformat()
    return json.dumps(fields, separators=(",", ":"))


def decode_info(text: str) -> UserInfo:
    """The UserInfo :func:`encode_info` wrote (raises ValueError, TypeError or KeyError on
    anything else)."""
    fields = json.loads(text)
    if not isinstance(fields, dict):
        raise ValueError("not an object")
    fields["created_at"] = datetime.fromisoformat(fields["created_at"])
    info = UserInfo(**fields)
    if not isinstance(info.id, int) or not isinstance(info.address, str):
        raise TypeError("malformed account info")
    return info


def _info(row: User, domain: str) -> UserInfo:
    return UserInfo(id=row.id, address=row.address, localpart=row.localpart, domain=domain,
                    active=row.active, quota_bytes=row.quota_bytes,
                    quota_messages=row.quota_messages, created_at=row.created_at,
                    is_admin=row.is_admin, totp_enabled=row.totp_enabled)


def _check_password(password: str) -> None:
    if not password:
        raise ValueError("empty password")


def format_scram_secrets(found: ScramSecrets) -> str:
    """The stored text form of SCRAM-SHA-256 secrets (see the module docstring)."""
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")
    return (f"{SCRAM_PREFIX}{found.iterations}:{b64(found.salt)}"
            f"${b64(found.stored_key)}:{b64(found.server_key)}")


def parse_scram_secrets(text: str) -> ScramSecrets:
    """The secrets in their stored text form; ValueError when it is not one."""
    if not text.startswith(SCRAM_PREFIX):
        raise ValueError("not SCRAM-SHA-256 secrets")
    params, sep, keys = text[len(SCRAM_PREFIX):].partition("$")
    iterations, sep1, salt = params.partition(":")
    stored_key, sep2, server_key = keys.partition(":")
    if not (sep and sep1 and sep2) or not iterations.isdigit():
        raise ValueError("malformed SCRAM-SHA-256 secrets")
    try:
        decoded = [base64.b64decode(part, validate=True)
                   for part in (salt, stored_key, server_key)]
    except (binascii.Error, ValueError):
        raise ValueError("bad base64 in SCRAM-SHA-256 secrets") from None
    if not decoded[0] or len(decoded[1]) != 32 or len(decoded[2]) != 32:
        raise ValueError("wrong SCRAM-SHA-256 salt or key length")
    return ScramSecrets(decoded[0], int(iterations), decoded[1], decoded[2])


def _scram_text(password: str, iterations: int) -> str:
    if iterations < MIN_SCRAM_ITERATIONS:
        raise ValueError(f"SCRAM iterations must be at least {MIN_SCRAM_ITERATIONS}")
    return format_scram_secrets(scram_secrets(password, iterations=iterations))


def add_user(session: Session, address: str, password: str, *, quota_bytes: int | None = None,
             quota_messages: int | None = None, hash_fn: HashFn = hash_password,
             scram_iterations: int = DEFAULT_SCRAM_ITERATIONS,
             is_admin: bool = False) -> UserInfo:
    """Add an account in an existing domain, with INBOX, Sent, Drafts, Trash, Junk, Archive.

    The password is stored as an scrypt hash and as SCRAM-SHA-256 secrets;
    ``is_admin`` makes it a global admin of the web console (postroom.store.webaccess).
    Raises InvalidAddress, NotFound (unknown domain) or AlreadyExists.
    """
    localpart, domain = split_address(address)
    _check_password(password)
    for quota in (quota_bytes, quota_messages):
        if quota is not None and quota < 0:
            raise ValueError("quota must not be negative")
    row = _create_account(session, localpart, domain, password_hash=hash_fn(password),
                          scram_secrets=_scram_text(password, scram_iterations),
                          quota_bytes=quota_bytes, quota_messages=quota_messages)
    if is_admin:
        row.is_admin = True
        session.flush()
    return _info(row, domain)


def _create_account(session: Session, localpart: str, domain: str, *, password_hash: str,
                    scram_secrets: str | None, quota_bytes: int | None = None,
                    quota_messages: int | None = None) -> User:
    """The one way an account is made (user add and imports): the row, its default
    mailboxes, and its domain's role addresses (docs/mda.md, "Role addresses")."""
    ident = domain_id(session, domain)
    normal = f"{localpart}@{domain}"

    def insert() -> User:
        row = User(domain_id=ident, localpart=localpart, address=normal,
                   password_hash=password_hash, scram_secrets=scram_secrets,
                   quota_bytes=quota_bytes, quota_messages=quota_messages)
        session.add(row)
        session.flush()
        return row

    row = insert_unique(session, insert, f"user {normal} already exists")
    session.refresh(row)
    create_default_mailboxes(session, row.id)
    if localpart in ROLE_LOCALPARTS:
        # an account postmaster@/abuse@ receives its role mail itself: the role alias,
        # which would take precedence over it (aliases.resolve_address), goes
        drop_role_alias(session, normal)
    if user_count(session, ident) == 1:
        # the domain's first account receives postmaster@ and abuse@ unless they exist
        ensure_role_addresses(session, domain)
    return row


def _find(session: Session, address: str) -> tuple[User, str] | None:
    # login_name: the canonical form the failed-login limiter and login cache key on too
    normal = login_name(address)
    if normal is None:
        return None
    found = session.execute(
        select(User, Domain.name).join(Domain, Domain.id == User.domain_id)
        .where(User.address == normal)).first()
    return (found[0], found[1]) if found else None


def login_account(session: Session, address: str) -> tuple[User, UserInfo] | None:
    """The row (for a login's checks and rehash) and info of the account ``address``, or None.

    For :mod:`postroom.store.apppasswords`, which owns the protocol services' login check."""
    found = _find(session, address)
    return (found[0], _info(*found)) if found else None


def new_scram_text(password: str) -> str:
    """The stored form of fresh SCRAM-SHA-256 secrets for ``password`` (default iterations)."""
    return _scram_text(password, DEFAULT_SCRAM_ITERATIONS)


def verify_dummy(password: str) -> None:
    """Spend what a password check costs, for a login whose account does not exist."""
    verify_password(password, _dummy_hash())


def get_user(session: Session, address: str) -> UserInfo | None:
    """The account with this address (any case), or None."""
    found = _find(session, address)
    return _info(*found) if found else None


def list_users(session: Session, domain: str | None = None) -> list[UserInfo]:
    """Every account, or those of one domain, by address."""
    query = select(User, Domain.name).join(Domain, Domain.id == User.domain_id)
    if domain is not None:
        query = query.where(Domain.name == normalise_domain(domain))
    return [_info(r[0], r[1]) for r in session.execute(query.order_by(User.address))]


def set_password(session: Session, address: str, password: str, *,
                 hash_fn: HashFn = hash_password,
                 scram_iterations: int = DEFAULT_SCRAM_ITERATIONS) -> None:
    """Replace an account's password (hash and SCRAM secrets); NotFound when there is none.

    Its web console sessions end: whoever logged in with the old password is out. The
    caller announces the change after commit (postroom.queue.authevents) so that every
    process forgets its cached logins of the account.
    """
    _check_password(password)
    scram_text = _scram_text(password, scram_iterations)
    found = _find(session, address)
    if found is None:
        raise NotFound(f"no user {address}")
    found[0].password_hash = hash_fn(password)
    found[0].scram_secrets = scram_text
    delete_user_web_sessions(session, found[0].id)


def set_quota(session: Session, address: str, quota_bytes: int | None) -> None:
    """Set (or, with None, remove) an account's storage quota; NotFound when there is none."""
    if quota_bytes is not None and quota_bytes < 0:
        raise ValueError("quota must not be negative")
    found = _find(session, address)
    if found is None:
        raise NotFound(f"no user {address}")
    found[0].quota_bytes = quota_bytes


def scram_secrets_for(session: Session, address: str) -> ScramSecrets | None:
    """The SCRAM-SHA-256 secrets of the active account ``address``, or None (unknown,
    inactive, a password set before secrets were kept, or two-factor login on: then the
    main password logs in nowhere but the web console, and app passwords have no SCRAM
    secrets, docs/security.md)."""
    found = _find(session, address)
    if found is None or not found[0].active or found[0].scram_secrets is None \
            or found[0].totp_enabled:
        return None
    try:
        return parse_scram_secrets(found[0].scram_secrets)
    except ValueError:
        # a damaged value must not break logins: the account just cannot use SCRAM
        return None


def get_active_user(session: Session, address: str) -> UserInfo | None:
    """The account with this address when it is active (a SCRAM login's identity), else None."""
    found = _find(session, address)
    return _info(*found) if found and found[0].active else None


def set_user_active(session: Session, address: str, active: bool) -> None:
    """Enable or disable logins and delivery for an account; NotFound when there is none.

    Disabling ends its web console sessions too.
    """
    found = _find(session, address)
    if found is None:
        raise NotFound(f"no user {address}")
    found[0].active = active
    if not active:
        delete_user_web_sessions(session, found[0].id)


@dataclass(frozen=True)
class UserRow:
    """An account as a page of the console's or REST API's user list shows it."""

    id: int
    address: str
    domain: str
    quota_bytes: int | None
    # what its mailboxes hold; None unless asked for (list_users_page ``with_usage``)
    used_bytes: int | None
    active: bool
    is_admin: bool
    created_at: datetime


def list_users_page(session: Session, *, domains: set[str] | None, offset: int, limit: int,
                    search: str | None, with_usage: bool = False) -> tuple[list[UserRow], int]:
    """One page of the accounts, by address, and how many match in all.

    ``domains``: only accounts of these domains (a domain manager's; None: every
    one); ``search``: a substring of the address. Ordered by address (its unique
    index), so a page costs its rows plus one COUNT however many accounts there
    are; ``with_usage`` adds each page row's used bytes (one sum per row).
    """
    check_page(offset, limit)
    conditions: list[ColumnElement[bool]] = []
    if domains is not None:
        conditions.append(User.domain_id.in_(
            select(Domain.id).where(Domain.name.in_(sorted(valid_domains(domains))))))
    found = search_text(search)
    if found is not None:
        conditions.append(User.address.contains(found, autoescape=True))
    total = session.execute(
        select(func.count()).select_from(User).where(*conditions)).scalar_one()
    page = (select(User.id, User.address, User.domain_id, User.quota_bytes, User.active,
                   User.is_admin, User.created_at)
            .where(*conditions).order_by(User.address).offset(offset).limit(limit).subquery())
    used = (select(func.coalesce(func.sum(Message.size), 0)).select_from(MailboxEntry)
            .join(Mailbox, Mailbox.id == MailboxEntry.mailbox_id)
            .join(Message, Message.id == MailboxEntry.message_id)
            .where(Mailbox.user_id == page.c.id).scalar_subquery()) if with_usage else None
    columns = [page.c.id, page.c.address, Domain.name, page.c.quota_bytes, page.c.active,
               page.c.is_admin, page.c.created_at]
    query = select(*columns, used) if used is not None else select(*columns)
    rows = session.execute(query.join(Domain, Domain.id == page.c.domain_id)
                           .order_by(page.c.address))
    return ([UserRow(id=r[0], address=r[1], domain=r[2], quota_bytes=r[3], active=r[4],
                     is_admin=r[5], created_at=r[6],
                     used_bytes=int(r[7]) if used is not None else None) for r in rows],
            int(total))


def remove_user(session: Session, address: str) -> None:
    """Remove an account with its mailboxes (blobs stay until no one refers to them)."""
    found = _find(session, address)
    if found is None:
        raise NotFound(f"no user {address}")
    session.execute(delete(User).where(User.id == found[0].id))


def authenticate(session: Session, address: str, password: str, *,
                 hash_fn: HashFn = hash_password) -> UserInfo | None:
    """The active account when its main ``password`` is right, else None (unknown, inactive,
    wrong). The web console's first factor; the mail protocols log in through
    :func:`postroom.store.apppasswords.authenticate` (app passwords, two-factor accounts).

    A hash made with old parameters (or bcrypt, or one imported from Dovecot)
    is replaced by a current one on a successful login, inside the caller's
    transaction; an account without SCRAM secrets (an imported one) gets them then.
    """
    found = _find(session, address)
    if found is None:
        verify_password(password, _dummy_hash())
        return None
    row, domain = found
    if not check_main_password(row, password, hash_fn=hash_fn):
        return None
    return _info(row, domain)


def check_main_password(row: User, password: str, *, hash_fn: HashFn = hash_password) -> bool:
    """True when ``password`` is the active account's main password (one hash check).

    A hash made with old parameters (or an imported one) is replaced by a current
    one inside the caller's transaction, with the SCRAM secrets it lacked."""
    if not verify_password(password, row.password_hash) or not row.active:
        return False
    if needs_rehash(row.password_hash):
        row.password_hash = hash_fn(password)
        if row.scram_secrets is None:
            row.scram_secrets = _scram_text(password, DEFAULT_SCRAM_ITERATIONS)
    return True


@dataclass(frozen=True)
class ImportedUser:
    """What :func:`import_user` did: ``created``, ``hash_updated`` or ``kept``."""

    info: UserInfo
    outcome: str


def import_user(session: Session, address: str, stored_hash: str, *,
                hash_fn: HashFn = hash_password) -> ImportedUser:
    """Add (or refresh) an account moved in from another server, keeping its password hash.

    ``stored_hash`` is the old server's value with its scheme prefix
    (``{SHA512-CRYPT}$6$...``, see :mod:`postroom.auth.dovecotpw`); it is kept
    as it is and replaced by ours at the first successful login. A plaintext
    entry (``{PLAIN}...``) is hashed with ours right away. No password-strength
    check applies: the password was chosen elsewhere and is not known here.

    A rerun (a cutover imports twice) refreshes the hash of an account that
    still has an imported one (its password may have changed on the old
    server meanwhile) and leaves alone one that has logged in here since.
    """
    scheme = split_scheme(stored_hash)
    if scheme is None:
        raise ValueError("the hash has no {SCHEME} prefix")
    value = hash_fn(scheme[2]) if is_plaintext(stored_hash) else stored_hash
    found = _find(session, address)
    if found is not None:
        row, domain = found
        if row.password_hash != value and split_scheme(row.password_hash) is not None:
            row.password_hash = value
            return ImportedUser(_info(row, domain), "hash_updated")
        return ImportedUser(_info(row, domain), "kept")
    localpart, domain = split_address(address)
    row = _create_account(session, localpart, domain, password_hash=value, scram_secrets=None)
    return ImportedUser(_info(row, domain), "created")
