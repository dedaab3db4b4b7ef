"""The outbound SMTP client state machine over StringTransport and task.Clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from twisted.internet import error, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from postroom_mta.smtpclient import (
    DeliveryResult,
    Envelope,
    Outcome,
    Recipient,
    SMTPClientProtocol,
    Timeouts,
    TLSPolicy,
)
from postroom_mta.smtpclient_data import unstuff
from postroom_mta.smtpclient_parse import scan_message

MESSAGE = b"From: a@one.test\r\nSubject: hi\r\n\r\nbody\r\n"
EHLO_FULL = (b"250-mx.two.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n"
             b"250-SMTPUTF8\r\n250 DSN\r\n")
EHLO_PLAIN = b"250-mx.two.test\r\n250 SIZE\r\n"


class TLSTransport(StringTransport):
    """StringTransport that records startTLS (the real handshake is an integration test)."""

    def __init__(self) -> None:
        super().__init__()
        self.tls_started_with = None

    def startTLS(self, creator):
        self.tls_started_with = creator


@dataclass
class Session:
    proto: SMTPClientProtocol
    transport: StringTransport
    clock: task.Clock
    results: list[DeliveryResult] = field(default_factory=list)

    def server(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def sent(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def lines(self) -> list[bytes]:
        return self.sent().split(b"\r\n")[:-1]

    def pump(self) -> bytes:
        """Let the producer write the whole body, as a real transport would."""
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        return self.sent()

    def close(self, reason: Exception | None = None) -> DeliveryResult:
        self.proto.connectionLost(Failure(reason or error.ConnectionDone()))
        assert self.results
        return self.results[0]

    def result(self) -> DeliveryResult:
        """The result once the client has closed the connection itself."""
        assert self.transport.disconnecting
        return self.close()

    def greet_and_ehlo(self, ehlo: bytes = EHLO_FULL) -> None:
        self.server(b"220 mx.two.test ESMTP\r\n")
        assert self.lines() == [b"EHLO one.test"]
        self.server(ehlo)


def session(recipients=("bob@two.test",), message: bytes = MESSAGE, mail_from="alice@one.test",
            transport: StringTransport | None = None, **kwargs) -> Session:
    clock = task.Clock()
    kwargs.setdefault("tls", TLSPolicy(use_tls=False))
    envelope = kwargs.pop("envelope", None) or Envelope.of(mail_from, recipients)
    proto = SMTPClientProtocol(envelope, message, scan_message([message]), helo_name="one.test",
                               clock=clock, host="mx.two.test", address="127.0.0.1", **kwargs)
    s = Session(proto, transport or StringTransport(), clock)
    proto.finished.addCallback(s.results.append)
    proto.makeConnection(s.transport)
    return s


def outcomes(result: DeliveryResult) -> list[tuple[str, Outcome, int]]:
    return [(r.recipient, r.outcome, r.code) for r in result.recipients]


def deliver_pipelined(s: Session, rcpt_replies: bytes) -> None:
    s.greet_and_ehlo()
    s.sent()
    s.server(b"250 2.1.0 ok\r\n" + rcpt_replies)


# --- the happy path


def test_pipelined_transaction_sends_mail_and_rcpts_in_one_write():
    s = session(recipients=("bob@two.test", "carol@two.test"))
    s.greet_and_ehlo()
    assert s.lines() == [b"MAIL FROM:<alice@one.test> SIZE=39", b"RCPT TO:<bob@two.test>",
                         b"RCPT TO:<carol@two.test>"]
    s.server(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n")
    assert s.lines() == [b"DATA"]
    s.server(b"354 go ahead\r\n")
    assert unstuff(s.pump()) == MESSAGE
    s.server(b"250 2.0.0 queued as X1\r\n")
    assert s.lines() == [b"QUIT"]
    s.server(b"221 2.0.0 bye\r\n")
    result = s.result()
    assert outcomes(result) == [("bob@two.test", Outcome.DELIVERED, 250),
                                ("carol@two.test", Outcome.DELIVERED, 250)]
    assert result.recipients[0].text == "250 2.0.0 queued as X1"
    assert result.recipients[0].host == "mx.two.test"
    assert not result.session_failure


def test_without_pipelining_each_command_waits_for_its_reply():
    s = session(recipients=("bob@two.test", "carol@two.test"))
    s.greet_and_ehlo(EHLO_PLAIN)
    assert s.lines() == [b"MAIL FROM:<alice@one.test> SIZE=39"]
    s.server(b"250 ok\r\n")
    assert s.lines() == [b"RCPT TO:<bob@two.test>"]
    s.server(b"250 ok\r\n")
    assert s.lines() == [b"RCPT TO:<carol@two.test>"]
    s.server(b"250 ok\r\n")
    assert s.lines() == [b"DATA"]


def test_ehlo_5xx_falls_back_to_helo_without_extensions():
    s = session()
    s.server(b"220 old.two.test SMTP\r\n")
    s.sent()
    s.server(b"502 5.5.1 what?\r\n")
    assert s.lines() == [b"HELO one.test"]
    s.server(b"250 old.two.test\r\n")
    assert s.lines() == [b"MAIL FROM:<alice@one.test>"]


def test_ehlo_and_helo_5xx_is_a_temporary_session_failure():
    s = session()
    s.server(b"220 x\r\n")
    s.server(b"500 no\r\n")
    s.server(b"550 5.7.1 go away\r\n")
    assert s.lines()[-1] == b"QUIT"
    s.server(b"221 bye\r\n")
    result = s.result()
    assert result.session_failure
    assert outcomes(result) == [("bob@two.test", Outcome.DEFERRED, 550)]
    assert result.recipients[0].stage == "helo"


def test_multi_line_banner_is_read_whole():
    s = session()
    s.server(b"220-mx.two.test\r\n220-welcome\r\n")
    assert s.sent() == b""
    s.server(b"220 ready\r\n")
    assert s.lines() == [b"EHLO one.test"]


def test_replies_ending_in_bare_lf_are_understood():
    s = session()
    s.server(b"220 x\n")
    assert s.lines() == [b"EHLO one.test"]


# --- per-recipient results and failures at each stage


def test_per_recipient_results_mix_delivered_deferred_failed():
    s = session(recipients=("a@two.test", "b@two.test", "c@two.test"))
    deliver_pipelined(s, b"250 ok\r\n450 4.2.1 busy\r\n550 5.1.1 unknown\r\n")
    assert s.lines() == [b"DATA"]
    s.server(b"354 go\r\n")
    s.pump()
    s.server(b"250 2.0.0 ok\r\n")
    s.server(b"221 bye\r\n")
    assert outcomes(s.result()) == [("a@two.test", Outcome.DELIVERED, 250),
                                    ("b@two.test", Outcome.DEFERRED, 450),
                                    ("c@two.test", Outcome.FAILED, 550)]


def test_no_accepted_recipient_means_no_data():
    s = session(recipients=("a@two.test", "b@two.test"))
    deliver_pipelined(s, b"550 5.1.1 no\r\n451 4.3.0 later\r\n")
    assert s.lines() == [b"QUIT"]
    s.server(b"221 bye\r\n")
    result = s.result()
    assert outcomes(result) == [("a@two.test", Outcome.FAILED, 550),
                                ("b@two.test", Outcome.DEFERRED, 451)]
    assert result.recipients[0].enhanced == "5.1.1" and result.recipients[0].stage == "rcpt"


@pytest.mark.parametrize("code,outcome", [(451, Outcome.DEFERRED), (553, Outcome.FAILED)])
def test_mail_from_failure_applies_to_every_recipient(code, outcome):
    s = session(recipients=("a@two.test", "b@two.test"))
    s.greet_and_ehlo()
    s.sent()
    s.server(b"%d sender refused\r\n503 no mail\r\n503 no mail\r\n" % code)
    assert s.lines() == [b"QUIT"]
    result = s.result() if s.transport.disconnecting else s.close()
    assert outcomes(result) == [("a@two.test", outcome, code), ("b@two.test", outcome, code)]
    assert not result.session_failure


@pytest.mark.parametrize("code,outcome", [(451, Outcome.DEFERRED), (554, Outcome.FAILED)])
def test_data_refusal_applies_to_accepted_recipients(code, outcome):
    s = session()
    deliver_pipelined(s, b"250 ok\r\n")
    s.sent()
    s.server(b"%d no data\r\n" % code)
    assert s.lines() == [b"QUIT"]
    assert outcomes(s.close()) == [("bob@two.test", outcome, code)]


@pytest.mark.parametrize("code,outcome", [(452, Outcome.DEFERRED), (552, Outcome.FAILED)])
def test_end_of_data_refusal_applies_to_accepted_recipients(code, outcome):
    s = session()
    deliver_pipelined(s, b"250 ok\r\n")
    s.server(b"354 go\r\n")
    s.pump()
    s.server(b"%d 5.3.4 too big\r\n" % code)
    result = s.close()
    assert outcomes(result) == [("bob@two.test", outcome, code)]
    assert result.recipients[0].stage == "data-end"


@pytest.mark.parametrize("code,outcome", [(421, Outcome.DEFERRED), (554, Outcome.DEFERRED),
                                          (450, Outcome.DEFERRED)])
def test_failing_greeting_is_a_temporary_session_failure(code, outcome):
    s = session()
    s.server(b"%d 4.3.2 not now\r\n" % code)
    result = s.close()
    assert result.session_failure
    assert outcomes(result) == [("bob@two.test", outcome, code)]


def test_421_mid_transaction_closes_and_defers_the_unanswered():
    s = session(recipients=("a@two.test", "b@two.test"))
    deliver_pipelined(s, b"550 5.1.1 no such user\r\n421 4.3.2 shutting down\r\n")
    assert s.transport.disconnecting
    assert b"QUIT" not in s.sent()
    assert outcomes(s.close()) == [("a@two.test", Outcome.FAILED, 550),
                                   ("b@two.test", Outcome.DEFERRED, 421)]


def test_connection_lost_after_the_final_dot_defers():
    s = session()
    deliver_pipelined(s, b"250 ok\r\n")
    s.server(b"354 go\r\n")
    s.pump()
    result = s.close(error.ConnectionLost())
    assert outcomes(result) == [("bob@two.test", Outcome.DEFERRED, 451)]
    assert result.recipients[0].stage == "data-end"
    assert not result.recipients[0].remote


def test_connection_lost_after_delivery_keeps_delivered():
    s = session()
    deliver_pipelined(s, b"250 ok\r\n")
    s.server(b"354 go\r\n")
    s.pump()
    s.server(b"250 ok\r\n")
    assert outcomes(s.close(error.ConnectionLost())) == [("bob@two.test", Outcome.DELIVERED, 250)]


# --- garbage from the server


@pytest.mark.parametrize("garbage", [b"HTTP/1.1 400 Bad Request\r\n", b"25O ok\r\n",
                                     b"\x16\x03\x01\x02\x00\r\n", b"250-a\r\n251 b\r\n"])
def test_garbage_reply_is_a_temporary_failure(garbage):
    s = session()
    s.server(b"220 x\r\n")
    s.server(garbage)
    assert s.transport.disconnecting
    result = s.close()
    assert outcomes(result) == [("bob@two.test", Outcome.DEFERRED, 451)]
    assert result.recipients[0].enhanced == "4.5.0"
    assert result.session_failure


def test_overlong_reply_line_is_a_temporary_failure():
    s = session()
    s.server(b"220 " + b"x" * 10000 + b"\r\n")
    assert s.transport.disconnecting
    assert outcomes(s.close()) == [("bob@two.test", Outcome.DEFERRED, 451)]


def test_unsolicited_reply_during_the_body_is_a_temporary_failure():
    s = session(message=b"x" * 100_000, chunk_size=16 * 1024)
    deliver_pipelined(s, b"250 ok\r\n")
    s.server(b"354 go\r\n")
    s.transport.producer.resumeProducing()
    s.server(b"250 2.0.0 early\r\n")
    assert s.transport.disconnecting
    assert s.transport.producer is None  # else a real transport would never close
    result = s.close()
    assert outcomes(result) == [("bob@two.test", Outcome.DEFERRED, 451)]


def test_unexpected_positive_rcpt_code_is_not_delivery():
    s = session()
    deliver_pipelined(s, b"354 what\r\n")
    assert s.lines() == [b"QUIT"]
    assert outcomes(s.close()) == [("bob@two.test", Outcome.DEFERRED, 451)]


# --- extensions: SIZE, 8BITMIME, SMTPUTF8, DSN


def test_8bit_message_is_sent_with_body_8bitmime():
    message = b"Subject: x\r\n\r\nb\xc3\xa9\r\n"
    s = session(message=message)
    s.greet_and_ehlo()
    assert s.lines()[0] == b"MAIL FROM:<alice@one.test> SIZE=19 BODY=8BITMIME"


def test_8bit_message_to_server_without_8bitmime_fails_5_6_3_and_sends_nothing():
    s = session(message=b"Subject: x\r\n\r\nb\xc3\xa9\r\n")
    s.greet_and_ehlo(EHLO_PLAIN)
    assert s.lines() == [b"QUIT"]
    s.server(b"221 bye\r\n")
    result = s.result()
    assert outcomes(result) == [("bob@two.test", Outcome.FAILED, 554)]
    assert result.recipients[0].enhanced == "5.6.3" and not result.recipients[0].remote
    assert not result.session_failure


def test_7bit_message_to_server_without_8bitmime_is_sent_as_is():
    s = session()
    s.greet_and_ehlo(EHLO_PLAIN)
    assert s.lines() == [b"MAIL FROM:<alice@one.test> SIZE=39"]


def test_utf8_address_uses_smtputf8():
    s = session(recipients=("jöran@two.test",))
    s.greet_and_ehlo()
    assert s.lines() == [b"MAIL FROM:<alice@one.test> SIZE=39 SMTPUTF8",
                         "RCPT TO:<jöran@two.test>".encode()]


def test_utf8_address_to_server_without_smtputf8_fails_5_6_7():
    s = session(recipients=("jöran@two.test",))
    s.greet_and_ehlo(EHLO_PLAIN)
    assert s.lines() == [b"QUIT"]
    result = s.close()
    assert outcomes(result) == [("jöran@two.test", Outcome.FAILED, 553)]
    assert result.recipients[0].enhanced == "5.6.7"


def test_utf8_headers_to_server_without_smtputf8_fails_5_6_9():
    s = session(message="Subject: héllo\r\n\r\nx\r\n".encode())
    s.greet_and_ehlo(b"250-mx\r\n250 8BITMIME\r\n")
    assert s.lines() == [b"QUIT"]
    assert s.close().recipients[0].enhanced == "5.6.9"


def test_message_over_advertised_size_fails_5_3_4_without_sending():
    s = session(message=b"x" * 2000)
    s.greet_and_ehlo(b"250-mx\r\n250 SIZE 1000\r\n")
    assert s.lines() == [b"QUIT"]
    result = s.close()
    assert outcomes(result) == [("bob@two.test", Outcome.FAILED, 552)]
    assert result.recipients[0].enhanced == "5.3.4"


def test_dsn_parameters_are_sent_when_offered():
    envelope = Envelope.of("alice@one.test", [Recipient("bob@two.test", ("SUCCESS", "FAILURE"),
                                                        "Bob+x@two.test")],
                           ret="HDRS", envid="q 1")
    s = session(envelope=envelope)
    s.greet_and_ehlo()
    assert s.lines() == [b"MAIL FROM:<alice@one.test> SIZE=39 RET=HDRS ENVID=q+201",
                         b"RCPT TO:<bob@two.test> NOTIFY=SUCCESS,FAILURE"
                         b" ORCPT=rfc822;Bob+2Bx@two.test"]


def test_dsn_parameters_are_omitted_when_not_offered():
    envelope = Envelope.of("alice@one.test", [Recipient("bob@two.test", ("NEVER",), "b@t")],
                           ret="FULL", envid="q1")
    s = session(envelope=envelope)
    s.greet_and_ehlo(b"250-mx\r\n250 PIPELINING\r\n")
    assert s.lines() == [b"MAIL FROM:<alice@one.test>", b"RCPT TO:<bob@two.test>"]


def test_malformed_dsn_values_are_never_sent():
    envelope = Envelope.of("alice@one.test",
                           [Recipient("bob@two.test", ("SUCCESS\r\nRSET",), None)],
                           ret="FULL\r\nRSET", envid="é")
    s = session(envelope=envelope)
    s.greet_and_ehlo()
    assert s.lines() == [b"MAIL FROM:<alice@one.test> SIZE=39", b"RCPT TO:<bob@two.test>"]


def test_null_sender_is_sent_as_empty_path():
    s = session(mail_from="")
    s.greet_and_ehlo(b"250 mx\r\n")
    assert s.lines() == [b"MAIL FROM:<>"]


def test_recipient_with_line_break_is_refused_locally_and_never_sent():
    s = session(recipients=("bob@two.test>\r\nRSET", "carol@two.test"))
    s.greet_and_ehlo(b"250-mx\r\n250 PIPELINING\r\n")
    assert s.lines() == [b"MAIL FROM:<alice@one.test>", b"RCPT TO:<carol@two.test>"]
    s.server(b"250 ok\r\n250 ok\r\n")
    s.sent()
    s.server(b"354 go\r\n")
    s.pump()
    s.server(b"250 ok\r\n")
    assert outcomes(s.close()) == [("bob@two.test>\r\nRSET", Outcome.FAILED, 553),
                                   ("carol@two.test", Outcome.DELIVERED, 250)]


# --- the body on the wire


@pytest.mark.parametrize("chunk_size", [16 * 1024, 64 * 1024])
def test_dot_lines_on_every_chunk_boundary_offset_are_stuffed(chunk_size):
    lines = []
    for n in range(chunk_size - 4, chunk_size + 5):
        lines.append(b"z" * n + b"\r\n.\r\n")
    message = b"Subject: dots\r\n\r\n" + b"".join(lines) + b".\r\n"
    s = session(message=message, chunk_size=chunk_size)
    s.greet_and_ehlo(b"250-mx\r\n250 PIPELINING\r\n")
    s.sent()
    s.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert s.sent() == b"DATA\r\n"
    wire = s.pump()
    assert wire.count(b"\r\n.\r\n") == 1 and wire.endswith(b"\r\n.\r\n")
    assert unstuff(wire) == message


def test_message_is_written_in_chunks_not_one_string():
    message = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 200
    s = session(message=message, chunk_size=16 * 1024)
    deliver_pipelined(s, b"250 ok\r\n")
    s.sent()
    s.server(b"354 go\r\n")
    writes = 0
    while s.transport.producer is not None:
        s.transport.producer.resumeProducing()
        writes += 1
    assert writes == len(message) // (16 * 1024) + 2  # full chunks, the tail, the final dot


def test_bare_dot_only_message():
    s = session(message=b".\r\n")
    deliver_pipelined(s, b"250 ok\r\n")
    s.sent()
    s.server(b"354 go\r\n")
    assert s.pump() == b"..\r\n.\r\n"


# --- timeouts (RFC 5321 4.5.3.2), on task.Clock


def test_banner_timeout_defers_as_session_failure():
    s = session(timeouts=Timeouts(initial=300))
    s.clock.advance(299)
    assert not s.transport.disconnecting
    s.clock.advance(1)
    assert s.transport.disconnecting
    result = s.close()
    assert result.session_failure
    assert outcomes(result) == [("bob@two.test", Outcome.DEFERRED, 451)]
    assert result.recipients[0].enhanced == "4.4.2" and result.recipients[0].stage == "banner"


@pytest.mark.parametrize("stage,timeout", [("mail", 300), ("rcpt", 300)])
def test_envelope_reply_timeouts(stage, timeout):
    s = session(timeouts=Timeouts(mail=300, rcpt=300))
    s.greet_and_ehlo(EHLO_PLAIN)
    s.sent()
    if stage == "rcpt":
        s.server(b"250 ok\r\n")
    s.clock.advance(timeout - 1)
    assert not s.transport.disconnecting
    s.clock.advance(1)
    assert s.transport.disconnecting
    result = s.close()
    assert result.recipients[0].stage == stage
    assert result.recipients[0].outcome is Outcome.DEFERRED


def test_data_init_timeout_is_two_minutes():
    s = session()
    deliver_pipelined(s, b"250 ok\r\n")
    s.clock.advance(119)
    assert not s.transport.disconnecting
    s.clock.advance(1)
    assert s.close().recipients[0].stage == "data"


def test_data_block_timeout_when_the_transport_stops_taking_data():
    s = session(message=b"x" * 200_000, chunk_size=16 * 1024)
    deliver_pipelined(s, b"250 ok\r\n")
    s.server(b"354 go\r\n")
    s.transport.producer.resumeProducing()
    s.clock.advance(179)
    s.transport.producer.resumeProducing()  # progress re-arms the block timer
    s.clock.advance(179)
    assert not s.transport.disconnecting
    s.clock.advance(1)
    assert s.transport.disconnecting
    result = s.close()
    assert result.recipients[0].stage == "data-block"
    assert result.recipients[0].outcome is Outcome.DEFERRED


def test_data_end_timeout_is_ten_minutes():
    s = session()
    deliver_pipelined(s, b"250 ok\r\n")
    s.server(b"354 go\r\n")
    s.pump()
    s.clock.advance(599)
    assert not s.transport.disconnecting
    s.clock.advance(1)
    result = s.close()
    assert result.recipients[0].stage == "data-end"
    assert result.recipients[0].outcome is Outcome.DEFERRED


def test_no_timer_is_left_after_the_session():
    s = session()
    deliver_pipelined(s, b"250 ok\r\n")
    s.server(b"354 go\r\n")
    s.pump()
    s.server(b"250 ok\r\n221 bye\r\n")
    s.result()
    assert s.clock.getDelayedCalls() == []


# --- STARTTLS


def test_starttls_is_used_when_offered_then_ehlo_again():
    s = session(tls=TLSPolicy(), transport=TLSTransport())
    s.greet_and_ehlo(b"250-mx\r\n250 STARTTLS\r\n")
    assert s.lines() == [b"STARTTLS"]
    s.server(b"220 2.0.0 go\r\n")
    assert s.transport.tls_started_with is not None
    assert s.lines() == [b"EHLO one.test"]
    s.server(b"250-mx\r\n250 STARTTLS\r\n")
    assert s.lines() == [b"MAIL FROM:<alice@one.test>"]  # no second STARTTLS


def test_plaintext_injected_after_starttls_is_discarded():
    s = session(tls=TLSPolicy(), transport=TLSTransport())
    s.greet_and_ehlo(b"250-mx\r\n250 STARTTLS\r\n")
    s.sent()
    # a man in the middle appends a forged EHLO reply to the 220 (CVE-2011-0411 class)
    s.server(b"220 go\r\n250-evil\r\n250 PIPELINING\r\n")
    assert s.lines() == [b"EHLO one.test"]
    s.server(b"250-mx\r\n250 SIZE\r\n")
    assert s.lines() == [b"MAIL FROM:<alice@one.test> SIZE=39"]


def test_starttls_refused_continues_in_clear_when_opportunistic():
    s = session(tls=TLSPolicy(), transport=TLSTransport())
    s.greet_and_ehlo(b"250-mx\r\n250 STARTTLS\r\n")
    s.sent()
    s.server(b"454 4.7.0 TLS not available\r\n")
    assert s.lines() == [b"MAIL FROM:<alice@one.test>"]


def test_required_tls_without_starttls_defers_without_sending():
    s = session(tls=TLSPolicy(required=True), transport=TLSTransport())
    s.greet_and_ehlo(b"250-mx\r\n250 PIPELINING\r\n")
    assert s.lines() == [b"QUIT"]
    result = s.close()
    assert result.session_failure
    assert outcomes(result) == [("bob@two.test", Outcome.DEFERRED, 451)]
    assert result.recipients[0].enhanced == "4.7.4"


def test_connection_lost_during_tls_handshake_is_a_tls_failure():
    s = session(tls=TLSPolicy(), transport=TLSTransport())
    s.greet_and_ehlo(b"250-mx\r\n250 STARTTLS\r\n")
    s.server(b"220 go\r\n")
    result = s.close(error.ConnectionLost())
    assert result.session_failure
    assert result.recipients[0].enhanced == "4.7.5"


def test_tls_handshake_timeout_is_a_tls_failure():
    s = session(tls=TLSPolicy(), transport=TLSTransport(), timeouts=Timeouts(helo=30))
    s.greet_and_ehlo(b"250-mx\r\n250 STARTTLS\r\n")
    s.server(b"220 go\r\n")
    s.clock.advance(30)
    assert s.transport.disconnecting
    assert s.close().recipients[0].enhanced == "4.7.5"


def test_ehlo_4xx_is_a_temporary_session_failure():
    s = session()
    s.server(b"220 x\r\n")
    s.server(b"451 4.3.0 later\r\n")
    assert s.lines()[-1] == b"QUIT"
    result = s.close()
    assert result.session_failure
    assert outcomes(result) == [("bob@two.test", Outcome.DEFERRED, 451)]
