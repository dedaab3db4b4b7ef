"""Store questions the MSA asks, each run in one `db` transaction and returning plain data.

An account owns an address when mail to it reaches the account: its own
address, an alias or plus-address of it, or a catch-all of a domain that
points to it (``aliases.resolve_address``), as Postfix's
``reject_sender_login_mismatch`` with a virtual-alias login map does.

The questions asked for every message (RCPT, the signing keys, the spool
commit) are one plain SQL statement each, as docs/decisions/0005 does for
the mta: the ORM's statement compilation and unit of work were most of the
msa's CPU under load. An account's own address needs no SQL at all
(:func:`owns_trivially`), so MAIL FROM with it skips the `db` pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from postroom.auth.sasl import ScramSecrets
from postroom.store import aliases, spool, users
from postroom.store.addresses import normalise_address, normalise_domain, split_address
from postroom.store.errors import InvalidAddress

# RCPT verdicts
REMOTE = "remote"
LOCAL = "local"
UNKNOWN = "unknown"
INVALID = "invalid"


@dataclass(frozen=True)
class SigningKey:
    """One active DKIM key of a domain, as plain data for the signing thread."""

    domain: str
    selector: str
    algorithm: str
    # as stored: a PEM or a secretbox envelope; the signing thread opens it (cached)
    private_key: str


def owns_trivially(own_address: str, address: str) -> bool:
    """True when ``address`` is the account's own address (no store question needed)."""
    try:
        return normalise_address(address) == own_address
    except InvalidAddress:
        return False


def _owns(session: Session, user_id: int, own_address: str, address: str) -> bool:
    try:
        normal = normalise_address(address)
    except InvalidAddress:
        return False
    if normal == own_address:
        return True
    return any(t.user_id == user_id for t in aliases.resolve_address(session, normal))


def owns_address(session: Session, user_id: int, own_address: str, address: str) -> bool:
    """Whether the account ``user_id`` (whose address is ``own_address``) owns ``address``."""
    return _owns(session, user_id, own_address, address)


def not_owned(session: Session, user_id: int, own_address: str,
              addresses: Iterable[str]) -> list[str]:
    """Those of ``addresses`` the account does not own (empty: all are its own)."""
    return [a for a in addresses if not _owns(session, user_id, own_address, a)]


def classify_recipient(session: Session, address: str) -> str:
    """REMOTE, LOCAL (exists here), UNKNOWN (local domain, no such recipient) or INVALID."""
    try:
        local, domain = split_address(address)
    except InvalidAddress:
        return INVALID
    # one statement for an existing account (aliases.recipient_status, as the mta's RCPT)
    status, _address = aliases.recipient_status(session, local, domain)
    if status == "relay":
        return REMOTE
    return LOCAL if status == "ok" else UNKNOWN


def scram_secrets(session: Session, username: str) -> ScramSecrets | None:
    """The stored SCRAM-SHA-256 secrets of the active account ``username``, or None."""
    return users.scram_secrets_for(session, username)


def scram_login(session: Session, username: str) -> users.UserInfo | None:
    """The identity of a SCRAM exchange the mechanism verified: the active account, or None."""
    return users.get_active_user(session, username)


def signing_keys(session: Session, domain: str) -> list[SigningKey]:
    """The active DKIM keys of ``domain`` (none when it is not ours or has no keys)."""
    try:
        normal = normalise_domain(domain)
    except (InvalidAddress, ValueError):
        return []
    rows = session.execute(_ACTIVE_KEYS, {"domain": normal})
    return [SigningKey(r[0], r[1], r[2], r[3]) for r in rows]


# dkim.active_keys as one plain statement, same order (oldest first)
_ACTIVE_KEYS = text(
    "SELECT d.name, k.selector, k.algorithm, k.private_key_pem FROM dkim_keys k"
    " JOIN domains d ON d.id = k.domain_id WHERE d.name = :domain AND k.active"
    " ORDER BY k.created_at, k.id")


@dataclass(frozen=True)
class Spooled:
    """What the spool commit returns: the queue id and the recipient row ids to enqueue."""

    queue_id: str
    recipient_ids: tuple[int, ...]


def spool_submission(session: Session, *, queue_id: str, mail_from: str,
                     recipients: Sequence[spool.NewRecipient], message: bytes,
                     size: int | None, body: str | None, smtputf8: bool, ret: str | None,
                     envid: str | None, peer_ip: str, helo: str | None, auth_user: str,
                     enqueued_at: datetime) -> Spooled:
    """Spool a submitted message (kind ``submission``) and return its recipient ids.

    One statement (``spool.create_spool_ids``): the ids come back from the
    INSERT, the spool is not read again.
    """
    _queue_id, ids = spool.create_spool_ids(
        session, kind="submission", mail_from=mail_from, recipients=recipients,
        message=message, size=size, body=body, smtputf8=smtputf8, ret=ret, envid=envid,
        peer_ip=peer_ip, helo=helo, auth_user=auth_user, queue_id=queue_id,
        enqueued_at=enqueued_at)
    return Spooled(queue_id, tuple(ids))
