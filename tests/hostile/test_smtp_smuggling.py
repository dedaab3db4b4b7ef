"""SMTP smuggling: no end-of-data variant but <CRLF>.<CRLF> ends a message; never a second one.

Each variant hides a whole second transaction (MAIL, RCPT, DATA, a forged
message) behind a fake end of data. The server must either refuse the
message (bare CR/LF are refused with 5xx) or keep everything as one message;
the reply stream must hold exactly one reply to the DATA (or BDAT) and the
spool must never hold the smuggled message.
"""

from __future__ import annotations

import secrets

import pytest

from tests.support.hostile import (
    LEDGER,
    Conn,
    Suite,
    address,
    no_traceback,
    sender_for,
    smtp_session,
    still_serves,
)

VARIANTS = {
    "lf-dot-lf": b"\n.\n",
    "cr-dot-cr": b"\r.\r",
    "lf-dot-crlf": b"\n.\r\n",
    "crlf-dot-lf": b"\r\n.\n",
    "cr-dot-crlf": b"\r.\r\n",
    "crlf-dot-cr": b"\r\n.\r",
    "crlf-dot-nul-crlf": b"\r\n.\0\r\n",
}
LISTENERS = ["smtp-25", "smtps-465"]


def smuggled(listener: str, variant: bytes, marker: bytes) -> tuple[bytes, bytes]:
    """(the message with a second transaction hidden inside, the smuggled message's subject)."""
    evil_subject = b"smuggled-" + marker
    sender = sender_for(listener)
    carrier = (b"From: " + sender + b"\r\nTo: carol@hostile.test\r\nSubject: carrier-" + marker
               + b"\r\n\r\nfirst part" + variant
               + b"MAIL FROM:<" + sender + b">\r\nRCPT TO:<" + address("bob").encode()
               + b">\r\nDATA\r\nFrom: ceo@hostile.test\r\nSubject: " + evil_subject
               + b"\r\n\r\nwire the money\r\n")
    return carrier, evil_subject


def noop_answered(conn: Conn) -> bool:
    """The next reply is the one to our NOOP (2.0.0), not to a smuggled MAIL (2.1.0)."""
    code, text = conn.smtp()
    return code == 250 and text.startswith(b"2.0.0")


def no_smuggled_message(suite: Suite, listener: str, marker: bytes, evil: bytes) -> None:
    blobs = suite.spooled_blobs(marker)
    LEDGER.check(listener, len(blobs) <= 1, f"{len(blobs)} messages spooled from one DATA")
    for blob in blobs:
        head = blob.split(b"\r\n\r\n", 1)[0]
        LEDGER.check(listener, b"Subject: " + evil not in head,
                     "the smuggled message was spooled as a message of its own")


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_data_smuggling_variant_never_makes_a_second_message(hostile_suite: Suite,
                                                             listener: str, name: str) -> None:
    marker = secrets.token_hex(6).encode()
    carrier, evil = smuggled(listener, VARIANTS[name], marker)
    with smtp_session(hostile_suite, listener) as conn:
        conn.send(b"MAIL FROM:<" + sender_for(listener) + b">\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"RCPT TO:<carol@hostile.test>\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"DATA\r\n")
        assert conn.smtp()[0] == 354
        conn.send(carrier + b".\r\nNOOP\r\n")
        code, text = conn.smtp()
        assert code in (250, 550, 554), (code, text)
        # the next reply must answer our NOOP, not a smuggled MAIL FROM
        assert noop_answered(conn), "a smuggled command was answered"
        conn.send(b"QUIT\r\n")
        assert conn.smtp()[0] == 221
        no_traceback(conn)
    LEDGER.tried_on(listener)
    no_smuggled_message(hostile_suite, listener, marker, evil)


@pytest.mark.parametrize("listener", LISTENERS)
def test_bdat_chunks_with_every_variant_stay_one_message(hostile_suite: Suite,
                                                         listener: str) -> None:
    marker = secrets.token_hex(6).encode()
    with smtp_session(hostile_suite, listener) as conn:
        for name, variant in sorted(VARIANTS.items()):
            carrier, evil = smuggled(listener, variant, marker + name.encode())
            conn.send(b"MAIL FROM:<" + sender_for(listener) + b">\r\n")
            assert conn.smtp()[0] == 250
            conn.send(b"RCPT TO:<carol@hostile.test>\r\n")
            assert conn.smtp()[0] == 250
            half = len(carrier) // 2
            conn.send(b"BDAT %d\r\n" % half + carrier[:half])
            code, text = conn.smtp()
            if code == 250:
                rest = carrier[half:] + b".\r\n"
                conn.send(b"BDAT %d LAST\r\n" % len(rest) + rest)
                code, text = conn.smtp()
            # a chunk with bare CR/LF may be refused at once; the client then resets
            assert code in (250, 550, 554), (code, text)
            conn.send(b"RSET\r\nNOOP\r\n")
            assert conn.smtp()[0] == 250
            assert noop_answered(conn), "a smuggled command was answered"
            LEDGER.tried_on(listener)
            no_smuggled_message(hostile_suite, listener, marker + name.encode(), evil)
        conn.send(b"QUIT\r\n")
        assert conn.smtp()[0] == 221
        no_traceback(conn)
    still_serves(hostile_suite, listener)


@pytest.mark.parametrize("listener", LISTENERS)
def test_service_still_takes_mail_after_smuggling(hostile_suite: Suite, listener: str) -> None:
    still_serves(hostile_suite, listener)
