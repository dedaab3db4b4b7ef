"""DKIM signing keys of local domains: generate, add, list, deactivate."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from postroom.store.addresses import normalise_domain
from postroom.store.common import domain_id, insert_unique
from postroom.store.errors import NotFound
from postroom.store.models import DKIM_ALGORITHMS, DkimKey, Domain

RSA_BITS = 2048


@dataclass(frozen=True)
class DkimKeyInfo:
    id: int
    domain: str
    selector: str
    algorithm: str
    private_key_pem: str
    public_key_b64: str
    active: bool
    created_at: datetime


def _info(row: DkimKey, domain: str) -> DkimKeyInfo:
    return DkimKeyInfo(id=row.id, domain=domain, selector=row.selector, algorithm=row.algorithm,
                       private_key_pem=row.private_key_pem, public_key_b64=row.public_key_b64,
                       active=row.active, created_at=row.created_at)


def add_key(session: Session, domain: str, selector: str, algorithm: str, private_key_pem: str,
            public_key_b64: str, *, active: bool = True) -> DkimKeyInfo:
    """Store a key for a local domain; AlreadyExists when the selector is taken."""
    if algorithm not in DKIM_ALGORITHMS:
        raise ValueError(f"unknown DKIM algorithm {algorithm!r}")
    selector = selector.strip().lower()
    if not selector or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789-." for c in selector):
        raise ValueError(f"invalid DKIM selector {selector!r}")
    name = normalise_domain(domain)
    ident = domain_id(session, name)

    def insert() -> DkimKey:
        row = DkimKey(domain_id=ident, selector=selector, algorithm=algorithm,
                      private_key_pem=private_key_pem, public_key_b64=public_key_b64,
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
                 selector: str | None = None) -> DkimKeyInfo:
    """Make and store a new active key for a local domain."""
    pem, public = make_keypair(algorithm)
    return add_key(session, domain, selector or default_selector(algorithm), algorithm, pem,
                   public)


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


def active_keys(session: Session, domain: str) -> list[DkimKeyInfo]:
    """The keys the MSA signs a domain's mail with (one signature per key)."""
    return list_keys(session, domain, active_only=True)


def set_key_active(session: Session, domain: str, selector: str, active: bool) -> None:
    """Retire (or reinstate) a key; keep its DNS record until signed mail has aged out."""
    ident = domain_id(session, normalise_domain(domain))
    done = session.execute(update(DkimKey).where(DkimKey.domain_id == ident,
                                                 DkimKey.selector == selector.lower())
                           .values(active=active))
    if not getattr(done, "rowcount", 0):
        raise NotFound(f"no DKIM selector {selector} for {domain}")
