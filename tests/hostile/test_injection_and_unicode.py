"""Header/log injection (CR, LF, NUL, escapes in every field) and non-ASCII in every field.

Every hostile field gets a protocol reply, the logs stay one JSON object per
line (checked for all services in test_zz_summary), and nothing is stored.
"""

from __future__ import annotations

import pytest

from tests.support.hostile import (
    LEDGER,
    PASSWORD,
    Closed,
    Conn,
    Suite,
    address,
    no_traceback,
    smtp_session,
    still_serves,
)

FAKE_LOG = b'{"level":"error","event":"forged"}'
NASTY = [
    b"a\n" + FAKE_LOG,
    b"a\r" + FAKE_LOG,
    b"a\x00b",
    b"\x1b[31mred\x1b[0m",
    b"\xff\xfe\xc0\xaf",
    "j\u00f6rg\u202e\u200b".encode(),
    "\u7528\u6237@\u4f8b\u5b50.\u6d4b\u8bd5".encode(),
    b"%s%n%x{}${jndi:ldap://x}",
]
SMTP_TEMPLATES = [
    b"EHLO %s\r\n",
    b"MAIL FROM:<%s@sender.example>\r\n",
    b"MAIL FROM:<x@sender.example> SMTPUTF8 BODY=%s\r\n",
    b"RCPT TO:<%s@hostile.test>\r\n",
    b"RCPT TO:<carol@hostile.test> NOTIFY=%s\r\n",
    b"VRFY %s\r\n",
    b"AUTH %s\r\n",
    b"%s\r\n",
]


def smtp_reply_or_close(conn: Conn) -> int:
    try:
        return conn.smtp()[0]
    except Closed:
        return 421


@pytest.mark.parametrize("listener", ["smtp-25", "smtp-587"])
def test_smtp_hostile_bytes_in_every_command_field_get_replies(hostile_suite: Suite,
                                                               listener: str) -> None:
    before = hostile_suite.spool_count()
    for i, template in enumerate(SMTP_TEMPLATES):
        # an address of its own: failed AUTHs here must not lock other tests out
        with Conn(hostile_suite.ports[listener], source=f"127.0.1.{i + 1}") as conn:
            assert conn.smtp()[0] == 220
            conn.send(b"EHLO client.example\r\n")
            assert conn.smtp()[0] == 250
            for value in NASTY:
                try:
                    if template.startswith(b"RCPT"):
                        conn.send(b"RSET\r\nMAIL FROM:<a@sender.example>\r\n")
                        # on 587 these are errors (no AUTH) and count towards the limit
                        if 421 in (smtp_reply_or_close(conn), smtp_reply_or_close(conn)):
                            break
                    conn.send(template % value)
                except (BrokenPipeError, ConnectionResetError):
                    break  # the server hung up after too many errors: an answer too
                code = smtp_reply_or_close(conn)
                LEDGER.tried_on(listener)
                assert 200 <= code < 600
                if code == 421:
                    break
            no_traceback(conn)
    assert hostile_suite.spool_count() == before
    still_serves(hostile_suite, listener)


def test_smtp_non_ascii_addresses_need_smtputf8(hostile_suite: Suite) -> None:
    with smtp_session(hostile_suite, "smtp-25") as conn:
        conn.send("MAIL FROM:<j\u00f6rg@sender.example>\r\n".encode())
        code, _ = conn.smtp()
        LEDGER.tried_on("smtp-25")
        LEDGER.check("smtp-25", code >= 500, "UTF-8 MAIL FROM accepted without SMTPUTF8")
        conn.send("MAIL FROM:<j\u00f6rg@sender.example> SMTPUTF8\r\n".encode())
        assert conn.smtp()[0] == 250
        conn.send("RCPT TO:<c\u00e4rol@hostile.test>\r\n".encode())
        assert conn.smtp()[0] == 550  # a syntactically fine local part that is nobody
        no_traceback(conn)


POP3_TEMPLATES = [b"USER %s\r\n", b"PASS %s\r\n", b"APOP %s digest\r\n", b"AUTH %s\r\n",
                  b"%s\r\n", b"TOP %s 1\r\n"]


def test_pop3_hostile_bytes_in_every_field_get_err(hostile_suite: Suite) -> None:
    for i, template in enumerate(POP3_TEMPLATES):
        with Conn(hostile_suite.ports["pop3s-995"], tls=True, source=f"127.0.2.{i + 1}") as conn:
            assert conn.line().startswith(b"+OK")
            for value in NASTY:
                conn.send(template % value)
                try:
                    reply = conn.line()
                except Closed:
                    break
                LEDGER.tried_on("pop3s-995")
                assert reply.startswith((b"+OK", b"-ERR", b"+ ")), reply
                if reply.startswith(b"+ "):
                    conn.send(b"*\r\n")
                    conn.line()
            no_traceback(conn)
    still_serves(hostile_suite, "pop3s-995")


IMAP_TEMPLATES = [b'x LOGIN "%s" "pw"\r\n', b"x SELECT \"%s\"\r\n", b"x CREATE \"%s\"\r\n",
                  b'x STATUS "%s" (MESSAGES)\r\n', b'x LIST "" "%s"\r\n',
                  b'x SEARCH HEADER Subject "%s"\r\n', b"x ID (\"name\" \"%s\")\r\n",
                  b"x %s\r\n"]


def test_imap_hostile_bytes_in_every_field_get_tagged_replies(hostile_suite: Suite) -> None:
    before = hostile_suite.mailbox_state("alice")
    for i, template in enumerate(IMAP_TEMPLATES):
        with Conn(hostile_suite.ports["imaps-993"], tls=True, source=f"127.0.3.{i + 1}") as conn:
            assert conn.line().startswith(b"* OK")
            if not template.startswith(b"x LOGIN"):
                conn.send(f'a LOGIN "{address("alice")}" "{PASSWORD}"\r\n'.encode())
                assert conn.tagged(b"a")[1].startswith(b"a OK")
                conn.send(b"s SELECT INBOX\r\n")
                conn.tagged(b"s")
            for value in NASTY:
                conn.send(template % value)
                try:
                    _, done = conn.tagged(b"x")
                except Closed:
                    break
                LEDGER.tried_on("imaps-993")
                assert done.startswith((b"x OK", b"x NO", b"x BAD")), done
            no_traceback(conn)
    after = hostile_suite.mailbox_state("alice")
    # CREATE may make folders with odd but legal names; never with control characters
    for name in set(after) - set(before):
        assert not any(ord(c) < 32 for c in name), name
        assert after[name] == 0
    still_serves(hostile_suite, "imaps-993")
