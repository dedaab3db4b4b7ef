"""The DSN builder (RFC 3464): structure, fields, RET and NOTIFY handling, error round-trips."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

import pytest

from postroom_mta import bounce
from postroom_mta.bounce import DELAYED, FAILED, DSNRecipient, Original

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MESSAGE = (b"From: alice@one.test\r\nTo: bob@two.test\r\nSubject: hello\r\n"
           b"Message-ID: <m1@one.test>\r\n\r\nthe body line\r\n")
REMOTE_ERROR = bounce.format_error("550 5.1.1 No such user", host="mx.two.test",
                                   address="127.0.0.1", stage="rcpt", remote=True)


def original(**changes):
    fields = {"queue_id": "Q123", "mail_from": "alice@one.test", "message": MESSAGE,
              "received_at": NOW, "envid": "ENV-42", "ret": None}
    fields.update(changes)
    return Original(**fields)


def parse(dsn: bytes):
    return email.message_from_bytes(dsn, policy=email.policy.default)


def report(dsn: bytes):
    """(per-message fields, [per-recipient fields]) of the message/delivery-status part."""
    part = parse(dsn).get_payload()[1]
    assert part.get_content_type() == "message/delivery-status"
    blocks = part.get_payload()
    return blocks[0], blocks[1:]


def make(recipients=None, **changes):
    recipients = recipients or [DSNRecipient("bob@two.test", REMOTE_ERROR, "bob@two.test")]
    return bounce.build_dsn(original(**changes), recipients, hostname="mx.one.test", now=NOW)


def test_dsn_is_a_multipart_report_of_three_parts():
    msg = parse(make())
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in msg.get_payload()] == [
        "text/plain", "message/delivery-status", "message/rfc822"]


def test_dsn_comes_from_the_mailer_daemon_and_is_auto_replied():
    msg = parse(make())
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.one.test"
    assert msg["To"].addresses[0].addr_spec == "alice@one.test"
    assert msg["Auto-Submitted"] == "auto-replied"


def test_per_message_fields_carry_reporting_mta_envid_and_arrival():
    per_message, _ = report(make())
    assert per_message["Reporting-MTA"] == "dns; mx.one.test"
    assert per_message["Original-Envelope-Id"] == "ENV-42"
    assert per_message["Arrival-Date"] == "Wed, 01 May 2024 12:00:00 +0000"


def test_per_recipient_fields_of_a_remote_rejection():
    _, [rcpt] = report(make())
    assert rcpt["Final-Recipient"] == "rfc822; bob@two.test"
    assert rcpt["Original-Recipient"] == "rfc822; bob@two.test"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx.two.test"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user"


def test_a_local_error_has_no_remote_mta_and_a_non_smtp_diagnostic():
    error = "556 5.1.10 Domain two.test accepts no mail (null MX)"
    _, [rcpt] = report(make([DSNRecipient("bob@two.test", error)]))
    assert rcpt["Status"] == "5.1.10"
    assert rcpt["Remote-MTA"] is None
    assert rcpt["Diagnostic-Code"].startswith("X-Postroom; 556 5.1.10")


def test_every_recipient_gets_its_own_block():
    rcpts = [DSNRecipient("bob@two.test", REMOTE_ERROR),
             DSNRecipient("carol@two.test", "550 mailbox full")]
    _, blocks = report(make(rcpts))
    assert [b["Final-Recipient"] for b in blocks] == ["rfc822; bob@two.test",
                                                      "rfc822; carol@two.test"]
    assert blocks[1]["Status"] == "5.0.0"  # no enhanced code: the class of the reply


def test_orcpt_with_an_address_type_is_reported_as_its_address():
    _, [rcpt] = report(make([DSNRecipient("bob@two.test", REMOTE_ERROR, "rfc822;Bob@Two.test")]))
    assert rcpt["Original-Recipient"] == "rfc822; Bob@Two.test"


def test_ret_full_returns_the_whole_message_byte_exact():
    returned = parse(make(ret="FULL")).get_payload()[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["Subject"] == "hello"
    assert inner.get_content().strip() == "the body line"


def test_ret_hdrs_returns_only_the_header():
    dsn = make(ret="HDRS")
    part = parse(dsn).get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert b"Subject: hello" in dsn and b"the body line" not in dsn


def test_without_ret_a_large_message_returns_only_its_header():
    big = MESSAGE + b"x" * 200 + b"\r\n"
    dsn = bounce.build_dsn(original(message=big), [DSNRecipient("bob@two.test", REMOTE_ERROR)],
                           hostname="mx.one.test", now=NOW, full_limit=100)
    assert parse(dsn).get_payload()[2].get_content_type() == "text/rfc822-headers"


def test_a_delay_notice_says_delayed_and_returns_only_headers():
    rcpt = DSNRecipient("bob@two.test", "451 4.4.1 Connection refused", action=DELAYED,
                        will_retry_until=NOW)
    msg = parse(make([rcpt], ret="FULL"))
    _, [block] = report(make([rcpt], ret="FULL"))
    assert block["Action"] == "delayed" and block["Status"] == "4.4.1"
    assert block["Will-Retry-Until"] == "Wed, 01 May 2024 12:00:00 +0000"
    assert msg.get_payload()[2].get_content_type() == "text/rfc822-headers"


def test_mixed_actions_are_refused():
    with pytest.raises(ValueError):
        make([DSNRecipient("a@two.test", "550 x", action=FAILED),
               DSNRecipient("b@two.test", "451 y", action=DELAYED)])


def test_a_message_without_a_body_separator_is_returned_as_headers():
    assert bounce.header_block(b"Subject: x\r\nFrom: y") == b"Subject: x\r\nFrom: y\r\n"


def test_header_block_turns_bare_lf_into_crlf():
    assert bounce.header_block(b"Subject: x\nFrom: y\n\nbody") == b"Subject: x\r\nFrom: y\r\n"


def test_the_boundary_never_occurs_in_the_returned_message():
    clash = MESSAGE + b"--=_fixed\r\n"
    dsn = bounce.build_dsn(original(message=clash, ret="FULL"),
                           [DSNRecipient("bob@two.test", REMOTE_ERROR)], hostname="mx.one.test",
                           now=NOW, boundary="=_fixed")
    assert parse(dsn).get_boundary() != "=_fixed"


def test_control_characters_in_an_error_cannot_inject_fields():
    _, [rcpt] = report(make([DSNRecipient("bob@two.test", "550 bad\r\nStatus: 2.0.0")]))
    assert rcpt["Status"] == "5.0.0"
    assert "\n" not in rcpt["Diagnostic-Code"]


def test_envid_with_special_characters_is_xtext_encoded():
    per_message, _ = report(make(envid="a+b=c d"))
    assert per_message["Original-Envelope-Id"] == "a+2Bb+3Dc+20d"


@pytest.mark.parametrize(("notify", "failure", "delay"), [
    (None, True, False), ("", True, False), ("NEVER", False, False),
    ("SUCCESS", False, False), ("FAILURE,DELAY", True, True), ("delay", False, True),
])
def test_notify_decides_which_dsns_are_wanted(notify, failure, delay):
    assert bounce.wants_failure(notify) is failure
    assert bounce.wants_delay(notify) is delay


def test_notify_tuple_is_none_without_notify():
    assert bounce.notify_tuple(None) is None
    assert bounce.notify_tuple("failure,delay") == ("DELAY", "FAILURE")


def test_format_error_and_diagnose_round_trip_a_remote_reply():
    why = bounce.diagnose(REMOTE_ERROR)
    assert REMOTE_ERROR == ("host mx.two.test[127.0.0.1] said: 550 5.1.1 No such user "
                            "(in reply to RCPT TO command)")
    assert (why.status, why.remote_mta, why.text, why.remote) == (
        "5.1.1", "mx.two.test", "550 5.1.1 No such user", True)


def test_diagnose_an_unknown_error_defaults_to_the_action_class():
    assert bounce.diagnose("something odd").status == "5.0.0"
    assert bounce.diagnose("something odd", action=DELAYED).status == "4.0.0"
