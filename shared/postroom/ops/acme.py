"""Certificates by ACME (RFC 8555): register, order, answer HTTP-01, finalize, store; renew ahead.

Blocking (the `acme` package speaks HTTPS through requests): the CLI calls
:meth:`Issuer.ensure` directly, the web service's renewer in a thread. One
renewer at a time across replicas: :func:`postroom.store.acme.renewer_lock`. The
HTTP-01 answers go to the database, from which every web replica serves them at
``/.well-known/acme-challenge/{token}``, so the CA may reach any of them. The new
certificate and its fresh key go to the database as well; every service takes
them from there (postroom.net.certsync) and reloads.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from postroom.config import Settings
from postroom.logs import get_logger
from postroom.metrics import Metrics
from postroom.secretbox import Keyring

log = get_logger("acme")

# the web replicas load TLS-ALPN-01 answers every second: the CA is asked to look after this
ALPN_SETTLE = 2.0
# the order is given this long to validate and be finalized
ORDER_TIMEOUT = dt.timedelta(seconds=120)
USER_AGENT = "postroom-acme"


def wanted_names(hostname: str, domains: Iterable[str]) -> list[str]:
    """The names the certificate covers: the mail host, then mta-sts. and autoconfig. of each
    domain (sorted, no duplicates)."""
    names = [hostname.lower().rstrip(".")]
    for domain in sorted({d.lower().rstrip(".") for d in domains}):
        for name in (f"mta-sts.{domain}", f"autoconfig.{domain}"):
            if name not in names:
                names.append(name)
    return names


def expiry_gauge(m: Metrics) -> Any:
    return m.gauge("tls_certificate_expiry_timestamp_seconds",
                   "When the certificate by ACME expires (Unix time); 0: none issued yet.")


def issuances_total(m: Metrics) -> Any:
    return m.counter("acme_issuances", "ACME checks by outcome: issued, current (nothing to "
                     "do), busy (another replica renews), failed.", ["outcome"])


@dataclass(frozen=True)
class Outcome:
    outcome: str                 # issued | current | busy | failed
    names: tuple[str, ...] = ()
    not_after: dt.datetime | None = None
    error: str | None = None


class AcmeError(Exception):
    """The CA refused or an exchange failed; the message is for the operator."""


class Issuer:
    """Issues and renews the certificate of POSTROOM_HOSTNAME and the domains' web names."""

    def __init__(self, database: Any, settings: Settings, *, keyring: Keyring | None = None,
                 metrics: Metrics | None = None) -> None:
        self.database = database
        self.settings = settings
        self.keyring = keyring
        self.metrics = metrics
        if metrics is not None:
            issuances_total(metrics)
            expiry_gauge(metrics)

    # --- what callers use

    def names(self) -> list[str]:
        from postroom.store import domains

        found = self.database.run_sync(domains.list_domains)
        return wanted_names(self.settings.hostname, (d.name for d in found))

    def due(self, now: dt.datetime | None = None) -> tuple[bool, list[str]]:
        """Whether the certificate must be (re)issued now, and the names it must cover."""
        from postroom.store import acme

        now = now or dt.datetime.now(dt.UTC)
        names = self.names()
        info = self.database.run_sync(acme.certificate_info)
        self._gauge(info.not_after if info else None)
        if info is None or not set(names) <= set(info.names):
            return True, names
        left = (info.not_after - now).total_seconds()
        return left < self.settings.acme_renew_before, names

    def ensure(self, *, force: bool = False) -> Outcome:
        """Issue when due (or ``force``), as the one renewer; never raises for the CA's sake."""
        from postroom.store import acme

        url = self.settings.database_url
        assert url is not None
        with acme.renewer_lock(url) as mine:
            if not mine:
                return self._count(Outcome("busy"))
            try:
                due, names = self.due()
                if not due and not force:
                    info = self.database.run_sync(acme.certificate_info)
                    return self._count(Outcome("current", info.names, info.not_after))
                return self._count(self._issue(names))
            except Exception as exc:  # noqa: BLE001 -- one log line, retried at the next check
                message = _describe(exc)
                log.error("acme issuance failed", error=message,
                          directory=self.settings.acme_directory)
                return self._count(Outcome("failed", error=message))

    # --- the protocol

    def _client(self) -> Any:
        import josepy as jose
        from acme import client, errors, messages

        from postroom.store import acme

        directory = self.settings.acme_directory
        account = self.database.run_sync(acme.get_account, directory, keyring=self.keyring)
        if account is None:
            key_pem = rsa.generate_private_key(65537, 2048).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()).decode()
            # the first replica's key wins (a racing one reads it back)
            account = self.database.run_sync(acme.save_account, directory, key_pem, None,
                                             keyring=self.keyring)
        key = jose.JWKRSA(key=serialization.load_pem_private_key(account.key_pem.encode(),
                                                                 password=None))
        verify: Any = self.settings.acme_ca_file or True
        net = client.ClientNetwork(key, alg=jose.RS256, verify_ssl=verify,
                                   user_agent=USER_AGENT)
        acme_client = client.ClientV2(client.ClientV2.get_directory(directory, net), net)
        registration = messages.NewRegistration.from_data(
            email=self.settings.acme_email or None, terms_of_service_agreed=True)
        try:
            regr = acme_client.new_account(registration)
            uri = regr.uri
        except errors.ConflictError as exc:
            # the key has an account already (the usual case after the first issuance)
            uri = exc.location
            net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        if uri != account.uri:
            self.database.run_sync(acme.save_account, directory, account.key_pem, uri,
                                   keyring=self.keyring)
            log.info("acme account registered", directory=directory, account=uri)
        return acme_client

    def _issue(self, names: Sequence[str]) -> Outcome:
        from acme import crypto_util

        from postroom.store import acme

        started = time.monotonic()
        acme_client = self._client()
        key = ec.generate_private_key(ec.SECP256R1())  # a fresh key for every certificate
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        order = acme_client.new_order(crypto_util.make_csr(key_pem, list(names)))
        tokens: list[str] = []
        answers: list[tuple[Any, Any]] = []
        wanted = self.settings.acme_challenge
        try:
            for authz in order.authorizations:
                if authz.body.status.name == "valid":
                    continue  # validated recently for this account: nothing to answer
                name = authz.body.identifier.value
                challenge = next((c for c in authz.body.challenges
                                  if _challenge_type(c) == wanted), None)
                if challenge is None:
                    raise AcmeError(f"the CA offers no {wanted} challenge for {name}")
                token = _token(challenge)
                key_authorization = f"{token}.{_thumbprint(acme_client.net.key)}"
                if wanted == "http-01":
                    self.database.run_sync(acme.put_challenge, token, key_authorization)
                    tokens.append(token)
                else:
                    self.database.run_sync(acme.put_alpn_challenge, name, key_authorization)
                    tokens.append(acme.ALPN_PREFIX + name)
                answers.append((challenge, _empty_response()))
            if wanted == "tls-alpn-01" and answers:
                # every web replica takes new TLS-ALPN-01 answers within a second
                time.sleep(ALPN_SETTLE)
            # every answer is published before the CA is told to look at any of them
            for challenge, response in answers:
                acme_client.answer_challenge(challenge, response)
            deadline = dt.datetime.now() + ORDER_TIMEOUT
            order = acme_client.poll_and_finalize(order, deadline)
        finally:
            if tokens:
                self.database.run_sync(acme.delete_challenges, tokens)
        fullchain = order.fullchain_pem
        leaf = x509.load_pem_x509_certificates(fullchain.encode())[0]
        not_after = leaf.not_valid_after_utc
        self.database.run_sync(acme.save_certificate, acme.DEFAULT_CERTIFICATE, fullchain,
                               key_pem.decode(), not_after, list(names), keyring=self.keyring)
        self._gauge(not_after)
        log.info("acme certificate issued", names=list(names), not_after=not_after.isoformat(),
                 serial=format(leaf.serial_number, "x"),
                 seconds=round(time.monotonic() - started, 2))
        return Outcome("issued", tuple(names), not_after)

    # --- bookkeeping

    def _count(self, outcome: Outcome) -> Outcome:
        if self.metrics is not None:
            issuances_total(self.metrics).labels(outcome=outcome.outcome).inc()
        return outcome

    def _gauge(self, not_after: dt.datetime | None) -> None:
        if self.metrics is not None:
            expiry_gauge(self.metrics).set(not_after.timestamp() if not_after else 0)


