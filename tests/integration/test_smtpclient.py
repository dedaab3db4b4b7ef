"""The outbound SMTP client against a real SMTP server on 127.0.0.1 (real sockets, real TLS).

The server is a tiny Twisted one defined here (the stdlib has no SMTP server
any more, and the project's own engine is tested on its own): it records every
command and the exact DATA bytes it received, so tests check that what arrives
is byte for byte the message, dot-unstuffed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import protocol
from twisted.protocols.basic import LineReceiver

from postroom.net.tls import ServerTLS, make_self_signed
from postroom_mta.smtpclient import (
    DeliveryResult,
    Envelope,
    Outcome,
    Timeouts,
    TLSPolicy,
    attempt,
)
from postroom_mta.smtpclient_parse import scan_message
from tests.support.ports import free_port
from tests.support.redisdb import in_reactor

FAST = Timeouts(connect=5, initial=10, helo=10, mail=10, rcpt=10, data_init=10, data_block=10,
                data_end=10, quit=5)


@dataclass
class ServerConfig:
    """How the test server behaves; every field has a well-behaved default."""

    banner: bytes = b"220 mx.two.test ESMTP test\r\n"
    extensions: tuple[str, ...] = ("PIPELINING", "SIZE 50000000", "8BITMIME", "SMTPUTF8", "DSN")
    rcpt: Callable[[str], bytes] = lambda _address: b"250 2.1.5 ok"
    data_reply: bytes = b"250 2.0.0 queued as T1"
    tls: ServerTLS | None = None
    fake_starttls: bool = False  # answer 220 to STARTTLS but never start TLS


@dataclass
class Received:
    """What the server saw of one transaction."""

    mail: str = ""
    rcpts: list[str] = field(default_factory=list)
    data: bytes | None = None  # the message as stored: dot-unstuffed, CRLF lines
    tls: bool = False


class SMTPTestServer(LineReceiver):
    delimiter = b"\r\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, config: ServerConfig, log: list[Any]) -> None:
        self.config = config
        self.log = log
        self.commands: list[str] = []
        self.current = Received()
        self.in_data = False
        self.lines: list[bytes] = []
        self.tls = False
        self.faking_tls = False

    def dataReceived(self, data: bytes) -> None:
        if self.faking_tls:
            # the client's ClientHello meets plain text: its TLS layer must fail cleanly
            self.transport.write(b"250 this is not TLS\r\n")
            return
        super().dataReceived(data)

    def connectionMade(self) -> None:
        self.log.append(self)
        self.transport.write(self.config.banner)

    def reply(self, data: bytes) -> None:
        self.transport.write(data + b"\r\n")

    def lineReceived(self, line: bytes) -> None:
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.current.data = b"".join(
                    (raw[1:] if raw.startswith(b".") else raw) + b"\r\n" for raw in self.lines)
                self.current.tls = self.tls
                self.received.append(self.current)
                self.current, self.lines = Received(), []
                self.reply(self.config.data_reply)
            else:
                self.lines.append(line)
            return
        text = line.decode("utf-8", "replace")
        self.commands.append(text)
        verb = text.split(" ", 1)[0].upper()
        if verb == "EHLO":
            ext = list(self.config.extensions)
            if self.config.tls is not None or self.config.fake_starttls:
                ext = [*ext, "STARTTLS"] if not self.tls else ext
            lines = ["mx.two.test hello", *ext]
            self.transport.write("".join(
                f"250{'-' if i < len(lines) - 1 else ' '}{x}\r\n" for i, x in enumerate(lines)
            ).encode())
        elif verb == "HELO":
            self.reply(b"250 mx.two.test")
        elif verb == "STARTTLS":
            self.reply(b"220 2.0.0 go ahead")
            if self.config.fake_starttls:
                self.faking_tls = True
            else:
                self.transport.startTLS(self.config.tls)
                self.tls = True
        elif verb == "MAIL":
            self.current.mail = text
            self.reply(b"250 2.1.0 ok")
        elif verb == "RCPT":
            address = text.split("<", 1)[1].split(">", 1)[0]
            answer = self.config.rcpt(address)
            if answer.startswith(b"2"):
                self.current.rcpts.append(address)
            self.reply(answer)
        elif verb == "DATA":
            self.in_data = True
            self.reply(b"354 go ahead")
        elif verb == "QUIT":
            self.reply(b"221 2.0.0 bye")
            self.transport.loseConnection()
        else:
            self.reply(b"250 2.0.0 ok")

    @property
    def received(self) -> list[Received]:
        return self.factory.received  # type: ignore[attr-defined,no-any-return]


class SMTPTestServerFactory(protocol.Factory):
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.received: list[Received] = []
        self.sessions: list[SMTPTestServer] = []

    def buildProtocol(self, addr: Any) -> SMTPTestServer:
        proto = SMTPTestServer(self.config, self.sessions)
        proto.factory = self
        return proto


class RunningServer:
    """A test SMTP server listening on 127.0.0.1:``port`` in the reactor thread."""

    def __init__(self, config: ServerConfig, port: int | None = None) -> None:
        from twisted.internet import reactor

        self.factory = SMTPTestServerFactory(config)
        self.port = port or free_port()
        self._listening = in_reactor(reactor.listenTCP, self.port, self.factory,
                                     interface="127.0.0.1")

    @property
    def config(self) -> ServerConfig:
        return self.factory.config

    @property
    def received(self) -> list[Received]:
        return self.factory.received

    def stop(self) -> None:
        in_reactor(self._listening.stopListening)
        for session in self.factory.sessions:
            if session.transport is not None and session.transport.connected:
                in_reactor(session.transport.abortConnection)


@pytest.fixture
def smtp_server(twisted_reactor: Any) -> Iterator[RunningServer]:
    server = RunningServer(ServerConfig())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ServerTLS:
    directory: Path = tmp_path_factory.mktemp("smtpclient-tls")
    make_self_signed(directory / "cert.pem", directory / "key.pem", "mx.two.test")
    return ServerTLS(str(directory / "cert.pem"), str(directory / "key.pem"))


def send(port: int, message: bytes, recipients: tuple[str, ...] = ("bob@two.test",),
         mail_from: str = "alice@one.test", **kwargs: Any) -> DeliveryResult:
    from twisted.internet import reactor

    envelope = Envelope.of(mail_from, recipients)
    traits = scan_message([message])
    kwargs.setdefault("timeouts", FAST)
    result: DeliveryResult = in_reactor(
        attempt, reactor, envelope, message, traits, address="127.0.0.1", port=port,
        helo_name="one.test", host="mx.two.test", timeout=30, **kwargs)
    return result


def dotty_message(chunk_size: int) -> bytes:
    """Headers, then a "." line starting at every offset from chunk_size - 8 to + 8."""
    parts = [b"From: alice@one.test\r\nTo: bob@two.test\r\nSubject: dots\r\n\r\n"]
    for n in range(chunk_size - 8, chunk_size + 9):
        parts.append(b"z" * n + b"\r\n.\r\n..\r\n. \r\n")
    parts.append(b".\r\nQUIT\r\n")
    return b"".join(parts)


def test_message_arrives_byte_for_byte(smtp_server):
    message = b"From: alice@one.test\r\nSubject: hi\r\n\r\nHello\r\n.\r\n..two\r\nbye\r\n"
    result = send(smtp_server.port, message)
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    assert result.recipients[0].text == "250 2.0.0 queued as T1"
    (received,) = smtp_server.received
    assert received.data == message
    assert received.mail == f"MAIL FROM:<alice@one.test> SIZE={len(message)}"


@pytest.mark.parametrize("chunk_size", [16 * 1024, 64 * 1024])
def test_dot_lines_around_chunk_boundaries_arrive_intact(smtp_server, chunk_size):
    message = dotty_message(chunk_size)
    result = send(smtp_server.port, message, chunk_size=chunk_size)
    assert result.recipients[0].outcome is Outcome.DELIVERED
    (received,) = smtp_server.received
    assert received.data == message
    # no smuggled command: the server saw exactly one transaction's commands
    commands = smtp_server.factory.sessions[0].commands
    assert [c.split(" ")[0] for c in commands] == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]


def test_large_8bit_message_streams_with_body_8bitmime(smtp_server):
    line = "Grüße aus dem Süden, ".encode() * 40 + b"\r\n"
    message = b"Subject: big\r\n\r\n" + line * 3000  # ~2.7 MB
    result = send(smtp_server.port, message)
    assert result.recipients[0].outcome is Outcome.DELIVERED
    (received,) = smtp_server.received
    assert received.data == message
    assert "BODY=8BITMIME" in received.mail


def test_per_recipient_replies_over_a_real_socket(smtp_server):
    replies = {"bob@two.test": b"250 ok", "gone@two.test": b"550 5.1.1 no such user",
               "busy@two.test": b"452 4.2.2 mailbox full"}
    smtp_server.config.rcpt = lambda address: replies[address]
    result = send(smtp_server.port, b"Subject: x\r\n\r\ny\r\n",
                  recipients=("bob@two.test", "gone@two.test", "busy@two.test"))
    assert [(r.recipient, r.outcome, r.enhanced) for r in result.recipients] == [
        ("bob@two.test", Outcome.DELIVERED, "2.0.0"),
        ("gone@two.test", Outcome.FAILED, "5.1.1"),
        ("busy@two.test", Outcome.DEFERRED, "4.2.2"),
    ]
    assert smtp_server.received[0].rcpts == ["bob@two.test"]


def test_starttls_is_negotiated_and_the_message_goes_inside_it(smtp_server, server_tls):
    smtp_server.config.tls = server_tls
    message = dotty_message(64 * 1024) * 4  # ~1 MB through the TLS layer's producer
    result = send(smtp_server.port, message, tls=TLSPolicy())
    assert result.recipients[0].outcome is Outcome.DELIVERED
    assert result.tls is not None and result.tls.version.startswith("TLSv1.")
    (received,) = smtp_server.received
    assert received.tls and received.data == message
    commands = smtp_server.factory.sessions[0].commands
    assert commands[:3] == ["EHLO one.test", "STARTTLS", "EHLO one.test"]


def test_broken_tls_after_starttls_is_a_temporary_tls_failure(smtp_server):
    smtp_server.config.fake_starttls = True
    result = send(smtp_server.port, b"Subject: x\r\n\r\ny\r\n", tls=TLSPolicy())
    assert result.session_failure
    assert [(r.outcome, r.enhanced) for r in result.recipients] == [(Outcome.DEFERRED, "4.7.5")]
    assert smtp_server.received == []


def test_connection_refused_is_a_temporary_session_failure(twisted_reactor):
    port = free_port()
    result = send(port, b"Subject: x\r\n\r\ny\r\n")
    assert result.session_failure
    assert [(r.outcome, r.enhanced, r.stage) for r in result.recipients] == [
        (Outcome.DEFERRED, "4.4.1", "connect")]
    assert "Connection refused" in result.recipients[0].text


def test_greeting_421_is_a_temporary_session_failure(smtp_server):
    smtp_server.config.banner = b"421 4.3.2 too busy\r\n"
    result = send(smtp_server.port, b"Subject: x\r\n\r\ny\r\n")
    assert result.session_failure
    assert [(r.outcome, r.code) for r in result.recipients] == [(Outcome.DEFERRED, 421)]
