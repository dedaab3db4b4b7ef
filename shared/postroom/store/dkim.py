"""DKIM signing keys of local domains: generate, add, list, encrypt at rest, and their
lifecycle: pending -> active -> retired (docs/msa.md, "DKIM key lifecycle").

The private key column holds either a PEM (rows written without
POSTROOM_SECRET_KEY_FILE, and those from before encryption) or a
:mod:`postroom.secretbox` envelope; readers open it with their Keyring.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, aliased

from postroom.secretbox import DKIM_PRIVATE_KEY, Keyring, SecretError, is_sealed, sealed_with
from postroom.store.addresses import normalise_domain
from postroom.store.common import domain_id, insert_unique
from postroom.store.errors import AlreadyExists, InvalidAddress, NotFound
from postroom.store.models import DKIM_ALGORITHMS, DkimKey, Domain

RSA_BITS = 2048


@dataclass(frozen=True)
class DkimKeyInfo:
    id: int
    domain: str
    selector: str
    algorithm: str
    # as stored: a PEM, or an `enc:v1:` envelope (Keyring.open gives the PEM)
    private_key: str
    public_key_b64: str
    active: bool
    created_at: datetime
    pending: bool = False
    retired_at: datetime | None = None
    # the selector of the key this one replaces (made by `dkim rotate`)
    replaces: str | None = None

    @property
    def state(self) -> str:
        """``pending`` (never signs), ``active`` (signs) or ``retired``."""
        return "active" if self.active else "pending" if self.pending else "retired"

    @property
    def encrypted(self) -> bool:
        return is_sealed(self.private_key)

    @property
    def key_id(self) -> str | None:
        """The id of the secret key that sealed the private key (None: plaintext)."""
        return sealed_with(self.private_key)


def _info(row: DkimKey, domain: str, replaces: str | None = None) -> DkimKeyInfo:
    return DkimKeyInfo(id=row.id, domain=domain, selector=row.selector, algorithm=row.algorithm,
                       private_key=row.private_key_pem, public_key_b64=row.public_key_b64,
                       active=row.active, created_at=row.created_at, pending=row.pending,
                       retired_at=row.retired_at, replaces=replaces)


def add_key(session: Session, domain: str, selector: str, algorithm: str, private_key_pem: str,
            public_key_b64: str, *, active: bool = True, pending: bool = False,
            replaces_id: int | None = None, keyring: Keyring | None = None) -> DkimKeyInfo:
    """Store a key for a local domain; AlreadyExists when the selector is taken.

    With a ``keyring`` that has a current key the private key is stored
    encrypted; without one (or with an empty keyring) it is stored as it is.
    A ``pending`` key is never active: it signs once :func:`activate_key` says so.
    """
    if pending:
        active = False
    if algorithm not in DKIM_ALGORITHMS:
        raise ValueError(f"unknown DKIM algorithm {algorithm!r}")
    selector = selector.strip().lower()
    if not selector or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789-." for c in selector):
        raise ValueError(f"invalid DKIM selector {selector!r}")
    name = normalise_domain(domain)
    ident = domain_id(session, name)
    stored = (keyring.seal_if_possible(private_key_pem, DKIM_PRIVATE_KEY) if keyring is not None
              else private_key_pem)

    def insert() -> DkimKey:
        row = DkimKey(domain_id=ident, selector=selector, algorithm=algorithm,
                      private_key_pem=stored, public_key_b64=public_key_b64,
                      active=active, pending=pending, replaces_id=replaces_id)
        session.add(row)
        session.flush()
        return row

    row = insert_unique(session, insert, f"DKIM selector {selector} of {name} already exists")
    session.refresh(row)
    return _info(row, name)


def make_keypair(algorithm: str) -> tuple[str, str]:
    """A new (private key PEM, public key base64 for p=) pair: RSA-2048 or ed25519 (RFC 8463)."""
    if algorithm == "rsa-sha256":
        private_rsa = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        pem = private_rsa.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        # p= of an RSA key is the DER SubjectPublicKeyInfo (RFC 6376 3.6.1)
        public = private_rsa.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    elif algorithm == "ed25519-sha256":
        private_ed = ed25519.Ed25519PrivateKey.generate()
        pem = private_ed.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
        # p= of an ed25519 key is the raw 32-byte public key (RFC 8463 4.2)
        public = private_ed.public_key().public_bytes(serialization.Encoding.Raw,
                                                      serialization.PublicFormat.Raw)
    else:
        raise ValueError(f"unknown DKIM algorithm {algorithm!r}")
    return pem.decode("ascii"), base64.b64encode(public).decode("ascii")


def default_selector(algorithm: str) -> str:
    """Date plus key type, e.g. ``202611r`` / ``202611e``: rotations get new names."""
    return time.strftime("%Y%m", time.gmtime()) + ("e" if algorithm.startswith("ed25519") else "r")


def _free_selector(session: Session, ident: int, algorithm: str) -> str:
    """:func:`default_selector`, or with -2, -3, ... when a key of the month has it."""
    base = default_selector(algorithm)
    taken = set(session.execute(select(DkimKey.selector).where(
        DkimKey.domain_id == ident, DkimKey.selector.startswith(base))).scalars())
    if base not in taken:
        return base
    return next(f"{base}-{n}" for n in range(2, len(taken) + 3) if f"{base}-{n}" not in taken)


def generate_key(session: Session, domain: str, algorithm: str,
                 selector: str | None = None, *, keyring: Keyring | None = None,
                 pending: bool = False, replaces_id: int | None = None) -> DkimKeyInfo:
    """Make and store a new key for a local domain (encrypted with ``keyring``'s key).

    Active at once unless ``pending`` (what `postroom dkim generate` asks: a key
    signs only once its record is seen in DNS, :func:`activate_key`).
    """
    pem, public = make_keypair(algorithm)
    if selector is None:
        selector = _free_selector(session, domain_id(session, normalise_domain(domain)),
                                  algorithm)
    return add_key(session, domain, selector, algorithm, pem, public, keyring=keyring,
                   pending=pending, replaces_id=replaces_id)


def list_keys(session: Session, domain: str | None = None, *,
              active_only: bool = False) -> list[DkimKeyInfo]:
    """Keys of one domain (or all), oldest first; ``active_only`` for signing."""
    replaced = aliased(DkimKey)
    query = (select(DkimKey, Domain.name, replaced.selector)
             .join(Domain, Domain.id == DkimKey.domain_id)
             .outerjoin(replaced, replaced.id == DkimKey.replaces_id))
    if domain is not None:
        query = query.where(Domain.name == normalise_domain(domain))
    if active_only:
        query = query.where(DkimKey.active.is_(True))
    rows = session.execute(query.order_by(Domain.name, DkimKey.created_at, DkimKey.id))
    return [_info(r[0], r[1], r[2]) for r in rows]


def _row(session: Session, domain: str, selector: str) -> tuple[DkimKey, str]:
    """The key row, locked against a concurrent lifecycle change; NotFound."""
    name = normalise_domain(domain)
    ident = domain_id(session, name)
    row = session.execute(select(DkimKey).where(
        DkimKey.domain_id == ident, DkimKey.selector == selector.strip().lower())
        .with_for_update()).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no DKIM selector {selector} for {name}")
    return row, name


def activate_key(session: Session, domain: str, selector: str) -> list[str]:
    """Make a key sign (pending or retired -> active); the key it replaces (`dkim rotate`)
    is retired in the same transaction. The selectors retired."""
    row, _name = _row(session, domain, selector)
    row.active, row.pending, row.retired_at = True, False, None
    retired = []
    if row.replaces_id is not None:
        old = session.execute(select(DkimKey).where(DkimKey.id == row.replaces_id)
                              .with_for_update()).scalar_one_or_none()
        if old is not None and old.active:
            old.active, old.pending, old.retired_at = False, False, func.now()
            retired.append(old.selector)
    session.flush()
    return retired


def retire_key(session: Session, domain: str, selector: str) -> None:
    """Stop signing with a key (active or pending -> retired). Its DNS record may stay
    published a while, so that mail it signed still verifies (docs/msa.md)."""
    row, _name = _row(session, domain, selector)
    row.active, row.pending = False, False
    if row.retired_at is None:
        row.retired_at = func.now()
    session.flush()


def rotate_keys(session: Session, domain: str, *, keyring: Keyring | None = None,
                algorithms: list[str] | None = None) -> list[DkimKeyInfo]:
    """`postroom dkim rotate`: one new pending key per active key (of ``algorithms``, or
    every algorithm), each replacing it; the old keys keep signing until the new become
    active (:func:`activate_key`). NotFound without an active key; AlreadyExists when
    a key already has a pending successor."""
    name = normalise_domain(domain)
    ident = domain_id(session, name)
    current = [k for k in list_keys(session, name, active_only=True)
               if algorithms is None or k.algorithm in algorithms]
    if not current:
        raise NotFound(f"{name} has no active DKIM key to rotate: `postroom dkim generate "
                       f"{name}` makes the first")
    waiting = set(session.execute(select(DkimKey.replaces_id).where(
        DkimKey.domain_id == ident, DkimKey.pending.is_(True))).scalars())
    for key in current:
        if key.id in waiting:
            raise AlreadyExists(f"DKIM key {key.selector} of {name} already has a pending "
                                "successor: publish its record and run `postroom dns "
                                f"{name} --check`, or retire it")
    return [generate_key(session, name, key.algorithm, keyring=keyring, pending=True,
                         replaces_id=key.id) for key in current]


@dataclass(frozen=True)
class SigningKey:
    """One active DKIM key of a domain, as plain data for the signing thread."""

    domain: str
    selector: str
    algorithm: str
    # as stored: a PEM or a secretbox envelope; the signing thread opens it (cached)
    private_key: str


def active_keys(session: Session, domain: str) -> list[SigningKey]:
    """The keys the MSA signs a domain's mail with (one signature per key), oldest first.

    None when ``domain`` is not ours, has no active key or is not a domain name.
    Asked for every submitted message: one plain statement (docs/decisions/0005),
    reading only the columns signing needs (the msa's database role may read no more).
    """
    try:
        normal = normalise_domain(domain)
    except (InvalidAddress, ValueError):
        return []
    rows = session.execute(_ACTIVE_KEYS, {"domain": normal})
    return [SigningKey(r[0], r[1], r[2], r[3]) for r in rows]


_ACTIVE_KEYS = text(
    "SELECT d.name, k.selector, k.algorithm, k.private_key_pem FROM dkim_keys k"
    " JOIN domains d ON d.id = k.domain_id WHERE d.name = :domain AND k.active"
    " ORDER BY k.created_at, k.id")


def set_key_active(session: Session, domain: str, selector: str, active: bool) -> None:
    """Reinstate (:func:`activate_key`) or retire (:func:`retire_key`) a key."""
    if active:
        activate_key(session, domain, selector)
    else:
        retire_key(session, domain, selector)


@dataclass(frozen=True)
class ResealReport:
    """What :func:`encrypt_keys` did: keys newly encrypted, re-encrypted, already current."""

    encrypted: list[str]
    reencrypted: list[str]
    current: int


def encrypt_keys(session: Session, keyring: Keyring, *, dry_run: bool = False) -> ResealReport:
    """Encrypt every plaintext private key, and re-encrypt those sealed with an older key,
    with ``keyring``'s current key (``postroom dkim encrypt-keys``).

    Every row is opened before any is written, so a key that cannot be opened
    (SecretError: sealed with a key the keyring lacks, or damaged) changes
    nothing. The rows are locked against a concurrent run.
    """
    if not keyring.can_seal:
        keyring.seal("", DKIM_PRIVATE_KEY)  # raises SecretKeyMissing, naming the setting
    rows = session.execute(
        select(DkimKey.id, Domain.name, DkimKey.selector, DkimKey.private_key_pem)
        .join(Domain, Domain.id == DkimKey.domain_id)
        .order_by(Domain.name, DkimKey.selector).with_for_update(of=DkimKey)).all()
    changes: list[tuple[int, str, bool]] = []
    current = 0
    for ident, domain, selector, stored in rows:
        if not keyring.needs_reseal(stored):
            current += 1
            continue
        try:
            pem = keyring.open(stored, DKIM_PRIVATE_KEY)
        except SecretError as exc:
            raise type(exc)(f"DKIM key {selector} of {domain}: {exc}") from None
        changes.append((ident, f"{domain}/{selector}", is_sealed(stored)))
        if not dry_run:
            session.execute(update(DkimKey).where(DkimKey.id == ident).values(
                private_key_pem=keyring.seal(pem, DKIM_PRIVATE_KEY)))
    return ResealReport(encrypted=[name for _i, name, was in changes if not was],
                        reencrypted=[name for _i, name, was in changes if was], current=current)
