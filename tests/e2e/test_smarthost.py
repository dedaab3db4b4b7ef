"""Relaying through a smarthost: a second Postroom's msa (issue 21, "the smarthost path").

one.test (127.0.0.2: msa and mta) sends everything through two.test
(127.0.0.3), a whole Postroom whose msa is the smarthost: STARTTLS with a
certificate from a CA this test makes (one's mta trusts it through
POSTROOM_RELAY_TLS_CA_FILE), AUTH as ``relay@two.test``. Two's msa lets that
account send as any one.test address through a catch-all alias, as a
provider's smarthost account may send for its customer's domain. two.test
publishes no MX: mail that reaches a mailbox there came through the smarthost.

Transport entries (`postroom relay set`) send some domains elsewhere:
implicit TLS to two's port-465-style listener, or the scripted sinks on
127.0.0.1 (plain, offering AUTH without STARTTLS, or with a certificate no
one trusts). The wrong-password test runs last: two's login limits would
otherwise hold up the good logins after it.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl as tssl

from postroom.net.tls import make_self_signed
from tests.support.dns import DNSServer
from tests.support.instance import Instance, queue_id_of, settle, shared_free_port
from tests.support.redisdb import wait_until
from tests.support.smtpsink import SinkConfig, SMTPSink

pytestmark = pytest.mark.slow

ONE, TWO, SINK = "127.0.0.2", "127.0.0.3", "127.0.0.1"
RELAY_USER = "relay@two.test"
RELAY_PASSWORD = "smarthost pass " + secrets.token_hex(4)
SMARTHOST = "mx.two.test"


# --- a private CA and two's certificate from it


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_pki(directory: Path, hostname: str) -> tuple[Path, Path, Path]:
    """(CA file, leaf certificate, leaf key) with the leaf naming ``hostname``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Smarthost Test CA"))
          .issuer_name(_name("Smarthost Test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name(hostname))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    return paths


def untrusted_tls(directory: Path) -> Any:
    """A server TLS context with a self-signed certificate for sink.test (trusted by no one)."""
    cert, key = directory / "untrusted.pem", directory / "untrusted.key"
    make_self_signed(cert, key, "sink.test")
    return tssl.PrivateCertificate.loadPEM(cert.read_text() + key.read_text()).options()


# --- the two instances and the sinks


class Setup:
    def __init__(self, one: Instance, two: Instance, sinks: dict[str, SMTPSink],
                 password_file: Path, wrong_password_file: Path) -> None:
        self.one = one
        self.two = two
        self.sinks = sinks
        self.password_file = password_file
        self.wrong_password_file = wrong_password_file


@pytest.fixture(scope="module")
def setup(redis_url: str, dns_server_session: DNSServer, twisted_reactor: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("smarthost")
    secrets_dir = base / "secrets"
    secrets_dir.mkdir()
    password_file = secrets_dir / "relay-password"
    password_file.write_text(RELAY_PASSWORD + "\n")
    wrong_password_file = secrets_dir / "wrong-password"
    wrong_password_file.write_text("not the password\n")
    ca_file, leaf, leaf_key = make_pki(secrets_dir, SMARTHOST)
    sinks = {
        "plain": SMTPSink(SinkConfig()),
        # offers AUTH but no STARTTLS: a login would go out in clear
        "cleartext": SMTPSink(SinkConfig(extensions=("PIPELINING", "AUTH PLAIN LOGIN"))),
        "untrusted": SMTPSink(SinkConfig(extensions=("PIPELINING", "AUTH PLAIN LOGIN"),
                                         tls=untrusted_tls(secrets_dir))),
    }
    port = shared_free_port(ONE, TWO)
    try:
        with Instance("two.test", TWO, redis_url, base / "two", smtp_port=port,
                      dns=dns_server_session) as two:
            leaf.replace(two.cert_file)
            leaf_key.replace(two.key_file)
            two.spawn(("dmarc", "mda", "mta", "msa", "imap"))
            env = {"POSTROOM_RELAY_HOST": f"[{SMARTHOST}]:{two.ports['msa']}",
                   "POSTROOM_RELAY_TLS": "starttls",
                   "POSTROOM_RELAY_USER": RELAY_USER,
                   "POSTROOM_RELAY_PASSWORD_FILE": str(password_file),
                   "POSTROOM_RELAY_TLS_CA_FILE": str(ca_file),
                   "POSTROOM_RETRY_INITIAL": "3s", "POSTROOM_RETRY_MAX": "5s"}
            with Instance("one.test", ONE, redis_url, base / "one", smtp_port=port,
                          dns=dns_server_session, env=env) as one:
                one.spawn(("mta", "msa"))
                two.setup_domain()
                two.add_user(RELAY_USER, RELAY_PASSWORD)
                for domain in ("one.test", "implicit.test"):
                    two.cli("domain", "add", domain)
                # the smarthost account may send as any one.test address
                two.cli("alias", "add", "@one.test", RELAY_USER)
                one.cli("domain", "add", "one.test")
                two.wait()
                one.wait()
                yield Setup(one, two, sinks, password_file, wrong_password_file)
    finally:
        for sink in sinks.values():
            sink.stop()


@pytest.fixture(autouse=True)
def zones(setup: Setup, dns_server: DNSServer) -> None:
    """Names only: two.test has no MX, so only a smarthost route reaches it."""
    dns_server.load({SMARTHOST: {"A": [TWO]}, "sink.test": {"A": [SINK]}})


def submit(one: Instance, rcpt: str) -> tuple[str, str]:
    """Send from a new one.test account to ``rcpt``; (queue id, the message's token)."""
    sender = f"alice-{secrets.token_hex(3)}@one.test"
    one.add_user(sender)
    token = secrets.token_hex(8)
    message = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: smarthost {token}\r\n\r\n"
               f"token {token}\r\n").encode()
    return queue_id_of(one.submit(sender, [rcpt], message)), token


def relay_events(one: Instance, queue_id: str, event: str) -> list[dict[str, Any]]:
    return [e for e in one.log_events("mta")
            if e.get("queue_id") == queue_id and e.get("event") == event]


def wait_event(one: Instance, queue_id: str, event: str, timeout: float = 30.0) -> dict[str, Any]:
    return wait_until(lambda: relay_events(one, queue_id, event), timeout=timeout,
                      interval=0.2)[0]


def assert_stays_queued(one: Instance, queue_id: str) -> dict[str, Any]:
    """Deferred (4xx to the queue), never bounced: the recipient is still pending."""
    failed = wait_event(one, queue_id, "recipient not relayed")
    assert failed["result"] == "deferred", failed
    settle(1.0)
    assert one.spool_states(queue_id) == ["pending"]
    assert not relay_events(one, queue_id, "recipient relayed")
    return failed


def route_set(setup: Setup, domain: str, nexthop: str, *options: str) -> None:
    setup.one.cli("relay", "set", domain, nexthop, *options)


def login(setup: Setup, password_file: Path | None = None) -> tuple[str, ...]:
    return ("--user", RELAY_USER, "--password-file", str(password_file or setup.password_file))


# --- the tests


def test_the_global_relay_host_takes_mail_to_the_smarthost_with_starttls_and_auth(setup):
    bob = f"bob-{secrets.token_hex(3)}@two.test"
    setup.two.add_user(bob)
    assert "relayhost -> [mx.two.test]" in setup.one.cli("relay", "test", bob)
    queue_id, token = submit(setup.one, bob)
    [raw] = setup.two.wait_for_mail(bob)
    assert token.encode() in raw
    relayed = wait_event(setup.one, queue_id, "recipient relayed")
    assert relayed["nexthop"] == f"[{SMARTHOST}]:{setup.two.ports['msa']}"
    assert relayed["route"] == "relayhost"
    # the smarthost took it as an authenticated submission over TLS
    submitted = [e for e in setup.two.log_events("msa") if e.get("event") == "message accepted"
                 and str(e.get("mail_from", "")).endswith("@one.test")]
    assert submitted and submitted[0]["tls"], "two's msa did not take it over TLS"
    assert RELAY_PASSWORD not in setup.one.processes["mta"].output
    _status, metrics = setup.one.processes["mta"].get("/metrics")
    assert 'postroom_relay_routes_total{route="relayhost"}' in metrics.decode()


def test_a_transport_entry_overrides_the_relay_host(setup):
    route_set(setup, ".sinkroute.test", f"[sink.test]:{setup.sinks['plain'].port}",
              "--tls", "none")
    carol = "carol@a.sinkroute.test"
    assert "transport:.sinkroute.test" in setup.one.cli("relay", "test", carol)
    queue_id, token = submit(setup.one, carol)
    received = wait_until(lambda: [r for r in setup.sinks["plain"].received
                                   if carol in r.rcpts], timeout=30, interval=0.2)
    assert token.encode() in received[0].data
    relayed = wait_event(setup.one, queue_id, "recipient relayed")
    assert relayed["route"] == "transport:.sinkroute.test"
    # no login on a route without one
    assert not any(c.upper().startswith("AUTH") for s in setup.sinks["plain"].sessions
                   for c in s.commands)


def test_implicit_tls_to_the_smarthost_port_465(setup):
    dave = f"dave-{secrets.token_hex(3)}@implicit.test"
    setup.two.add_user(dave)
    route_set(setup, "implicit.test", f"[{SMARTHOST}]:{setup.two.ports['msa_tls']}",
              "--tls", "tls", *login(setup))
    queue_id, token = submit(setup.one, dave)
    [raw] = setup.two.wait_for_mail(dave)
    assert token.encode() in raw
    relayed = wait_event(setup.one, queue_id, "recipient relayed")
    assert relayed["nexthop"] == f"[{SMARTHOST}]:{setup.two.ports['msa_tls']}"
    assert relayed["route"] == "transport:implicit.test"


def test_no_login_and_no_mail_to_a_smarthost_without_starttls(setup):
    sink = setup.sinks["cleartext"]
    route_set(setup, "cleartext.test", f"[sink.test]:{sink.port}", *login(setup))
    queue_id, _token = submit(setup.one, "erin@cleartext.test")
    failed = assert_stays_queued(setup.one, queue_id)
    assert "4.7.4" in failed["reply"]
    commands = [c.upper() for s in sink.sessions for c in s.commands]
    assert commands and not any(c.startswith(("AUTH", "MAIL", "RCPT")) for c in commands)


def test_an_untrusted_certificate_keeps_the_mail_queued(setup):
    sink = setup.sinks["untrusted"]
    route_set(setup, "untrusted.test", f"[sink.test]:{sink.port}", *login(setup))
    queue_id, _token = submit(setup.one, "frank@untrusted.test")
    failed = assert_stays_queued(setup.one, queue_id)
    assert "4.7.5" in failed["reply"], failed
    assert any(s.tls for s in sink.sessions)
    commands = [c.upper() for s in sink.sessions for c in s.commands]
    assert not any(c.startswith(("AUTH", "MAIL")) for c in commands)


def test_a_wrong_password_keeps_the_mail_queued_and_is_logged_loudly(setup):
    """Last: the smarthost's login limits count these failures."""
    grace = f"grace-{secrets.token_hex(3)}@implicit.test"
    setup.two.add_user(grace)
    route_set(setup, "implicit.test", f"[{SMARTHOST}]:{setup.two.ports['msa']}",
              *login(setup, setup.wrong_password_file))
    settle(6.0)  # the mta's cached route for implicit.test expires (smarthost.CACHE_SECONDS)
    queue_id, _token = submit(setup.one, grace)
    failed = assert_stays_queued(setup.one, queue_id)
    assert failed["reply"].startswith("535"), failed
    loud = wait_event(setup.one, queue_id, "smarthost authentication failed")
    assert loud["level"] == "error" and loud["user"] == RELAY_USER
    assert "not the password" not in setup.one.processes["mta"].output
    status, metrics = setup.one.processes["mta"].get("/metrics")
    assert status == 200
    failures = [line for line in metrics.decode().splitlines()
                if line.startswith("postroom_relay_smarthost_auth_failures_total{")]
    assert failures and float(failures[0].rsplit(" ", 1)[1]) >= 1, failures
    assert setup.two.fetch_all(grace) == []
