"""The client state machine kept open between transactions (keep_open), over StringTransport."""

from __future__ import annotations

from twisted.internet import error
from twisted.python.failure import Failure

from postroom_mta.smtpclient import DeliveryResult, Envelope, Outcome
from postroom_mta.smtpclient_data import unstuff
from postroom_mta.smtpclient_parse import scan_message
from tests.unit.test_smtpclient import EHLO_FULL, EHLO_PLAIN, MESSAGE, Session, outcomes, session

EIGHT_BIT = "Subject: x\r\n\r\nGrüße\r\n".encode()
EHLO_CHUNKING = b"250-mx.two.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n"


def first_delivered(s: Session, ehlo: bytes = EHLO_FULL) -> DeliveryResult:
    """Greet, run the first transaction to a 250, and return its result (the session stays)."""
    s.greet_and_ehlo(ehlo)
    s.sent()
    s.server(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n")
    assert s.lines()[-1] == b"DATA"  # after the RCPT when not pipelined
    s.server(b"354 go\r\n")
    s.pump()
    s.server(b"250 2.0.0 queued\r\n")
    assert s.sent() == b""  # no QUIT
    (result,) = s.results
    return result


def send(s: Session, recipients=("carol@two.test",), message: bytes = MESSAGE,
         mail_from: str = "alice@one.test") -> list[DeliveryResult]:
    results: list[DeliveryResult] = []
    s.proto.send(Envelope.of(mail_from, recipients), message,
                 scan_message([message])).addCallback(results.append)
    return results


def test_a_kept_open_session_reports_at_the_end_of_data_and_goes_idle():
    s = session(keep_open=True)
    result = first_delivered(s)
    assert outcomes(result) == [("bob@two.test", Outcome.DELIVERED, 250)]
    assert s.proto.reusable and s.proto.transactions == 1
    assert not s.transport.disconnecting
    assert s.clock.getDelayedCalls() == []  # idle time is the cache's to bound


def test_the_next_transaction_starts_with_rset_and_has_its_own_results():
    s = session(keep_open=True)
    first_delivered(s)
    results = send(s, recipients=("carol@two.test", "dave@two.test"))
    assert s.lines() == [b"RSET"]
    s.server(b"250 2.0.0 ok\r\n")
    assert s.lines() == [b"MAIL FROM:<alice@one.test> SIZE=39", b"RCPT TO:<carol@two.test>",
                         b"RCPT TO:<dave@two.test>"]
    s.server(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n")
    assert s.lines() == [b"DATA"]
    s.server(b"354 go\r\n")
    assert unstuff(s.pump()) == MESSAGE
    s.server(b"250 2.0.0 queued as 2\r\n")
    (result,) = results
    assert outcomes(result) == [("carol@two.test", Outcome.DELIVERED, 250),
                                ("dave@two.test", Outcome.FAILED, 550)]
    assert s.proto.transactions == 2 and s.proto.reusable


def test_rset_refused_is_a_session_failure_and_closes():
    s = session(keep_open=True)
    first_delivered(s)
    results = send(s)
    s.sent()
    s.server(b"500 5.5.1 what\r\n")
    assert s.lines() == [b"QUIT"]
    s.server(b"221 bye\r\n")
    s.close()
    (result,) = results
    assert result.session_failure
    assert [(r.outcome, r.stage) for r in result.recipients] == [(Outcome.DEFERRED, "rset")]


def test_421_to_rset_is_a_session_failure():
    s = session(keep_open=True)
    first_delivered(s)
    results = send(s)
    s.sent()
    s.server(b"421 4.4.2 closing\r\n")
    assert s.transport.disconnecting
    s.close()
    assert results[0].session_failure and results[0].recipients[0].code == 421


def test_connection_lost_while_idle_reports_nothing_and_fires_closed():
    s = session(keep_open=True)
    first_delivered(s)
    closed: list[None] = []
    s.proto.closed.addCallback(closed.append)
    s.close(error.ConnectionLost())
    assert closed == [None] and len(s.results) == 1 and not s.proto.reusable


def test_unsolicited_421_while_idle_closes_quietly():
    s = session(keep_open=True)
    first_delivered(s)
    s.server(b"421 4.4.2 idle timeout\r\n")
    assert s.transport.disconnecting and not s.proto.reusable


def test_a_local_refusal_keeps_the_session_for_the_next_message():
    s = session(keep_open=True)
    first_delivered(s, EHLO_PLAIN)  # no 8BITMIME
    results = send(s, message=EIGHT_BIT)
    assert s.lines() == [b"RSET"]
    s.server(b"250 ok\r\n")
    assert s.sent() == b""  # nothing sent for the 8-bit message
    (result,) = results
    assert [(r.code, r.enhanced, r.remote) for r in result.recipients] == [(554, "5.6.3", False)]
    assert s.proto.reusable
    results = send(s)
    assert s.lines() == [b"RSET"]
    s.server(b"250 ok\r\n")
    assert s.lines() == [b"MAIL FROM:<alice@one.test> SIZE=39"]


def test_a_refused_data_leaves_the_session_reusable():
    s = session(keep_open=True)
    first_delivered(s)
    results = send(s)
    s.sent()
    s.server(b"250 ok\r\n")
    s.sent()
    s.server(b"250 ok\r\n250 ok\r\n")
    assert s.lines() == [b"DATA"]
    s.server(b"451 4.3.0 try later\r\n")
    assert [(r.outcome, r.stage) for r in results[0].recipients] == [(Outcome.DEFERRED, "data")]
    assert s.proto.reusable


def test_an_odd_reply_code_ends_the_session_instead_of_idling():
    s = session(keep_open=True)
    first_delivered(s)
    results = send(s)
    s.sent()
    s.server(b"250 ok\r\n")
    s.sent()
    s.server(b"250 ok\r\n250 ok\r\n")
    s.sent()
    s.server(b"250 not 354\r\n")  # a server that is not where we think it is
    assert s.lines() == [b"QUIT"]
    assert not s.proto.reusable
    s.server(b"221 bye\r\n")
    s.close()
    assert [r.outcome for r in results[0].recipients] == [Outcome.DEFERRED]


def test_bdat_on_a_reused_session():
    s = session(keep_open=True)
    s.greet_and_ehlo(EHLO_CHUNKING)
    s.sent()
    s.server(b"250 ok\r\n250 ok\r\n")
    assert s.lines()[0].startswith(b"BDAT ")
    s.server(b"250 2.0.0 one\r\n")
    results = send(s, message=b"Subject: b\r\n\r\n.\r\n")
    assert s.lines() == [b"RSET"]
    s.server(b"250 ok\r\n")
    s.sent()
    s.server(b"250 ok\r\n250 ok\r\n")
    assert s.sent() == b"BDAT 17 LAST\r\nSubject: b\r\n\r\n.\r\n"
    s.server(b"250 2.0.0 two\r\n")
    assert [r.text for r in s.results[0].recipients] == ["250 2.0.0 one"]
    assert [r.text for r in results[0].recipients] == ["250 2.0.0 two"]


def test_a_timeout_on_a_reused_transaction_defers_and_closes():
    s = session(keep_open=True)
    first_delivered(s)
    results = send(s)
    s.sent()
    s.server(b"250 ok\r\n")
    s.clock.advance(301)  # no MAIL reply
    s.proto.connectionLost(Failure(error.ConnectionAborted()))
    assert [(r.outcome, r.stage) for r in results[0].recipients] == [(Outcome.DEFERRED, "mail")]
    assert results[0].session_failure  # nothing answered: the cache may retry elsewhere


def test_quit_ends_an_idle_session():
    s = session(keep_open=True)
    first_delivered(s)
    s.proto.quit()
    assert s.lines() == [b"QUIT"]
    s.server(b"221 bye\r\n")
    assert s.transport.disconnecting
