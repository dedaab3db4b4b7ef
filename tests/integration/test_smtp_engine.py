"""The SMTP engine on real sockets: smtplib (STARTTLS, implicit TLS, AUTH) and hostile raw peers.

The server is the engine with the in-memory RecordingPolicy test double (no
store is needed to test the protocol); it listens on 127.0.0.1 in the
test reactor thread.
"""

from __future__ import annotations

import datetime
import ipaddress
import select
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl as tssl
from twisted.protocols.tls import TLSMemoryBIOFactory

from postroom.smtp.options import ServerOptions
from postroom.smtp.server import SMTPServerFactory
from tests.support.redisdb import in_reactor
from tests.unit.test_smtp_support import USERS, RecordingPolicy

MESSAGE = b"From: alice@example.org\r\nSubject: test\r\n\r\n.dotted line\r\nHello\r\n"


@pytest.fixture(scope="module")
def certificate() -> tuple[tssl.CertificateOptions, bytes]:
    """A self-signed certificate for 127.0.0.1: Twisted options and the PEM to trust."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    # pyOpenSSL takes cryptography objects directly (its own wrappers are deprecated)
    options = tssl.CertificateOptions(privateKey=key, certificate=cert,  # type: ignore[arg-type]
                                      raiseMinimumTo=tssl.TLSVersion.TLSv1_2)
    return options, cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def client_tls(certificate: tuple[Any, bytes]) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=certificate[1].decode())
    return context


class Server:
    def __init__(self, policy: RecordingPolicy, port: Any, factory: SMTPServerFactory) -> None:
        self.policy = policy
        self.port = port
        self.factory = factory

    @property
    def number(self) -> int:
        return int(self.port.getHost().port)


@pytest.fixture
def start_server(twisted_reactor: Any, certificate: tuple[Any, bytes]
                 ) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(*, implicit_tls: bool = False, policy: RecordingPolicy | None = None,
              **options: Any) -> Server:
        policy = policy or RecordingPolicy(clock=twisted_reactor, delay=0.001)
        factory = SMTPServerFactory(policy, ServerOptions(hostname="mx.test", **options),
                                    tls=certificate[0], implicit_tls=implicit_tls,
                                    clock=twisted_reactor)
        wrapped: Any = TLSMemoryBIOFactory(certificate[0], False, factory) if implicit_tls \
            else factory
        port = in_reactor(twisted_reactor.listenTCP, 0, wrapped, interface="127.0.0.1")
        server = Server(policy, port, factory)
        started.append(server)
        return server

    yield start
    for server in started:
        in_reactor(server.port.stopListening)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_smtplib_starttls_auth_plain_and_send(start_server: Callable[..., Server],
                                              client_tls: ssl.SSLContext) -> None:
    server = start_server()
    with smtplib.SMTP("127.0.0.1", server.number, local_hostname="client.test",
                      timeout=10) as client:
        client.ehlo()
        assert client.has_extn("starttls") and not client.has_extn("auth")
        client.starttls(context=client_tls)
        client.ehlo()
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN", "SCRAM-SHA-256"]
        client.login("alice", USERS["alice"])
        refused = client.sendmail("alice@example.org", ["b@example.net", "c@example.net"],
                                  MESSAGE)
        assert refused == {}
    wait_for(lambda: len(server.policy.delivered) == 1)
    envelope, message = server.policy.delivered[0]
    assert message == MESSAGE
    assert len(envelope.recipients) == 2
    session = server.policy.delivery_sessions[0]
    assert session.identity == "alice" and session.tls is not None
    assert session.tls.version.startswith("TLSv1")


def test_smtplib_auth_login_over_implicit_tls(start_server: Callable[..., Server],
                                              client_tls: ssl.SSLContext) -> None:
    server = start_server(implicit_tls=True)
    with smtplib.SMTP_SSL("127.0.0.1", server.number, local_hostname="client.test",
                          context=client_tls, timeout=10) as client:
        client.ehlo()
        assert not client.has_extn("starttls")
        client.user, client.password = "bob", USERS["bob"]
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235
        client.sendmail("bob@example.org", ["x@example.net"], MESSAGE)
    wait_for(lambda: len(server.policy.delivered) == 1)
    assert server.policy.delivery_sessions[0].auth_mechanism == "LOGIN"


def test_smtplib_wrong_password_is_535(start_server: Callable[..., Server],
                                       client_tls: ssl.SSLContext) -> None:
    server = start_server()
    with smtplib.SMTP("127.0.0.1", server.number, local_hostname="client.test",
                      timeout=10) as client:
        client.starttls(context=client_tls)
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.login("alice", "wrong")
        assert info.value.smtp_code == 535


def test_auth_before_starttls_is_refused(start_server: Callable[..., Server]) -> None:
    server = start_server()
    with smtplib.SMTP("127.0.0.1", server.number, local_hostname="client.test",
                      timeout=10) as client:
        client.ehlo()
        code, text = client.docmd("AUTH", "PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U=")
        assert (code, text[:6]) == (538, b"5.7.11")


# --- raw sockets


class Raw:
    """A line-oriented raw client."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """The next complete reply's last line."""
        while True:
            while b"\r\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\r\n", 1)
                if len(line) == 3 or line[3:4] == b" ":
                    return line.decode()
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buffer)
            self.buffer += data

    def codes(self, count: int) -> list[int]:
        return [int(self.reply()[:3]) for _ in range(count)]

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def test_pipelined_transaction_on_a_real_socket(start_server: Callable[..., Server]) -> None:
    server = start_server()
    raw = Raw(server.number)
    raw.send(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
             b"RCPT TO:<nobody@example.net>\r\nDATA\r\n")
    assert raw.codes(6) == [220, 250, 250, 250, 550, 354]
    raw.send(MESSAGE.replace(b"\r\n.dotted", b"\r\n..dotted") + b".\r\nQUIT\r\n")
    assert raw.codes(2) == [250, 221]
    assert server.policy.delivered[0][1] == MESSAGE
    raw.close()