def _challenge_type(challenge: Any) -> str | None:
    chall = challenge.chall
    jobj = getattr(chall, "jobj", None)
    if isinstance(jobj, dict):  # a type the acme package does not model (tls-alpn-01 now)
        return str(jobj.get("type")) if jobj.get("type") else None
    typ = getattr(type(chall), "typ", None)
    return typ if isinstance(typ, str) else None


def _token(challenge: Any) -> str:
    chall = challenge.chall
    jobj = getattr(chall, "jobj", None)
    if isinstance(jobj, dict):
        return str(jobj["token"])
    return str(chall.encode("token"))


def _thumbprint(key: Any) -> str:
    """The account key's JWK thumbprint (RFC 7638), as key authorizations carry it."""
    import josepy as jose
    from cryptography.hazmat.primitives import hashes

    return str(jose.b64encode(key.public_key().thumbprint(hash_function=hashes.SHA256))
               .decode())


_EMPTY_RESPONSE: list[Any] = []


def _empty_response() -> Any:
    """The ``{}`` RFC 8555 section 7.5.1 asks a client to POST to a challenge."""
    if not _EMPTY_RESPONSE:
        from acme import challenges

        class EmptyResponse(challenges.ChallengeResponse):
            typ = "empty"  # never sent: ChallengeResponse drops its type field

            def __bool__(self) -> bool:
                # a falsy payload would be sent as POST-as-GET (empty), which answers nothing
                return True

        _EMPTY_RESPONSE.append(EmptyResponse)
    return _EMPTY_RESPONSE[0]()


def _describe(exc: BaseException) -> str:
    """One line for the operator: the CA's problem document, or the exception."""
    from acme import errors, messages

    if isinstance(exc, errors.ValidationError):
        problems = []
        for authz in exc.failed_authzrs:
            for challenge in authz.body.challenges:
                if challenge.error is not None:
                    problems.append(f"{authz.body.identifier.value}: {challenge.error}")
        return "validation failed: " + "; ".join(problems)[:500]
    if isinstance(exc, messages.Error):
        return f"the CA refused: {exc}"[:500]
    return f"{type(exc).__name__}: {exc}"[:500]
