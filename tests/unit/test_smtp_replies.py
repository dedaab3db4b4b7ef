"""Reply rendering: codes, enhanced status codes, multi-line replies."""

from __future__ import annotations

from postroom.smtp import replies as R
from postroom.smtp.replies import Reply


def test_single_line_reply_carries_enhanced_code() -> None:
    assert R.SENDER_OK.render() == b"250 2.1.0 Sender OK\r\n"


def test_multi_line_reply_uses_dash_until_the_last_line() -> None:
    reply = Reply(250, None, ("mx.test Hello x", "PIPELINING", "SIZE 10"))
    assert reply.render() == b"250-mx.test Hello x\r\n250-PIPELINING\r\n250 SIZE 10\r\n"


def test_multi_line_reply_repeats_enhanced_code_on_each_line() -> None:
    reply = Reply(550, "5.7.1", ("first", "second"))
    assert reply.render() == b"550-5.7.1 first\r\n550 5.7.1 second\r\n"


def test_line_breaks_in_text_cannot_forge_extra_replies() -> None:
    reply = Reply(250, "2.1.5", "<a@b>\r\n250 fake")
    assert reply.render().count(b"\r\n") == 1


def test_with_text_keeps_codes() -> None:
    reply = R.MESSAGE_ACCEPTED.with_text("Queued as ABC")
    assert reply.render() == b"250 2.0.0 Queued as ABC\r\n"


def test_every_error_constant_has_an_enhanced_code() -> None:
    constants = [value for value in vars(R).values() if isinstance(value, Reply)]
    assert all(reply.enhanced for reply in constants if reply.code >= 400)
