"""Oversized everything: lines, literals, nesting, headers, messages, recipient counts.

Each input gets a protocol error (or a clean hang-up), nothing is stored, and
the service then answers a normal client.
"""

from __future__ import annotations

import secrets

import pytest

from tests.support.hostile import (
    LEDGER,
    Closed,
    Conn,
    Suite,
    address,
    no_traceback,
    sender_for,
    smtp_session,
    still_serves,
)

HUGE_LINE = b"A" * 200_000


def imap_login(conn: Conn, user: str = "alice") -> None:
    from tests.support.hostile import PASSWORD

    assert conn.line().startswith(b"* OK")
    conn.send(f'a LOGIN "{address(user)}" "{PASSWORD}"\r\n'.encode())
    assert conn.tagged(b"a")[1].startswith(b"a OK")


@pytest.mark.parametrize("listener", ["smtp-25", "smtp-587"])
def test_smtp_command_line_of_200k_is_refused(hostile_suite: Suite, listener: str) -> None:
    with Conn(hostile_suite.ports[listener]) as conn:
        assert conn.smtp()[0] == 220
        conn.send(b"EHLO " + HUGE_LINE + b"\r\n")
        try:
            code, _ = conn.smtp()
            assert code >= 500 or code == 421
        except Closed:
            pass
        no_traceback(conn)
    LEDGER.tried_on(listener)
    still_serves(hostile_suite, listener)


@pytest.mark.parametrize("listener", ["smtp-25", "smtps-465"])
def test_smtp_message_over_the_size_limit_is_552_and_not_spooled(hostile_suite: Suite,
                                                                 listener: str) -> None:
    marker = f"big-{secrets.token_hex(6)}".encode()
    body = (b"x" * 76 + b"\r\n") * 16_000  # 1.25 MB, over the campaign's 1M limit
    with smtp_session(hostile_suite, listener) as conn:
        conn.send(b"MAIL FROM:<" + sender_for(listener) + b">\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"RCPT TO:<carol@hostile.test>\r\nDATA\r\n")
        assert conn.smtp()[0] == 250
        assert conn.smtp()[0] == 354
        conn.send(b"Subject: " + marker + b"\r\n\r\n" + body + b".\r\n")
        code, _ = conn.smtp()
        LEDGER.tried_on(listener)
        LEDGER.check(listener, code == 552, f"oversized message answered {code}")
        no_traceback(conn)
    assert hostile_suite.spool_count(marker) == 0


@pytest.mark.parametrize("listener", ["smtp-25", "smtps-465"])
def test_smtp_header_and_body_lines_over_998_are_refused(hostile_suite: Suite,
                                                         listener: str) -> None:
    marker = f"longline-{secrets.token_hex(6)}".encode()
    with smtp_session(hostile_suite, listener) as conn:
        conn.send(b"MAIL FROM:<" + sender_for(listener) + b">\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"RCPT TO:<carol@hostile.test>\r\nDATA\r\n")
        assert conn.smtp()[0] == 250
        assert conn.smtp()[0] == 354
        conn.send(b"Subject: " + marker + b"\r\nX-Long: " + b"h" * 100_000 + b"\r\n\r\nbody\r\n"
                  b"MAIL FROM:<evil@x>\r\n.\r\nNOOP\r\n")
        code, _ = conn.smtp()
        assert code >= 500
        # the rest of the body was never read as commands: the next reply is our NOOP's
        code, text = conn.smtp()
        assert code == 250 and text.startswith(b"2.0.0"), (code, text)
        no_traceback(conn)
    LEDGER.tried_on(listener)
    assert hostile_suite.spool_count(marker) == 0


def test_ten_thousand_recipients_stop_at_the_recipient_limit(hostile_suite: Suite) -> None:
    with smtp_session(hostile_suite, "smtp-25") as conn:
        conn.send(b"MAIL FROM:<a@sender.example>\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"".join(b"RCPT TO:<carol+%d@hostile.test>\r\n" % i for i in range(10_000)))
        codes = []
        try:
            for _ in range(10_000):
                codes.append(conn.smtp()[0])
        except Closed:
            pass
        LEDGER.tried_on("smtp-25", len(codes))
        accepted = codes.count(250)
        LEDGER.check("smtp-25", accepted <= 100, f"{accepted} recipients accepted, limit 100")
        assert all(code in (250, 452, 421) or code >= 500 for code in codes)
        no_traceback(conn)
    still_serves(hostile_suite, "smtp-25")


def test_pop3_line_of_200k_is_refused(hostile_suite: Suite) -> None:
    with Conn(hostile_suite.ports["pop3-110"]) as conn:
        assert conn.line().startswith(b"+OK")
        conn.send(b"USER " + HUGE_LINE + b"\r\n")
        try:
            assert conn.line().startswith(b"-ERR")
        except Closed:
            pass
        no_traceback(conn)
    LEDGER.tried_on("pop3-110")
    still_serves(hostile_suite, "pop3-110")


IMAP_ATTACKS = {
    "literal-4g": b"x APPEND INBOX {4294967296}\r\n",
    "literal-huge-digits": b"x APPEND INBOX {99999999999999999999999999}\r\n",
    "literal-plus-past-limit": b"x LOGIN {70000+}\r\n" + b"a" * 70000 + b" pw\r\n",
    "nested-lists": b"x SEARCH " + b"(" * 10_000 + b"ALL" + b")" * 10_000 + b"\r\n",
    "nested-fetch": b"x FETCH 1 " + b"(" * 10_000 + b")" * 10_000 + b"\r\n",
    "huge-line": b"x SELECT " + HUGE_LINE + b"\r\n",
    "many-args": b"x STORE 1 +FLAGS (" + b" ".join([b"\\Seen"] * 30_000) + b")\r\n",
    "huge-set": b"x FETCH " + b",".join(b"%d" % i for i in range(1, 40_000)) + b" FLAGS\r\n",
}


@pytest.mark.parametrize("name", sorted(IMAP_ATTACKS))
def test_imap_oversized_input_gets_a_protocol_error(hostile_suite: Suite, name: str) -> None:
    before = hostile_suite.mailbox_state("alice")
    with Conn(hostile_suite.ports["imaps-993"], tls=True) as conn:
        imap_login(conn)
        conn.send(b"s SELECT INBOX\r\n")
        assert conn.tagged(b"s")[1].startswith(b"s OK")
        conn.send(IMAP_ATTACKS[name])
        try:
            _, done = conn.tagged(b"x")
            assert done.startswith((b"x NO", b"x BAD")), done
            conn.send(b"n NOOP\r\n")
            assert conn.tagged(b"n")[1].startswith(b"n OK")
        except Closed:
            # hanging up (with a BYE) is an acceptable answer to a hostile client
            assert b"* BYE" in conn.received
        no_traceback(conn)
    LEDGER.tried_on("imaps-993")
    assert hostile_suite.mailbox_state("alice") == before
    still_serves(hostile_suite, "imaps-993")
