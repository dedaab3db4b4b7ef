"""Two-factor login (TOTP) of accounts: turning it on and off, and checking a second factor.

The one owner of the SQL on ``users.totp_secret``, ``users.totp_enabled``,
``users.totp_last_step`` and ``totp_recovery_codes`` (migration 0016); the
codes themselves are :mod:`postroom.auth.totp`'s. Turning it on takes two
steps, as authenticator apps expect: :func:`begin_totp` keeps a new secret
(pending: nothing changes yet) and returns it with its ``otpauth://`` URI;
:func:`enable_totp` checks a first code from the app and only then turns it
on and returns ten recovery codes, shown once. The secret is sealed with the
:class:`~postroom.secretbox.Keyring` the caller passes when it has a current
key (POSTROOM_SECRET_KEY_FILE), as DKIM private keys are.

While it is on, the main password logs in to the web console only, followed
by :func:`verify_second_factor`; IMAP, POP3, SMTP submission and ManageSieve
take app passwords only (:mod:`postroom.store.apppasswords`). After enabling
or disabling, the caller announces the change (postroom.queue.authevents) so
that the services' login caches forget the account.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from postroom.auth import totp
from postroom.secretbox import TOTP_SECRET, Keyring
from postroom.store.addresses import login_name
from postroom.store.errors import NotFound
from postroom.store.models import User, totp_recovery_codes


class InvalidCode(ValueError):
    """The code from the authenticator app is not right (or no set-up was begun)."""


@dataclass(frozen=True)
class TotpStatus:
    enabled: bool
    pending: bool            # begun (a secret is kept) but not yet confirmed with a code
    recovery_codes_left: int


def _row(session: Session, address: str, *, lock: bool = False) -> User:
    normal = login_name(address)
    query = select(User).where(User.address == (normal or ""))
    if lock:
        query = query.with_for_update()
    found = session.execute(query).scalar_one_or_none() if normal else None
    if found is None:
        raise NotFound(f"no user {address}")
    return found


def _keyring(keyring: Keyring | None) -> Keyring:
    return keyring if keyring is not None else Keyring()


def begin_totp(session: Session, address: str, *, keyring: Keyring | None = None,
               issuer: str = totp.DEFAULT_ISSUER) -> tuple[str, str]:
    """Keep a new pending secret for the account; (secret, otpauth URI) for its app.

    Refused (ValueError) while two-factor login is on: turn it off first.
    """
    row = _row(session, address, lock=True)
    if row.totp_enabled:
        raise ValueError("two-factor login is already on")
    secret = totp.new_secret()
    row.totp_secret = _keyring(keyring).seal_if_possible(secret, TOTP_SECRET)
    row.totp_last_step = None
    return secret, totp.provisioning_uri(secret, row.address, issuer)


def enable_totp(session: Session, address: str, code: str, *,
                keyring: Keyring | None = None, now: float | None = None) -> list[str]:
    """Turn two-factor login on, if ``code`` is right for the pending secret; the ten
    recovery codes (shown only now). InvalidCode otherwise."""
    row = _row(session, address, lock=True)
    if row.totp_enabled:
        raise ValueError("two-factor login is already on")
    if row.totp_secret is None:
        raise InvalidCode("no two-factor set-up was begun")
    secret = _keyring(keyring).open(row.totp_secret, TOTP_SECRET)
    step = totp.matching_step(secret, code, now=now)
    if step is None:
        raise InvalidCode("the code is not right: check the phone's clock and try again")
    row.totp_enabled = True
    row.totp_last_step = step
    return _new_recovery_codes(session, row.id)


def _new_recovery_codes(session: Session, user_id: int) -> list[str]:
    codes = totp.new_recovery_codes()
    session.execute(delete(totp_recovery_codes).where(totp_recovery_codes.c.user_id == user_id))
    session.execute(insert(totp_recovery_codes), [
        {"user_id": user_id, "code_sha256": totp.recovery_code_hash(c)} for c in codes])
    return codes


def regenerate_recovery_codes(session: Session, address: str) -> list[str]:
    """Replace the account's recovery codes with ten new ones (shown only now)."""
    row = _row(session, address, lock=True)
    if not row.totp_enabled:
        raise ValueError("two-factor login is off")
    return _new_recovery_codes(session, row.id)


def disable_totp(session: Session, address: str) -> bool:
    """Turn two-factor login off (and forget a pending set-up); whether it was on."""
    row = _row(session, address, lock=True)
    was = row.totp_enabled
    row.totp_enabled = False
    row.totp_secret = None
    row.totp_last_step = None
    session.execute(delete(totp_recovery_codes).where(totp_recovery_codes.c.user_id == row.id))
    return was


def totp_status(session: Session, address: str) -> TotpStatus:
    """Whether two-factor login is on or pending, and how many recovery codes are unused."""
    row = _row(session, address)
    left = session.execute(
        select(func.count()).select_from(totp_recovery_codes)
        .where(totp_recovery_codes.c.user_id == row.id,
               totp_recovery_codes.c.used_at.is_(None))).scalar_one()
    return TotpStatus(enabled=row.totp_enabled,
                      pending=not row.totp_enabled and row.totp_secret is not None,
                      recovery_codes_left=int(left))


def verify_second_factor(session: Session, user_id: int, code_or_recovery: str, *,
                         keyring: Keyring | None = None, now: float | None = None) -> bool:
    """True when a TOTP code (a step later than the last accepted) or an unused recovery
    code of the account is right; the step is remembered, the recovery code used up.

    False for an account without two-factor login on. The row is locked, so two
    requests racing with one code cannot both pass. Failures are for the caller's
    limiter to count (the web console's login).
    """
    row = session.execute(select(User).where(User.id == user_id).with_for_update()
                          ).scalar_one_or_none()
    if row is None or not row.totp_enabled or row.totp_secret is None or not row.active:
        return False
    if totp.normalise_code(code_or_recovery) is not None:
        secret = _keyring(keyring).open(row.totp_secret, TOTP_SECRET)
        step = totp.matching_step(secret, code_or_recovery, last_step=row.totp_last_step,
                                  now=now)
        if step is None:
            return False
        row.totp_last_step = step
        return True
    digest = totp.recovery_code_hash(code_or_recovery)
    if digest is None:
        return False
    used = session.execute(update(totp_recovery_codes).where(
        totp_recovery_codes.c.user_id == user_id, totp_recovery_codes.c.code_sha256 == digest,
        totp_recovery_codes.c.used_at.is_(None)).values(used_at=func.now()))
    return bool(used.rowcount)  # type: ignore[attr-defined]
