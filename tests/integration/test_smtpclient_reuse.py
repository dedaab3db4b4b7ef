"""Connection reuse (sessioncache.py) over real sockets against the SMTP sink on 127.0.0.1.

Every test counts TCP connections at the sink (``sink.sessions``) and reads
the commands each one received, so "one connection, N transactions, RSET
between them" is checked on the wire, not inferred from the client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from postroom_mta.sessioncache import SessionCache
from postroom_mta.smtpclient import DeliveryResult, Envelope, Outcome, TLSPolicy
from postroom_mta.smtpclient_parse import scan_message
from tests.integration.test_smtpclient import FAST, dotty_message
from tests.support.redisdb import in_reactor, wait_until
from tests.support.smtpsink import Received, SMTPSink

PLAIN = TLSPolicy(use_tls=False)


def message(n: int) -> bytes:
    return f"From: alice@one.test\r\nSubject: m{n}\r\n\r\nbody {n}\r\n".encode()


@pytest.fixture
def sink(twisted_reactor: Any) -> Iterator[SMTPSink]:
    server = SMTPSink()
    yield server
    server.stop()


@pytest.fixture
def cache(twisted_reactor: Any) -> Iterator[SessionCache]:
    from twisted.internet import reactor

    sessions = SessionCache(reactor, idle=30, reuse_limit=100)
    yield sessions
    in_reactor(sessions.close, timeout=10)


def send(cache: SessionCache, port: int, body: bytes, recipients: tuple[str, ...] = (
        "bob@two.test",), mail_from: str = "alice@one.test", tls: TLSPolicy = PLAIN,
         chunk_size: int = 64 * 1024) -> DeliveryResult:
    from twisted.internet import reactor

    envelope = Envelope.of(mail_from, recipients)
    traits = scan_message([body])

    def run() -> Deferred[DeliveryResult]:
        return Deferred.fromCoroutine(cache.attempt(
            reactor, envelope, body, traits, address="127.0.0.1", port=port,
            helo_name="one.test", host="mx.two.test", timeouts=FAST, tls=tls,
            chunk_size=chunk_size))

    result: DeliveryResult = in_reactor(run, timeout=30)
    return result


def verbs(session: Any) -> list[str]:
    return [c.split(" ", 1)[0].upper() for c in session.commands]


def outcomes(result: DeliveryResult) -> list[tuple[str, Outcome, int]]:
    return [(r.recipient, r.outcome, r.code) for r in result.recipients]


def test_back_to_back_messages_share_one_connection(sink, cache):
    results = [send(cache, sink.port, message(n), recipients=(f"r{n}@two.test",))
               for n in range(5)]
    assert [outcomes(r) for r in results] == [
        [(f"r{n}@two.test", Outcome.DELIVERED, 250)] for n in range(5)]
    assert len(sink.sessions) == 1
    assert [r.data for r in sink.received] == [message(n) for n in range(5)]
    assert [r.rcpts for r in sink.received] == [[f"r{n}@two.test"] for n in range(5)]
    assert verbs(sink.sessions[0]) == ["EHLO"] + ["MAIL", "RCPT", "DATA"] + \
        ["RSET", "MAIL", "RCPT", "DATA"] * 4
    assert len(cache) == 1


def test_a_rejected_recipient_then_the_next_transaction_on_the_same_session(sink, cache):
    sink.config.rcpt = lambda a: b"550 5.1.1 no such user" if a.startswith("gone") else \
        b"250 2.1.5 ok"
    first = send(cache, sink.port, message(1), recipients=("gone@two.test",))
    second = send(cache, sink.port, message(2), recipients=("bob@two.test", "gone2@two.test"))
    assert outcomes(first) == [("gone@two.test", Outcome.FAILED, 550)]
    assert outcomes(second) == [("bob@two.test", Outcome.DELIVERED, 250),
                                ("gone2@two.test", Outcome.FAILED, 550)]
    assert len(sink.sessions) == 1
    assert verbs(sink.sessions[0]) == ["EHLO", "MAIL", "RCPT", "RSET", "MAIL", "RCPT", "RCPT",
                                       "DATA"]
    assert [(r.rcpts, r.data) for r in sink.received] == [(["bob@two.test"], message(2))]


def test_a_rejected_mail_from_then_the_next_transaction_on_the_same_session(sink, cache):
    sink.config.mail = lambda cmd: b"553 5.7.1 sender refused" if "spammer" in cmd else \
        b"250 2.1.0 ok"
    first = send(cache, sink.port, message(1), mail_from="spammer@one.test",
                 recipients=("bob@two.test", "carol@two.test"))
    second = send(cache, sink.port, message(2))
    assert [(r.outcome, r.code, r.stage) for r in first.recipients] == [
        (Outcome.FAILED, 553, "mail")] * 2
    assert outcomes(second) == [("bob@two.test", Outcome.DELIVERED, 250)]
    assert len(sink.sessions) == 1
    assert "RSET" in verbs(sink.sessions[0])
    assert [r.data for r in sink.received] == [message(2)]


def test_a_5xx_at_end_of_data_then_a_250_give_per_message_results(sink, cache):
    def data(received: Received) -> bytes:
        return b"554 5.7.1 spam" if b"m1" in received.data else b"250 2.0.0 queued"

    sink.config.data = data
    first = send(cache, sink.port, message(1))
    second = send(cache, sink.port, message(2))
    third = send(cache, sink.port, message(1))
    assert [(r.outcome, r.code, r.stage) for r in first.recipients] == [
        (Outcome.FAILED, 554, "data-end")]
    assert [(r.outcome, r.code, r.stage) for r in second.recipients] == [
        (Outcome.DELIVERED, 250, "data-end")]
    assert [r.outcome for r in third.recipients] == [Outcome.FAILED]
    assert len(sink.sessions) == 1
    assert [r.data for r in sink.received] == [message(2)]


def test_a_connection_the_server_closed_while_idle_is_replaced_without_a_deferral(sink, cache):
    assert outcomes(send(cache, sink.port, message(1)))[0][1] is Outcome.DELIVERED
    in_reactor(sink.sessions[0].transport.loseConnection)
    wait_until(lambda: len(cache) == 0, timeout=5)  # the cache forgot the dead session
    second = send(cache, sink.port, message(2))
    assert outcomes(second) == [("bob@two.test", Outcome.DELIVERED, 250)]
    assert second.tried == () and not second.session_failure
    assert len(sink.sessions) == 2
    assert verbs(sink.sessions[1]) == ["EHLO", "MAIL", "RCPT", "DATA"]


@pytest.mark.parametrize("rset", [b"421 4.4.2 idle too long, closing", None,
                                  b"451 4.3.0 confused"])
def test_a_cached_session_found_dead_at_rset_is_retried_on_a_fresh_connection(sink, cache,
                                                                             rset):
    send(cache, sink.port, message(1))
    sink.config.rset = lambda: rset  # answered (or not) while the cache still trusts it
    second = send(cache, sink.port, message(2))
    assert outcomes(second) == [("bob@two.test", Outcome.DELIVERED, 250)]
    assert not second.session_failure
    assert len(sink.sessions) == 2
    assert verbs(sink.sessions[0])[-1] in ("RSET", "QUIT")
    assert verbs(sink.sessions[1]) == ["EHLO", "MAIL", "RCPT", "DATA"]
    assert [r.data for r in sink.received] == [message(1), message(2)]


def test_the_idle_timer_sends_quit(sink, twisted_reactor):
    from twisted.internet import reactor

    cache = SessionCache(reactor, idle=0.3)
    send(cache, sink.port, message(1))
    assert len(cache) == 1
    session = sink.sessions[0]
    wait_until(lambda: not session.transport.connected, timeout=5)
    assert verbs(session)[-1] == "QUIT"
    assert len(cache) == 0


def test_the_reuse_limit_opens_a_new_connection(sink, twisted_reactor):
    from twisted.internet import reactor

    cache = SessionCache(reactor, idle=30, reuse_limit=2)
    try:
        results = [send(cache, sink.port, message(n)) for n in range(3)]
        assert all(r.recipients[0].outcome is Outcome.DELIVERED for r in results)
        assert len(sink.sessions) == 2
        assert verbs(sink.sessions[0]) == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL",
                                           "RCPT", "DATA", "QUIT"]
        assert verbs(sink.sessions[1]) == ["EHLO", "MAIL", "RCPT", "DATA"]
    finally:
        in_reactor(cache.close)


@pytest.mark.parametrize("chunk_size", [16 * 1024, 64 * 1024])
def test_dot_lines_at_every_offset_arrive_intact_on_a_reused_session(sink, cache, chunk_size):
    bodies = [dotty_message(chunk_size), b"Subject: small\r\n\r\n.\r\n", dotty_message(chunk_size)]
    results = [send(cache, sink.port, body, chunk_size=chunk_size) for body in bodies]
    assert all(r.recipients[0].outcome is Outcome.DELIVERED for r in results)
    assert [r.data for r in sink.received] == bodies
    # no smuggled command: exactly three transactions' commands on one connection
    assert len(sink.sessions) == 1
    assert verbs(sink.sessions[0]) == ["EHLO", "MAIL", "RCPT", "DATA"] + \
        ["RSET", "MAIL", "RCPT", "DATA"] * 2


def test_a_session_is_reused_only_under_the_same_tls_policy(sink, cache):
    send(cache, sink.port, message(1), tls=PLAIN)
    send(cache, sink.port, message(2), tls=TLSPolicy(use_tls=False, required=False,
                                                     creator=lambda name: None))
    send(cache, sink.port, message(3), tls=PLAIN)
    assert len(sink.sessions) == 2
    assert verbs(sink.sessions[0]).count("MAIL") == 2
    assert verbs(sink.sessions[1]).count("MAIL") == 1


def test_close_quits_idle_sessions_and_waits_for_them(sink, twisted_reactor):
    from twisted.internet import reactor

    cache = SessionCache(reactor, idle=30)
    send(cache, sink.port, message(1), recipients=("a@two.test",))
    send(cache, sink.port, message(2), tls=TLSPolicy(use_tls=False, required=True,
                                                           creator=lambda name: None))
    assert len(cache) == 1  # required TLS and no STARTTLS: that session failed and QUIT
    started = time.monotonic()
    in_reactor(cache.close, timeout=10)
    assert time.monotonic() - started < 5
    assert len(cache) == 0
    assert all(not s.transport.connected for s in sink.sessions)
    assert verbs(sink.sessions[0])[-1] == "QUIT"
    # a cache that is closed sends over a connection of its own and does not keep it
    send(cache, sink.port, message(3))
    assert len(cache) == 0
