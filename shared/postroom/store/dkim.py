"""DKIM signing keys of local domains: generate, add, list, deactivate, encrypt at rest.

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
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from postroom.secretbox import DKIM_PRIVATE_KEY, Keyring, SecretError, is_sealed, sealed_with
from postroom.store.addresses import normalise_domain
from postroom.store.common import domain_id, insert_unique
from postroom.store.errors import InvalidAddress, NotFound
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

    @property
    def encrypted(self) -> bool:
        return is_sealed(self.private_key)

    @property
    def key_id(self) -> str | None:
        """The id of the secret key that sealed the private key (None: plaintext)."""
        return sealed_with(self.private_key)


def _info(row: DkimKey, domain: str) -> DkimKeyInfo:
    return DkimKeyInfo(id=row.id, domain=domain, selector=row.selector, algorithm=row.algorithm,
                       private_key=row.private_key_pem, public_key_b64=row.public_key_b64,
                       active=row.active, created_at=row.created_at)


def add_key(session: Session, domain: str, selector: str, algorithm: str, private_key_pem: str,
            public_key_b64: str, *, active: bool = True,
            keyring: Keyring | None = None) -> DkimKeyInfo:
    """Store a key for a local domain; AlreadyExists when the selector is taken.

    With a ``keyring`` that has a current key the private key is stored
    encrypted; without one (or with an empty keyring) it is stored as it is.
    """
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
                      active=active)
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


def generate_key(session: Session, domain: str, algorithm: str,
                 selector: str | None = None, *, keyring: Keyring | None = None) -> DkimKeyInfo:
    """Make and store a new active key for a local domain (encrypted with ``keyring``'s key)."""
    pem, public = make_keypair(algorithm)
    return add_key(session, domain, selector or default_selector(algorithm), algorithm, pem,
                   public, keyring=keyring)


def list_keys(session: Session, domain: str | None = None, *,
              active_only: bool = False) -> list[DkimKeyInfo]:
    """Keys of one domain (or all), oldest first; ``active_only`` for signing."""
    query = select(DkimKey, Domain.name).join(Domain, Domain.id == DkimKey.domain_id)
    if domain is not None:
        query = query.where(Domain.name == normalise_domain(domain))
    if active_only:
        query = query.where(DkimKey.active.is_(True))
    rows = session.execute(query.order_by(Domain.name, DkimKey.created_at, DkimKey.id))
    return [_info(r[0], r[1]) for r in rows]


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
    """Retire (or reinstate) a key; keep its DNS record until signed mail has aged out."""
    ident = domain_id(session, normalise_domain(domain))
    done = session.execute(update(DkimKey).where(DkimKey.domain_id == ident,
                                                 DkimKey.selector == selector.lower())
                           .values(active=active))
    if not getattr(done, "rowcount", 0):
        raise NotFound(f"no DKIM selector {selector} for {domain}")


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
