"""A scriptable SMTP receiver on 127.0.0.1 for relay tests: records what arrives, byte exact.

``SMTPSink(config)`` listens in the test reactor thread (``twisted_reactor``)
on a free loopback port. ``config.rcpt(address)`` gives each RCPT reply and
``config.data(received)`` the reply to the final dot (``None`` never
answers: a server that hangs mid-transaction). ``sink.received`` lists
completed transactions with the DATA bytes dot-unstuffed, CRLF lines;
``sink.sessions`` has one entry per TCP connection, each with the
``commands`` it received (for connection-reuse tests). ``config.mail`` and
``config.rset`` give the MAIL and RSET replies (``rset`` returning None drops
the connection without a reply; a 421 drops it after the reply). With
``config.tls`` (a Twisted server TLS context factory) the sink offers STARTTLS
and starts TLS with it; ``session.tls`` says whether a session did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import protocol
from twisted.protocols.basic import LineReceiver

from tests.support.ports import free_port
from tests.support.redisdb import in_reactor


def accept(_address: str) -> bytes:
    return b"250 2.1.5 ok"


def queued(_received: Received) -> bytes | None:
    return b"250 2.0.0 queued"


def mail_ok(_command: str) -> bytes:
    return b"250 2.1.0 ok"


def rset_ok() -> bytes | None:
    return b"250 2.0.0 ok"


@dataclass
class SinkConfig:
    rcpt: Callable[[str], bytes] = accept
    data: Callable[[Received], bytes | None] = queued
    mail: Callable[[str], bytes] = mail_ok
    rset: Callable[[], bytes | None] = rset_ok
    extensions: tuple[str, ...] = ("PIPELINING", "SIZE 50000000", "8BITMIME", "SMTPUTF8", "DSN")
    tls: Any = None  # a server context factory: STARTTLS is offered and done with it


@dataclass
class Received:
    """One transaction: envelope commands and the message as the server stores it."""

    mail: str = ""
    rcpts: list[str] = field(default_factory=list)
    rcpt_commands: list[str] = field(default_factory=list)
    data: bytes = b""


class _Session(LineReceiver):
    delimiter = b"\r\n"
    MAX_LENGTH = 1 << 20
    transport: Any

    def __init__(self, sink: SMTPSink) -> None:
        self.sink = sink
        self.current = Received()
        self.lines: list[bytes] | None = None
        self.commands: list[str] = []
        self.tls = False

    def connectionMade(self) -> None:
        self.sink.sessions.append(self)
        self.transport.write(b"220 mx.two.test ESMTP sink\r\n")

    def reply(self, data: bytes) -> None:
        self.transport.write(data + b"\r\n")

    def lineReceived(self, line: bytes) -> None:
        if self.lines is not None:
            if line != b".":
                self.lines.append(line[1:] if line.startswith(b".") else line)
                return
            self.current.data = b"".join(raw + b"\r\n" for raw in self.lines)
            self.lines = None
            answer = self.sink.config.data(self.current)
            if answer is None:
                self.sink.hung.append(self.current)
                return
            if answer.startswith(b"2"):
                self.sink.received.append(self.current)
            self.current = Received()
            self.reply(answer)
            return
        text = line.decode("utf-8", "replace")
        self.commands.append(text)
        verb = text.split(" ", 1)[0].upper()
        if verb == "EHLO":
            lines = ["mx.two.test hello", *self.sink.config.extensions]
            if self.sink.config.tls is not None and not self.tls:
                lines.append("STARTTLS")
            self.transport.write("".join(
                f"250{'-' if i < len(lines) - 1 else ' '}{x}\r\n" for i, x in enumerate(lines)
            ).encode())
        elif verb == "MAIL":
            self.current = Received(mail=text)
            self.reply(self.sink.config.mail(text))
        elif verb == "RSET":
            self.current = Received()
            rset = self.sink.config.rset()
            if rset is not None:
                self.reply(rset)
            if rset is None or rset.startswith(b"421"):
                self.transport.loseConnection()
        elif verb == "RCPT":
            address = text.split("<", 1)[1].split(">", 1)[0]
            answer = self.sink.config.rcpt(address)
            if answer.startswith(b"2"):
                self.current.rcpts.append(address)
                self.current.rcpt_commands.append(text)
            self.reply(answer)
        elif verb == "DATA":
            self.lines = []
            self.reply(b"354 go ahead")
        elif verb == "STARTTLS" and self.sink.config.tls is not None and not self.tls:
            self.reply(b"220 2.0.0 go ahead")
            self.tls = True
            self.transport.startTLS(self.sink.config.tls)
        elif verb == "QUIT":
            self.reply(b"221 2.0.0 bye")
            self.transport.loseConnection()
        else:
            self.reply(b"250 2.0.0 ok")


class _Factory(protocol.Factory):
    def __init__(self, sink: SMTPSink) -> None:
        self.sink = sink

    def buildProtocol(self, addr: Any) -> _Session:
        return _Session(self.sink)


class SMTPSink:
    """The receiver, listening on 127.0.0.1:``port`` until :meth:`stop`."""

    def __init__(self, config: SinkConfig | None = None, port: int | None = None) -> None:
        from twisted.internet import reactor

        self.config = config or SinkConfig()
        self.received: list[Received] = []
        self.hung: list[Received] = []
        self.sessions: list[_Session] = []
        self.port = port or free_port()
        self._listening = in_reactor(reactor.listenTCP, self.port, _Factory(self),
                                     interface="127.0.0.1")

    def stop(self) -> None:
        in_reactor(self._listening.stopListening)
        for session in self.sessions:
            if session.transport is not None and session.transport.connected:
                in_reactor(session.transport.abortConnection)
