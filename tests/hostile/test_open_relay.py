"""Port 25 is never an open relay: every address trick for a foreign domain gets 5xx."""

from __future__ import annotations

import pytest

from tests.support.hostile import LEDGER, Conn, Suite, no_traceback, still_serves

RELAY_TRICKS = [
    "victim@other.example",
    "VICTIM@OTHER.EXAMPLE",
    "victim@other.example.",
    "victim@hostile.test.other.example",
    "victim%other.example@hostile.test",
    "victim%other.example@HOSTILE.TEST",
    "@hostile.test:victim@other.example",
    "@hostile.test,@relay.example:victim@other.example",
    '"victim@other.example"@hostile.test',
    '"victim%other.example"@hostile.test',
    "victim@other.example@hostile.test",
    "other.example!victim@hostile.test",
    "victim!other.example@hostile.test",
    "victim@[127.0.0.1]",
    "victim@[192.0.2.1]",
    "victim@[IPv6:::1]",
    "postmaster@[127.0.0.1]",
    "victim@other.example\x00@hostile.test",
    "victim@xn--bcher-kva.example",
    "victim@-hostile.test",
    "victim@hostile..test",
]


@pytest.mark.parametrize("rcpt", RELAY_TRICKS)
def test_relay_trick_is_refused_with_5xx(hostile_suite: Suite, rcpt: str) -> None:
    before = hostile_suite.spool_count()
    with Conn(hostile_suite.ports["smtp-25"]) as conn:
        assert conn.smtp()[0] == 220
        conn.send(b"EHLO relay-test.example\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"MAIL FROM:<spammer@spam.example>\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"RCPT TO:<" + rcpt.encode("utf-8", "surrogateescape") + b">\r\n")
        code, text = conn.smtp()
        LEDGER.tried_on("smtp-25")
        LEDGER.check("smtp-25", 500 <= code < 600, f"RCPT {rcpt!r} answered {code} {text!r}")
        # a DATA now must not be able to queue anything
        conn.send(b"DATA\r\n")
        code, _ = conn.smtp()
        LEDGER.check("smtp-25", code >= 500, f"DATA accepted after refused RCPT {rcpt!r}")
        no_traceback(conn)
    assert hostile_suite.spool_count() == before


def test_local_recipient_in_upper_case_is_still_local(hostile_suite: Suite) -> None:
    with Conn(hostile_suite.ports["smtp-25"]) as conn:
        assert conn.smtp()[0] == 220
        conn.send(b"EHLO relay-test.example\r\nMAIL FROM:<a@sender.example>\r\n"
                  b"RCPT TO:<CAROL@HOSTILE.TEST>\r\n")
        assert [conn.smtp()[0] for _ in range(3)] == [250, 250, 250]


def test_mta_still_serves_after_relay_attempts(hostile_suite: Suite) -> None:
    still_serves(hostile_suite, "smtp-25")
