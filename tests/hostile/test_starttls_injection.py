"""STARTTLS command injection (CVE-2011-0411 class): plaintext pipelined after STARTTLS never runs.

A man in the middle appends commands to the client's STARTTLS; a vulnerable
server buffers them and runs them inside the TLS session as if the client had
sent them. Each test checks the reply stream (no reply to the injected
command, inside TLS or before it) and a side effect (the injected state is
not there: no MAIL transaction, no USER, no login).
"""

from __future__ import annotations

import pytest

from tests.support.hostile import (
    LEDGER,
    PASSWORD,
    Conn,
    Suite,
    address,
    no_traceback,
    still_serves,
)


@pytest.mark.parametrize("listener", ["smtp-25", "smtp-587"])
def test_smtp_commands_pipelined_after_starttls_are_discarded(hostile_suite: Suite,
                                                               listener: str) -> None:
    with Conn(hostile_suite.ports[listener]) as conn:
        assert conn.smtp()[0] == 220
        conn.send(b"EHLO client.example\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@attacker.example>\r\n")
        assert conn.smtp()[0] == 220
        conn.starttls()
        conn.send(b"EHLO client.example\r\n")
        code, _ = conn.smtp()
        assert code == 250
        # had MAIL FROM run, RCPT would be accepted or refused for the recipient, not 503
        conn.send(b"RCPT TO:<" + address("carol").encode() + b">\r\n")
        code, text = conn.smtp()
        LEDGER.tried_on(listener)
        LEDGER.check(listener, code == 503, f"injected MAIL FROM ran ({code} {text!r})")
        no_traceback(conn)
    still_serves(hostile_suite, listener)


def test_pop3_commands_pipelined_after_stls_are_discarded(hostile_suite: Suite) -> None:
    with Conn(hostile_suite.ports["pop3-110"]) as conn:
        assert conn.line().startswith(b"+OK")
        conn.send(b"STLS\r\nUSER " + address("carol").encode() + b"\r\nPASS "
                  + PASSWORD.encode() + b"\r\n")
        assert conn.line().startswith(b"+OK")
        conn.starttls()
        conn.send(b"STAT\r\n")
        reply = conn.line()
        LEDGER.tried_on("pop3-110")
        LEDGER.check("pop3-110", reply.startswith(b"-ERR"), f"injected login ran ({reply!r})")
        # and the injected USER was not remembered either
        conn.send(b"PASS " + PASSWORD.encode() + b"\r\n")
        reply = conn.line()
        LEDGER.check("pop3-110", reply.startswith(b"-ERR"), f"injected USER ran ({reply!r})")
        no_traceback(conn)
    still_serves(hostile_suite, "pop3-110")


def test_imap_commands_pipelined_after_starttls_are_discarded(hostile_suite: Suite) -> None:
    with Conn(hostile_suite.ports["imap-143"]) as conn:
        assert conn.line().startswith(b"* OK")
        conn.send(b"a STARTTLS\r\nb LOGIN " + address("carol").encode() + b" \""
                  + PASSWORD.encode() + b"\"\r\n")
        _, done = conn.tagged(b"a")
        assert done.startswith(b"a OK")
        conn.starttls()
        conn.send(b"c SELECT INBOX\r\n")
        untagged, done = conn.tagged(b"c")
        LEDGER.tried_on("imap-143")
        LEDGER.check("imap-143", not done.startswith(b"c OK"), f"injected LOGIN ran ({done!r})")
        LEDGER.check("imap-143", not any(line.startswith(b"b ") for line in untagged),
                     "a reply to the injected command arrived")
        no_traceback(conn)
    still_serves(hostile_suite, "imap-143")
