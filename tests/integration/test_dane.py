"""DANE (RFC 7672) end to end on loopback: TLSA from the test DNS server, real TLS handshakes.

The test DNS server marks ``two.test`` secure (``dns_server.secure``): its
answers carry the AD bit, as a validating resolver's would, and the relay
trusts it as Postfix does with ``smtp_dns_support_level = dnssec``. The MX
is the test SMTP server of test_smtpclient.py, listening on a random port;
TLSA records are published for ``_<that port>._tcp.mx.two.test`` because the
relay looks them up for the port it dials.

Certificates: a self-signed leaf for DANE-EE (``3 1 1``), and a private CA
with a leaf naming ``mx.two.test`` (served with its chain) for DANE-TA
(``2 0 1``). Nothing is ever sent in clear when DANE applies: the tests check
that the server never saw MAIL FROM.
"""

from __future__ import annotations

import datetime
import hashlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.python.threadpool import ThreadPool

from postroom.net.destinations import DestinationPolicy
from postroom.net.tls import ServerTLS, make_self_signed
from postroom_mta.dane import TLSALookupError, lookup_tlsa, selected
from postroom_mta.routing import TLSSecurity, deliver_to_domain
from postroom_mta.smtpclient import DeliveryResult, Outcome
from tests.integration.test_smtpclient import FAST, RunningServer, ServerConfig
from tests.support.dns import LOOPBACK_NETWORKS
from tests.support.redisdb import in_reactor

MESSAGE = b"From: alice@one.test\r\nTo: bob@two.test\r\nSubject: dane\r\n\r\nhi\r\n"
MX = "mx.two.test"


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
           issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory: Path = tmp_path_factory.mktemp("dane")
    make_self_signed(directory / "ee.pem", directory / "ee.key", MX)
    ee_der = x509.load_pem_x509_certificate((directory / "ee.pem").read_bytes()).public_bytes(
        serialization.Encoding.DER)
    ca_key, leaf_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _issue("Two Test CA", ca_key, "Two Test CA", ca_key, ca=True)
    chains = {}
    for name, subject, key in (("ta", MX, leaf_key), ("ta-other", "other.two.test", other_key)):
        leaf = _issue(subject, key, "Two Test CA", ca_key, ca=False)
        (directory / f"{name}.pem").write_bytes(_pem_cert(leaf) + _pem_cert(ca))
        (directory / f"{name}.key").write_bytes(_pem_key(key))
        chains[name] = ServerTLS(str(directory / f"{name}.pem"), str(directory / f"{name}.key"))
    ca_der = ca.public_bytes(serialization.Encoding.DER)
    return {
        "ee": ServerTLS(str(directory / "ee.pem"), str(directory / "ee.key")),
        "ee_tlsa": (3, 1, 1, hashlib.sha256(selected(ee_der, 1)).hexdigest()),
        "ta": chains["ta"], "ta_other": chains["ta-other"],
        "ta_tlsa": (2, 0, 1, hashlib.sha256(ca_der).hexdigest()),
        "wrong_tlsa": (3, 1, 1, hashlib.sha256(b"not this key").hexdigest()),
    }


@pytest.fixture
def dns_pool() -> Iterator[ThreadPool]:
    pool = ThreadPool(minthreads=1, maxthreads=2, name="test-dane-dns")
    pool.start()
    yield pool
    pool.stop()


@pytest.fixture
def servers(twisted_reactor: Any) -> Iterator[list[RunningServer]]:
    started: list[RunningServer] = []
    yield started
    for server in started:
        server.stop()


def start(servers: list[RunningServer], tls: ServerTLS | None) -> RunningServer:
    server = RunningServer(ServerConfig(tls=tls))
    servers.append(server)
    return server


def publish(dns_server: Any, port: int, tlsa: list[Any] | None, *, secure: bool = True,
            hosts: tuple[str, ...] = (MX,)) -> None:
    dns_server.set_records("two.test", "MX", [(10 * (i + 1), h) for i, h in enumerate(hosts)])
    for host in hosts:
        dns_server.set_records(host, "A", ["127.0.0.1"])
    if tlsa is not None:
        dns_server.set_records(f"_{port}._tcp.{hosts[0]}", "TLSA", tlsa)
    if secure:
        dns_server.secure("two.test")


def deliver(dns_server: Any, pool: ThreadPool, port: int) -> DeliveryResult:
    from twisted.internet import reactor

    resolver = dns_server.resolver(timeout=1.0)
    result: DeliveryResult = in_reactor(
        deliver_to_domain, "two.test", "alice@one.test", ["bob@two.test"], MESSAGE,
        resolver=resolver, port=port, pool=pool, helo_name="one.test", reactor=reactor,
        timeouts=FAST, rng=random.Random(7),
        security=TLSSecurity(resolver, dane_enabled=True),
        destinations=DestinationPolicy.allowing(LOOPBACK_NETWORKS), timeout=30)
    return result


def mail_commands(server: RunningServer) -> list[str]:
    """Every MAIL command any session of ``server`` received (clear or TLS)."""
    return [c for s in server.factory.sessions for c in s.commands if c.upper().startswith("MAIL")]


def test_dane_ee_delivers_over_verified_tls(dns_server, dns_pool, servers, pki):
    mx = start(servers, pki["ee"])
    publish(dns_server, mx.port, [pki["ee_tlsa"]])
    result = deliver(dns_server, dns_pool, mx.port)
    assert result.recipients[0].outcome is Outcome.DELIVERED
    assert result.tls is not None
    (received,) = mx.received
    assert received.tls and received.data == MESSAGE


