"""With POSTROOM_ACME: keep this process's certificate files at the database's current certificate.

The certificate the web service's renewer issues is stored in PostgreSQL
(``tls_certificates``), which every replica on every host reaches; a shared
volume is not needed (Swarm has none). Each process writes it to its own
POSTROOM_TLS_CERT_FILE / POSTROOM_TLS_KEY_FILE (key first, each by an atomic
rename) and reloads its :class:`~postroom.net.tls.ServerTLS`, the same reload a
changed file or SIGHUP causes. Until a certificate is issued, a self-signed one
stands in so that the listeners can start.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from postroom.logs import get_logger
from postroom.net.tls import ServerTLS, _atomic_write, make_self_signed
from postroom.secretbox import Keyring

log = get_logger("tls")


class CertificateSync:
    """Writes the database's certificate to this process's files when a newer one is there."""

    def __init__(self, database: Any, cert_file: str, key_file: str, *,
                 keyring: Keyring | None = None, hostname: str = "localhost") -> None:
        self.database = database
        self.cert_file = cert_file
        self.key_file = key_file
        self.keyring = keyring
        self.hostname = hostname
        self.tls: ServerTLS | None = None   # reloaded at once when set (else its watcher does)
        self.issued_at: datetime | None = None  # of the certificate the files hold
        self.updates = 0

    def _fetch(self, session: Any) -> Any:
        from postroom.store import acme

        return acme.get_certificate(session, keyring=self.keyring, newer_than=self.issued_at)

    def _write(self, cert: Any) -> bool:
        for path in (self.key_file, self.cert_file):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # key first: a watcher that sees the new certificate must find its key already there
        _atomic_write(Path(self.key_file), cert.key_pem.encode(), 0o600)
        _atomic_write(Path(self.cert_file), cert.cert_pem.encode(), 0o644)
        self.issued_at = cert.issued_at
        self.updates += 1
        log.info("tls certificate from the database written", cert_file=self.cert_file,
                 names=list(cert.names), not_after=cert.not_after.isoformat())
        if self.tls is not None:
            self.tls.reload()
        return True

    def prepare(self) -> None:
        """At start-up (blocking): the database's certificate, else a stand-in if none is there."""
        cert = self.database.run_sync(self._fetch)
        if cert is not None:
            self._write(cert)
        elif not (Path(self.cert_file).exists() and Path(self.key_file).exists()):
            make_self_signed(self.cert_file, self.key_file, self.hostname)
            log.warning("no certificate issued by ACME yet: a self-signed one stands in",
                        cert_file=self.cert_file)

    async def poll(self) -> bool:
        """Fetch a newer certificate (on the reactor; the query in the db pool) and use it."""
        try:
            cert = await self.database.run(self._fetch)
        except Exception as exc:  # noqa: BLE001 -- logged; the next poll tries again
            log.warning("tls certificate poll failed", error=str(exc)[:200])
            return False
        if cert is None:
            return False
        try:
            return self._write(cert)
        except OSError as exc:
            log.error("tls certificate not written", error=str(exc), cert_file=self.cert_file)
            return False
