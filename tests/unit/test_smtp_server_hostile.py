"""Regression tests for the twisted.mail defects (docs/architecture.md), and other hostile input."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import deferLater

from postroom.smtp import replies as R
from tests.unit.test_smtp_support import Harness, RecordingPolicy

MESSAGE = b"Subject: hi\r\n\r\n.leading dot\r\nHello\r\n"
STUFFED = b"Subject: hi\r\n\r\n..leading dot\r\nHello\r\n"


# --- CVE-2011-0411: plaintext pipelined after STARTTLS


def test_commands_pipelined_after_starttls_are_not_executed() -> None:
    harness = Harness()
    harness.take()
    harness.send(b"EHLO c.test\r\nSTARTTLS\r\nMAIL FROM:<evil@example.org>\r\n"
                 b"RCPT TO:<victim@example.net>\r\n")
    replies = harness.replies()
    assert replies[-1] == "220 2.0.0 Ready to start TLS"
    assert len(replies) == 2
    assert harness.transport.tls_started
    assert "mail_from" not in harness.policy.calls and "rcpt_to" not in harness.policy.calls


def test_session_state_resets_after_starttls() -> None:
    harness = Harness()
    harness.greet()
    harness.send(b"STARTTLS\r\n")
    harness.take()
    harness.send(b"MAIL FROM:<a@example.org>\r\n")
    assert harness.replies() == ["503 5.5.1 Send HELO/EHLO first"]
    assert harness.protocol.session.tls_active


def test_starttls_after_tls_is_refused() -> None:
    harness = Harness()
    harness.greet()
    harness.send(b"STARTTLS\r\n")
    harness.take()
    harness.send(b"EHLO c.test\r\nSTARTTLS\r\n")
    assert harness.replies()[-1] == "503 5.5.1 TLS already active"


def test_starttls_forgets_authentication() -> None:
    harness = Harness(RecordingPolicy(plaintext_auth=True))
    harness.greet()
    harness.send(b"AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U=\r\n")
    assert harness.codes() == [235]
    harness.send(b"STARTTLS\r\n")
    assert harness.protocol.session.identity is None


def test_starttls_without_certificate_is_502() -> None:
    harness = Harness(tls=False)
    harness.greet()
    harness.send(b"STARTTLS\r\n")
    assert harness.codes() == [502] and not harness.transport.tls_started


# --- over-long DATA line must never drop back to command mode


def test_over_long_data_line_never_makes_a_second_transaction() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"DATA\r\n" + b"A" * 5000 +
                 b"\r\nMAIL FROM:<x@example.org>\r\nRCPT TO:<y@example.net>\r\nDATA\r\n"
                 b"smuggled\r\n.\r\n")
    assert harness.codes() == [354, 500]
    assert harness.policy.delivered == []
    assert harness.policy.calls.count("mail_from") == 1


def test_over_long_data_line_arriving_in_pieces_is_still_one_message() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"DATA\r\n")
    for _ in range(50):
        harness.send(b"B" * 997)
    harness.send(b"\r\nMAIL FROM:<x@example.org>\r\n.\r\nNOOP\r\n")
    assert harness.codes() == [354, 500, 250]
    assert harness.policy.calls.count("mail_from") == 1


# --- bare LF / CR (SMTP smuggling)


def test_bare_lf_in_data_is_rejected_and_not_stored() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"DATA\r\nline one\nline two\r\n.\r\n")
    assert harness.replies()[-1] == R.BARE_LINE_ENDING.render().decode().strip()
    assert harness.policy.delivered == []


def test_lf_dot_lf_does_not_end_data_and_smuggled_commands_are_not_run() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"DATA\r\nhello\n.\nMAIL FROM:<x@example.org>\nRCPT TO:<y@example.net>\n"
                 b"DATA\nsmuggled\n.\n")
    assert harness.codes() == [354]
    harness.send(b"\r\n.\r\n")
    assert harness.codes() == [550]
    assert harness.policy.delivered == [] and harness.policy.calls.count("mail_from") == 1


def test_cr_dot_cr_does_not_end_data() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"DATA\r\nhello\r.\rMAIL FROM:<x@example.org>\r\n")
    assert harness.codes() == [354]
    harness.send(b".\r\n")
    assert harness.codes() == [550]


def test_lf_dot_crlf_does_not_end_data() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"DATA\r\nhello\n.\r\nNOOP\r\n")
    assert harness.codes() == [354]


# --- PIPELINING with a policy that answers later (Deferreds)


def test_pipelined_commands_with_a_deferred_policy_reply_in_order() -> None:
    harness = Harness(RecordingPolicy(delay=1.0))
    harness.clock.advance(1)
    harness.take()
    harness.send(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
                 b"RCPT TO:<nobody@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
    assert harness.take() == b""
    for _ in range(6):
        harness.clock.advance(1)
    assert harness.codes() == [250, 250, 250, 550, 250, 354]
    harness.send(MESSAGE + b".\r\nQUIT\r\n")
    harness.clock.advance(1)
    assert harness.codes() == [250, 221]
    envelope, _ = harness.policy.delivered[0]
    assert [str(r.address) for r in envelope.recipients] == ["b@example.net", "c@example.net"]


def test_input_is_paused_while_the_policy_is_pending() -> None:
    harness = Harness(RecordingPolicy(delay=1.0))
    harness.clock.advance(1)
    harness.send(b"EHLO c.test\r\nNOOP\r\n")
    assert harness.transport.producerState == "paused"
    harness.clock.advance(1)
    assert harness.transport.producerState == "producing"


def test_commands_sent_before_the_greeting_wait_for_it() -> None:
    harness = Harness(RecordingPolicy(delay=1.0))
    harness.send(b"EHLO c.test\r\n")
    assert harness.take() == b""
    harness.clock.advance(1)
    harness.clock.advance(1)
    assert harness.codes() == [220, 250]


class LateFailingPolicy(RecordingPolicy):
    """Answers after ``delay``; the call named in ``fail_later`` fails then (a lost database)."""

    fail_later: str | None = None

    def _answer(self, name: str, value: object) -> object:
        if name != self.fail_later:
            return super()._answer(name, value)
        self.calls.append(name)

        def fail() -> None:
            raise RuntimeError(f"late boom in {name}")

        return deferLater(self.clock, self.delay or 1.0, fail)


def test_a_policy_failing_later_gives_451_and_the_pipelined_commands_still_run_in_order() -> None:
    harness = Harness(LateFailingPolicy(delay=1.0))
    harness.policy.fail_later = "deliver"  # type: ignore[attr-defined]
    harness.clock.advance(1)
    harness.send(b"EHLO c.test\r\n")
    harness.clock.advance(1)
    harness.take()
    harness.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    for _ in range(3):
        harness.clock.advance(1)
    assert harness.codes() == [250, 250, 354]
    harness.send(MESSAGE + b".\r\nRCPT TO:<c@example.net>\r\nNOOP\r\n")
    assert harness.take() == b""
    assert harness.transport.producerState == "paused"
    harness.clock.advance(1)
    # the failed delivery ended the transaction before the pipelined RCPT ran
    wire = harness.take()
    assert [int(line[:3]) for line in wire.split(b"\r\n") if line] == [451, 503, 250]
    assert b"boom" not in wire
    assert harness.transport.producerState == "producing"


def test_the_peer_leaving_while_the_policy_thinks_ends_the_handler_silently(
        capsys: pytest.CaptureFixture[str]) -> None:
    harness = Harness(RecordingPolicy(delay=1.0))
    harness.clock.advance(1)
    harness.send(b"EHLO c.test\r\n")
    harness.clock.advance(1)
    harness.take()
    harness.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n")
    harness.lose()
    harness.clock.advance(5)
    assert harness.take() == b""
    assert harness.policy.calls.count("rcpt_to") == 0
    assert "smtp internal error" not in capsys.readouterr().out


def test_starttls_held_behind_a_pending_command_still_discards_what_follows_it() -> None:
    harness = Harness(RecordingPolicy(delay=1.0))
    harness.clock.advance(1)
    harness.take()
    harness.send(b"EHLO c.test\r\nSTARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
    harness.clock.advance(1)
    replies = harness.replies()
    assert replies[-1] == "220 2.0.0 Ready to start TLS" and len(replies) == 2
    assert harness.transport.tls_started
    harness.clock.advance(5)
    assert harness.take() == b"" and "mail_from" not in harness.policy.calls


def test_bdat_last_with_a_deferred_policy_answers_before_the_pipelined_command() -> None:
    harness = Harness(RecordingPolicy(delay=1.0))
    harness.clock.advance(1)
    harness.send(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n")
    for _ in range(3):
        harness.clock.advance(1)
    harness.take()
    harness.send(b"BDAT %d LAST\r\n" % len(MESSAGE) + MESSAGE + b"RSET\r\n")
    assert harness.take() == b""
    harness.clock.advance(1)
    assert harness.codes() == [250, 250]
    assert harness.policy.delivered[0][1] == MESSAGE


# --- dot-stuffing across arbitrary read boundaries


def test_dot_stuffed_message_sent_one_byte_at_a_time() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"DATA\r\n")
    for byte in STUFFED + b".\r\n":
        harness.send(bytes([byte]))
    assert harness.codes() == [354, 250]
    assert harness.policy.delivered[0][1] == MESSAGE


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(0, 200), max_size=6))
def test_fuzz_session_split_anywhere_delivers_exactly_one_message(cuts: list[int]) -> None:
    wire = (b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
            + STUFFED + b".\r\n.\r\nQUIT\r\n")
    harness = Harness()
    points = sorted({c % (len(wire) + 1) for c in cuts})
    for a, b in zip([0, *points], [*points, len(wire)], strict=True):
        harness.send(wire[a:b])
    assert harness.codes() == [220, 250, 250, 250, 354, 250, 500, 221]
    assert [m for _, m in harness.policy.delivered] == [MESSAGE]
