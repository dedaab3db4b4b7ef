"""Store questions the MSA asks, each run in one `db` transaction and returning plain data.

An account owns an address when mail to it reaches the account: its own
address, an alias or plus-address of it, or a catch-all of a domain that
points to it (``aliases.resolve_address``), as Postfix's
``reject_sender_login_mismatch`` with a virtual-alias login map does.

The questions asked for every message (RCPT, the signing keys, the spool
commit) are one plain SQL statement each in ``postroom.store``, as
docs/decisions/0005 does for the mta: the ORM's statement compilation and
unit of work were most of the msa's CPU under load. An account's own address needs no SQL at all
(:func:`owns_trivially`), so MAIL FROM with it skips the `db` pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from postroom.auth.sasl import ScramSecrets
from postroom.store import aliases, dkim, spool, users
from postroom.store.addresses import normalise_address, split_address
from postroom.store.db import StoreSession
from postroom.store.dkim import SigningKey
from postroom.store.errors import InvalidAddress

# RCPT verdicts
REMOTE = "remote"
LOCAL = "local"
UNKNOWN = "unknown"
INVALID = "invalid"


def owns_trivially(own_address: str, address: str) -> bool:
    """True when ``address`` is the account's own address (no store question needed)."""
    try:
        return normalise_address(address) == own_address
    except InvalidAddress:
        return False


def _owns(session: StoreSession, user_id: int, own_address: str, address: str) -> bool:
    try:
        normal = normalise_address(address)
    except InvalidAddress:
        return False
    if normal == own_address:
        return True
    return any(t.user_id == user_id for t in aliases.resolve_address(session, normal))


def owns_address(session: StoreSession, user_id: int, own_address: str, address: str) -> bool:
    """Whether the account ``user_id`` (whose address is ``own_address``) owns ``address``."""
    return _owns(session, user_id, own_address, address)


def not_owned(session: StoreSession, user_id: int, own_address: str,
              addresses: Iterable[str]) -> list[str]:
    """Those of ``addresses`` the account does not own (empty: all are its own)."""
    return [a for a in addresses if not _owns(session, user_id, own_address, a)]


def classify_recipient(session: StoreSession, address: str) -> str:
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


def scram_secrets(session: StoreSession, username: str) -> ScramSecrets | None:
    """The stored SCRAM-SHA-256 secrets of the active account ``username``, or None."""
    return users.scram_secrets_for(session, username)


def scram_login(session: StoreSession, username: str) -> users.UserInfo | None:
    """The identity of a SCRAM exchange the mechanism verified: the active account, or None."""
    return users.get_active_user(session, username)


def signing_keys(session: StoreSession, domain: str) -> list[SigningKey]:
    """The active DKIM keys of ``domain`` (none when it is not ours or has no keys)."""
    return dkim.active_keys(session, domain)


@dataclass(frozen=True)
class Spooled:
    """What the spool commit returns: the queue id and the recipient row ids to enqueue."""

    queue_id: str
    recipient_ids: tuple[int, ...]
    # each recipient's stream, in recipient_ids' order (empty: all on `outbound`)
    streams: tuple[str, ...] = ()


def spool_submission(session: StoreSession, *, queue_id: str, mail_from: str,
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
    return Spooled(queue_id, tuple(ids), tuple(r.stream for r in recipients))


def spool_submissions(session: StoreSession, members: Sequence[dict[str, Any]]) -> list[Spooled]:
    """:func:`spool_submission` for a group commit's members, in one statement for them all."""
    done = spool.create_spool_many(
        session, [{"kind": "submission", **kwargs} for kwargs in members])
    # each member's ids come back in its recipients' order (spool.create_spool_many)
    return [Spooled(queue_id, tuple(ids), tuple(r.stream for r in kwargs["recipients"]))
            for (queue_id, ids), kwargs in zip(done, members, strict=True)]
