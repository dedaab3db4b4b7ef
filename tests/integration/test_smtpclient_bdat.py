"""CHUNKING (RFC 3030) on the client: BDAT against a real loopback server that offers it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from postroom_mta.smtpclient import Outcome
from tests.integration.test_smtpclient import (
    RunningServer,
    ServerConfig,
    SMTPTestServer,
    SMTPTestServerFactory,
    dotty_message,
    send,
)

EXTENSIONS = ("PIPELINING", "SIZE 50000000", "8BITMIME", "SMTPUTF8", "DSN", "CHUNKING")


class BDATServer(SMTPTestServer):
    """The test server plus BDAT: counted octets read raw, stored when LAST arrives."""

    chunk_reply = b"250 2.0.0 chunk ok"
    pending = 0
    last = False
    body = b""

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        if not text.upper().startswith("BDAT "):
            super().lineReceived(line)
            return
        self.commands.append(text)
        parts = text.split()
        self.pending, self.last = int(parts[1]), len(parts) > 2 and parts[2].upper() == "LAST"
        self.setRawMode()
        if self.pending == 0:
            self.rawDataReceived(b"")

    def rawDataReceived(self, data: bytes) -> None:
        take, rest = data[:self.pending], data[self.pending:]
        self.body += take
        self.pending -= len(take)
        if self.pending:
            return
        if self.last:
            self.current.data, self.body = self.body, b""
            self.current.tls = self.tls
            self.received.append(self.current)
            self.current = type(self.current)()
            self.reply(self.config.data_reply)
        else:
            self.reply(self.chunk_reply)
        self.setLineMode(rest)


class BDATFactory(SMTPTestServerFactory):
    def buildProtocol(self, addr: Any) -> SMTPTestServer:
        proto = BDATServer(self.config, self.sessions)
        proto.factory = self
        return proto


@pytest.fixture
def bdat_server(twisted_reactor: Any) -> Iterator[RunningServer]:
    server = RunningServer.__new__(RunningServer)
    from twisted.internet import reactor

    from tests.support.ports import free_port
    from tests.support.redisdb import in_reactor

    server.factory = BDATFactory(ServerConfig(extensions=EXTENSIONS))
    server.port = free_port()
    server._listening = in_reactor(reactor.listenTCP, server.port, server.factory,
                                   interface="127.0.0.1")
    yield server
    server.stop()


def test_bdat_is_used_when_chunking_is_offered(bdat_server):
    message = b"From: alice@one.test\r\nSubject: hi\r\n\r\nHello\r\n.\r\nbye\r\n"
    result = send(bdat_server.port, message)
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    commands = bdat_server.factory.sessions[0].commands
    assert f"BDAT {len(message)} LAST" in commands and "DATA" not in commands


def test_bdat_chunks_carry_the_message_unstuffed_and_intact(bdat_server):
    message = dotty_message(4096)
    result = send(bdat_server.port, message, chunk_size=4096)
    assert result.recipients[0].outcome is Outcome.DELIVERED
    assert bdat_server.received[0].data == message
    bdats = [c for c in bdat_server.factory.sessions[0].commands if c.startswith("BDAT")]
    assert len(bdats) > 1 and bdats[-1].endswith("LAST")


def test_bdat_normalises_bare_line_feeds(bdat_server):
    result = send(bdat_server.port, b"Subject: lf\n\nline\n")
    assert result.recipients[0].outcome is Outcome.DELIVERED
    assert bdat_server.received[0].data == b"Subject: lf\r\n\r\nline\r\n"


def test_refused_bdat_chunk_fails_the_recipients_and_stops(bdat_server):
    BDATServer.chunk_reply = b"552 5.3.4 too much"
    try:
        result = send(bdat_server.port, dotty_message(4096), chunk_size=4096)
    finally:
        BDATServer.chunk_reply = b"250 2.0.0 chunk ok"
    assert (result.recipients[0].outcome, result.recipients[0].code) == (Outcome.FAILED, 552)
    bdats = [c for c in bdat_server.factory.sessions[0].commands if c.startswith("BDAT")]
    assert len(bdats) == 1 and bdat_server.received == []