def test_dane_ta_delivers_with_a_private_ca_and_the_mx_name(dns_server, dns_pool, servers, pki):
    mx = start(servers, pki["ta"])
    publish(dns_server, mx.port, [pki["ta_tlsa"]])
    result = deliver(dns_server, dns_pool, mx.port)
    assert result.recipients[0].outcome is Outcome.DELIVERED
    assert mx.received[0].tls


def test_dane_ta_defers_when_the_leaf_names_another_host(dns_server, dns_pool, servers, pki):
    mx = start(servers, pki["ta_other"])
    publish(dns_server, mx.port, [pki["ta_tlsa"]])
    result = deliver(dns_server, dns_pool, mx.port)
    assert (result.recipients[0].outcome, result.recipients[0].enhanced) == (
        Outcome.DEFERRED, "4.7.5")
    assert mail_commands(mx) == []


def test_tlsa_that_does_not_match_defers_and_sends_nothing(dns_server, dns_pool, servers, pki):
    mx = start(servers, pki["ee"])
    publish(dns_server, mx.port, [pki["wrong_tlsa"]])
    result = deliver(dns_server, dns_pool, mx.port)
    assert (result.recipients[0].outcome, result.recipients[0].enhanced) == (
        Outcome.DEFERRED, "4.7.5")
    assert mx.received == [] and mail_commands(mx) == []


def test_tlsa_with_a_server_without_starttls_defers(dns_server, dns_pool, servers, pki):
    mx = start(servers, None)
    publish(dns_server, mx.port, [pki["ee_tlsa"]])
    result = deliver(dns_server, dns_pool, mx.port)
    assert (result.recipients[0].outcome, result.recipients[0].enhanced) == (
        Outcome.DEFERRED, "4.7.4")
    assert mail_commands(mx) == []


def test_tlsa_without_ad_is_ignored(dns_server, dns_pool, servers, pki):
    mx = start(servers, pki["ee"])
    publish(dns_server, mx.port, [pki["wrong_tlsa"]], secure=False)
    result = deliver(dns_server, dns_pool, mx.port)
    assert result.recipients[0].outcome is Outcome.DELIVERED  # opportunistic, unverified
    assert mx.received[0].tls


def test_secure_denial_of_tlsa_is_opportunistic(dns_server, dns_pool, servers):
    mx = start(servers, None)
    publish(dns_server, mx.port, None)
    assert lookup_tlsa(dns_server.resolver(timeout=1.0), MX, mx.port) == []
    result = deliver(dns_server, dns_pool, mx.port)
    assert result.recipients[0].outcome is Outcome.DELIVERED
    assert not mx.received[0].tls


def test_secure_tlsa_with_only_unusable_records_still_requires_tls(dns_server, dns_pool,
                                                                   servers, pki):
    mx = start(servers, None)
    publish(dns_server, mx.port, [(1, 1, 1, pki["ee_tlsa"][3])])  # PKIX-EE: not for SMTP
    result = deliver(dns_server, dns_pool, mx.port)
    assert (result.recipients[0].outcome, result.recipients[0].enhanced) == (
        Outcome.DEFERRED, "4.7.4")
    assert mail_commands(mx) == []


def test_tlsa_servfail_defers_without_connecting(dns_server, dns_pool, servers, pki):
    mx = start(servers, pki["ee"])
    publish(dns_server, mx.port, [pki["ee_tlsa"]])
    dns_server.servfail(f"_{mx.port}._tcp.{MX}")
    with pytest.raises(TLSALookupError):
        lookup_tlsa(dns_server.resolver(timeout=1.0), MX, mx.port)
    result = deliver(dns_server, dns_pool, mx.port)
    assert (result.recipients[0].outcome, result.recipients[0].enhanced) == (
        Outcome.DEFERRED, "4.7.5")
    assert "TLSA lookup" in result.recipients[0].text
    assert mx.factory.sessions == []  # never dialled, so never in clear


def test_tlsa_timeout_defers(dns_server, dns_pool, servers, pki):
    mx = start(servers, pki["ee"])
    publish(dns_server, mx.port, [pki["ee_tlsa"]])
    dns_server.timeout(f"_{mx.port}._tcp.{MX}", "TLSA")
    result = deliver(dns_server, dns_pool, mx.port)
    assert (result.recipients[0].outcome, result.recipients[0].enhanced) == (
        Outcome.DEFERRED, "4.7.5")
    assert mx.factory.sessions == []


def test_tlsa_servfail_moves_on_to_the_next_mx(dns_server, dns_pool, servers):
    mx = start(servers, None)
    publish(dns_server, mx.port, None, hosts=(MX, "mx2.two.test"))
    dns_server.servfail(f"_{mx.port}._tcp.{MX}")
    result = deliver(dns_server, dns_pool, mx.port)
    assert result.recipients[0].outcome is Outcome.DELIVERED
    assert result.host == "mx2.two.test"
    assert len(result.tried) == 1 and result.tried[0].startswith(f"{MX}[127.0.0.1]")
    assert len(mx.factory.sessions) == 1  # only the second MX was dialled


def test_tlsa_servfail_for_an_insecure_mx_is_opportunistic(dns_server, dns_pool, servers, pki):
    # an unsigned zone cannot have secure TLSA records: its broken TLSA answers defer nothing
    mx = start(servers, pki["ee"])
    publish(dns_server, mx.port, None, secure=False)
    dns_server.servfail(f"_{mx.port}._tcp.{MX}")
    result = deliver(dns_server, dns_pool, mx.port)
    assert result.recipients[0].outcome is Outcome.DELIVERED
