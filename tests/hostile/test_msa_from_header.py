"""The msa's From: check reads the whole header: a malformed line does not hide what follows.

alice is logged in on the submission port and tries to send as bob. Before the
fix the check stopped at the first line that was neither a field nor a
continuation, so a second ``From:`` after such a line reached recipients whose
reader skips the bad line (or takes the last From) unchecked.
"""

from __future__ import annotations

import secrets

from postroom_msa import replies as M
from tests.support.hostile import (
    LEDGER,
    Suite,
    address,
    no_traceback,
    smtp_send_ok,
    smtp_session,
)

LISTENER = "smtps-465"
ALICE, BOB = address("alice").encode(), address("bob").encode()


def submit(suite: Suite, header: bytes) -> tuple[int, bytes, bytes]:
    """(code, reply text, marker) of one submission by alice with ``header`` on top."""
    marker = f"from-check-{secrets.token_hex(6)}".encode()
    with smtp_session(suite, LISTENER) as conn:
        conn.send(b"MAIL FROM:<" + ALICE + b">\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"RCPT TO:<" + address("carol").encode() + b">\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"DATA\r\n")
        assert conn.smtp()[0] == 354
        conn.send(header + b"Subject: " + marker + b"\r\n\r\nhello\r\n.\r\n")
        code, text = conn.smtp()
        conn.send(b"QUIT\r\n")
        conn.smtp()
        no_traceback(conn)
    LEDGER.tried_on(LISTENER)
    return code, text, marker


def refused(suite: Suite, header: bytes, expected: int, what: str) -> None:
    code, text, marker = submit(suite, header)
    LEDGER.check(LISTENER, code == expected and suite.spool_count(marker) == 0,
                 f"{what}: {code} {text!r}")


def test_a_second_from_after_a_malformed_line_is_refused_as_not_owned(
        hostile_suite: Suite) -> None:
    for bad_line in (b"this line is no header field", b"X-Bad Name: looks like a field",
                     b"\tcontinuation of nothing:"):
        refused(hostile_suite, b"From: " + ALICE + b"\r\nTo: carol@hostile.test\r\n"
                + bad_line + b"\r\nFrom: " + BOB + b"\r\n", M.FROM_NOT_OWNED.code,
                f"bob's From: after {bad_line!r} went out")


def test_a_foreign_from_spelt_for_lenient_readers_is_refused(hostile_suite: Suite) -> None:
    refused(hostile_suite, b"From: " + ALICE + b"\r\nno field here\r\nFrom\x01: " + BOB
            + b"\r\n", M.FROM_NOT_OWNED.code, "a From\\x01: field went out unchecked")


def test_two_from_fields_are_refused_even_with_a_malformed_line_between(
        hostile_suite: Suite) -> None:
    # both owned: RFC 5322 allows one From field, so it is the count that refuses it
    refused(hostile_suite, b"From: " + ALICE + b"\r\nnot a field\r\nFrom: Alice <" + ALICE
            + b">\r\n", M.NEED_ONE_FROM.code, "two From: fields went out")
    refused(hostile_suite, b"From: " + ALICE + b"\r\nFrom: " + ALICE + b"\r\n",
            M.NEED_ONE_FROM.code, "two From: fields went out")


def test_a_normal_message_still_goes(hostile_suite: Suite) -> None:
    code, text, marker = submit(hostile_suite, b"From: Alice <" + ALICE + b">\r\n"
                                b"To: carol@hostile.test\r\nX-Folded: one\r\n two\r\n")
    assert code == 250, text
    LEDGER.check_lost(LISTENER, 1, hostile_suite.spool_count(marker), "a normal submission")
    smtp_send_ok(hostile_suite, LISTENER)
