"""Certificates by ACME: account key, issued certificates, HTTP-01 answers, the renewer lock.

Private keys (the account's, each certificate's) are stored sealed with the
keyring's current key when one is configured (POSTROOM_SECRET_KEY_FILE), as DKIM
keys are; the readers open them with their keyring. One renewer at a time across
replicas: :func:`renewer_lock` holds a PostgreSQL session advisory lock on a
connection of its own for as long as an issuance runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from postroom.secretbox import Keyring
from postroom.store.models import acme_account, acme_challenges, tls_certificates

# bound into every seal, so a sealed key cannot be moved to another column
ACME_ACCOUNT_KEY = "acme_account.key_pem"
TLS_PRIVATE_KEY = "tls_certificates.key_pem"
# the certificate every service loads (one name for now: the host and every domain's names)
DEFAULT_CERTIFICATE = "default"
# pg_try_advisory_lock key of the renewer: "ACME" in ASCII, fixed so every replica agrees
RENEWER_LOCK_KEY = 0x41434D45
# TLS-ALPN-01 answers share the table, keyed by this prefix and the name (":" is never in an
# HTTP-01 token, so the HTTP route cannot serve them)
ALPN_PREFIX = "tls-alpn-01:"
# the longest an HTTP-01 answer is kept (an order's validation takes seconds)
CHALLENGE_TTL = timedelta(hours=1)


@dataclass(frozen=True)
class AcmeAccount:
    directory: str
    key_pem: str       # opened
    uri: str | None


@dataclass(frozen=True)
class Certificate:
    name: str
    cert_pem: str
    key_pem: str       # opened
    not_after: datetime
    issued_at: datetime
    names: tuple[str, ...]


@dataclass(frozen=True)
class CertificateInfo:
    """A certificate without its key (what `postroom acme status` shows)."""

    name: str
    not_after: datetime
    issued_at: datetime
    names: tuple[str, ...]


def _seal(keyring: Keyring | None, pem: str, purpose: str) -> str:
    return keyring.seal_if_possible(pem, purpose) if keyring is not None else pem


def _open(keyring: Keyring | None, stored: str, purpose: str) -> str:
    return (keyring or Keyring()).open(stored, purpose)


def get_account(session: Session, directory: str, *,
                keyring: Keyring | None = None) -> AcmeAccount | None:
    """The account kept for ``directory``, its key opened; None when there is none yet."""
    row = session.execute(select(acme_account.c.key_pem, acme_account.c.uri)
                          .where(acme_account.c.directory == directory)).first()
    if row is None:
        return None
    return AcmeAccount(directory, _open(keyring, row.key_pem, ACME_ACCOUNT_KEY), row.uri)


def save_account(session: Session, directory: str, key_pem: str, uri: str | None, *,
                 keyring: Keyring | None = None) -> AcmeAccount:
    """Keep the account of ``directory`` (the first one written wins: replicas agree on it)."""
    stored = _seal(keyring, key_pem, ACME_ACCOUNT_KEY)
    session.execute(insert(acme_account).values(directory=directory, key_pem=stored, uri=uri)
                    .on_conflict_do_nothing(index_elements=["directory"]))
    if uri is not None:
        session.execute(acme_account.update().where(acme_account.c.directory == directory)
                        .values(uri=uri))
    found = get_account(session, directory, keyring=keyring)
    assert found is not None
    return found


def put_challenge(session: Session, token: str, key_authorization: str, *,
                  ttl: timedelta = CHALLENGE_TTL) -> None:
    """Publish an HTTP-01 answer (the web service serves it at /.well-known/acme-challenge/)."""
    expires = datetime.now(UTC) + ttl
    session.execute(insert(acme_challenges).values(
        token=token, key_authorization=key_authorization, expires_at=expires)
        .on_conflict_do_update(index_elements=["token"], set_={
            "key_authorization": key_authorization, "expires_at": expires}))


def put_alpn_challenge(session: Session, name: str, key_authorization: str, *,
                       ttl: timedelta = CHALLENGE_TTL) -> None:
    """Publish a TLS-ALPN-01 answer for ``name`` (the web's TLS listener presents it)."""
    put_challenge(session, ALPN_PREFIX + name, key_authorization, ttl=ttl)


def alpn_challenges(session: Session) -> dict[str, str]:
    """Every unexpired TLS-ALPN-01 answer: name -> key authorization."""
    rows = session.execute(
        select(acme_challenges.c.token, acme_challenges.c.key_authorization)
        .where(acme_challenges.c.token.startswith(ALPN_PREFIX, autoescape=True),
               acme_challenges.c.expires_at > datetime.now(UTC)))
    return {token[len(ALPN_PREFIX):]: answer for token, answer in rows}


def challenge_answer(session: Session, token: str) -> str | None:
    """The key authorization for ``token``, None when unknown or expired."""
    return session.execute(
        select(acme_challenges.c.key_authorization)
        .where(acme_challenges.c.token == token,
               acme_challenges.c.expires_at > datetime.now(UTC))).scalar_one_or_none()


def delete_challenges(session: Session, tokens: Sequence[str] | None = None) -> int:
    """Remove these answers (an order is done), or every expired one with None."""
    stmt = delete(acme_challenges)
    if tokens is None:
        stmt = stmt.where(acme_challenges.c.expires_at <= datetime.now(UTC))
    else:
        stmt = stmt.where(acme_challenges.c.token.in_(list(tokens)))
    return session.execute(stmt).rowcount or 0  # type: ignore[attr-defined]


def save_certificate(session: Session, name: str, cert_pem: str, key_pem: str,
                     not_after: datetime, names: Sequence[str], *,
                     keyring: Keyring | None = None) -> None:
    """Store (or replace) the certificate ``name``; every service picks it up on its next poll."""
    values = {"cert_pem": cert_pem, "key_pem": _seal(keyring, key_pem, TLS_PRIVATE_KEY),
              "not_after": not_after, "issued_at": datetime.now(UTC), "names": list(names)}
    session.execute(insert(tls_certificates).values(name=name, **values)
                    .on_conflict_do_update(index_elements=["name"], set_=values))


def certificate_info(session: Session,
                     name: str = DEFAULT_CERTIFICATE) -> CertificateInfo | None:
    """When the certificate ``name`` was issued, expires and what it covers (no key)."""
    row = session.execute(select(tls_certificates.c.not_after, tls_certificates.c.issued_at,
                                 tls_certificates.c.names)
                          .where(tls_certificates.c.name == name)).first()
    if row is None:
        return None
    return CertificateInfo(name, row.not_after, row.issued_at, tuple(row.names))


def get_certificate(session: Session, name: str = DEFAULT_CERTIFICATE, *,
                    keyring: Keyring | None = None,
                    newer_than: datetime | None = None) -> Certificate | None:
    """The certificate ``name`` with its key opened; None when there is none, or none issued
    after ``newer_than`` (a service's poll then reads no key)."""
    stmt = select(tls_certificates).where(tls_certificates.c.name == name)
    if newer_than is not None:
        stmt = stmt.where(tls_certificates.c.issued_at > newer_than)
    row = session.execute(stmt).first()
    if row is None:
        return None
    return Certificate(name, row.cert_pem, _open(keyring, row.key_pem, TLS_PRIVATE_KEY),
                       row.not_after, row.issued_at, tuple(row.names))


@contextmanager
def renewer_lock(url: str) -> Iterator[bool]:
    """Whether this process is the one renewer now (True: hold it until the block ends).

    A session advisory lock on a connection of its own (not the pool's: the issuance
    itself runs store work meanwhile); it ends with the connection, so a renewer that
    dies frees it.
    """
    from postroom.store.db import make_engine

    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                    {"k": RENEWER_LOCK_KEY}).scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": RENEWER_LOCK_KEY})
                    conn.commit()
    finally:
        engine.dispose()