def test_plaintext_after_starttls_is_not_executed_on_a_real_socket(
        start_server: Callable[..., Server], client_tls: ssl.SSLContext) -> None:
    server = start_server()
    raw = Raw(server.number)
    raw.send(b"EHLO c.test\r\n")
    assert raw.codes(2) == [220, 250]
    raw.send(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<v@example.net>\r\n")
    assert raw.reply() == "220 2.0.0 Ready to start TLS"
    tls = client_tls.wrap_socket(raw.sock, server_hostname="127.0.0.1")
    tls.sendall(b"MAIL FROM:<a@example.org>\r\n")
    answer = tls.recv(4096)
    assert answer == b"503 5.5.1 Send HELO/EHLO first\r\n"
    assert "mail_from" not in server.policy.calls
    tls.close()


def test_over_long_data_line_never_makes_a_second_message(
        start_server: Callable[..., Server]) -> None:
    server = start_server()
    raw = Raw(server.number)
    raw.send(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    assert raw.codes(5) == [220, 250, 250, 250, 354]
    raw.send(b"x" * 100_000 + b"\r\nMAIL FROM:<x@example.org>\r\nRCPT TO:<y@example.net>\r\n"
             b"DATA\r\nsmuggled\r\n.\r\n")
    assert raw.reply().startswith("500 5.5.2")
    raw.send(b"QUIT\r\n")
    assert raw.codes(1) == [221]
    assert server.policy.delivered == [] and server.policy.calls.count("mail_from") == 1


def test_bare_lf_smuggling_on_a_real_socket(start_server: Callable[..., Server]) -> None:
    server = start_server()
    raw = Raw(server.number)
    raw.send(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    raw.codes(5)
    raw.send(b"hi\n.\nMAIL FROM:<x@example.org>\nRCPT TO:<y@example.net>\nDATA\nevil\n.\n"
             b"\r\n.\r\n")
    assert raw.reply().startswith("550 5.6.0")
    assert server.policy.delivered == [] and server.policy.calls.count("mail_from") == 1
    raw.close()


def test_ten_thousand_recipients(start_server: Callable[..., Server]) -> None:
    server = start_server(policy=RecordingPolicy(), max_errors=100_000)
    raw = Raw(server.number, timeout=30)
    raw.send(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\n")
    raw.send(b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(10_000)))
    codes = raw.codes(3 + 10_000)[3:]
    assert codes.count(250) == 1000 and codes.count(452) == 9000
    raw.send(b"DATA\r\n" + MESSAGE + b".\r\n")
    assert raw.codes(2) == [354, 250]
    assert len(server.policy.delivered[0][0].recipients) == 1000
    raw.close()


def test_nul_bytes_get_errors_and_the_session_survives(
        start_server: Callable[..., Server]) -> None:
    server = start_server()
    raw = Raw(server.number)
    raw.send(b"EHLO c\x00.test\r\nEHLO c.test\r\nMAIL FROM:<a\x00@example.org>\r\n"
             b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    assert raw.codes(7) == [220, 500, 250, 500, 250, 250, 354]
    raw.send(b"nul \x00 here\r\n.\r\nNOOP\r\n")
    assert raw.codes(2) == [550, 250]
    assert server.policy.delivered == []
    raw.close()


def test_huge_size_is_552(start_server: Callable[..., Server]) -> None:
    server = start_server()
    raw = Raw(server.number)
    raw.send(b"EHLO c.test\r\nMAIL FROM:<a@example.org> SIZE=99999999999999999999\r\n")
    assert raw.codes(3) == [220, 250, 552]
    raw.close()


def test_size_longer_than_rfc1870_allows_is_501(start_server: Callable[..., Server]) -> None:
    server = start_server()
    raw = Raw(server.number)
    raw.send(b"EHLO c.test\r\nMAIL FROM:<a@example.org> SIZE=" + b"9" * 400 + b"\r\nNOOP\r\n")
    assert raw.codes(4) == [220, 250, 501, 250]
    raw.close()


def test_slowloris_peer_times_out(start_server: Callable[..., Server]) -> None:
    server = start_server(command_timeout=1.0)
    raw = Raw(server.number)
    assert raw.codes(1) == [220]
    started = time.monotonic()
    received = b""
    # one byte every 0.2 s, never a complete line: the idle timer must not be reset
    for byte in b"EHLO slowly.example.org" * 10:
        raw.send(bytes([byte]))
        ready, _, _ = select.select([raw.sock], [], [], 0.2)
        if ready:
            received = raw.sock.recv(4096)
            break
    assert received == b"421 4.4.2 Timeout exceeded, closing connection\r\n"
    assert raw.closed()
    assert time.monotonic() - started < 5
    raw.close()


def test_server_accepts_connections_after_abuse(start_server: Callable[..., Server]) -> None:
    server = start_server(max_errors=3)
    raw = Raw(server.number)
    raw.send(b"FROB\r\n" * 10)
    assert raw.codes(5)[-1] == 421
    raw.close()
    again = Raw(server.number)
    assert again.codes(1) == [220]
    again.close()
