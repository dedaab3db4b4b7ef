"""MULTIAPPEND (RFC 3502) and BINARY (RFC 3516) through the imap service process."""

from __future__ import annotations

import base64
import re
import time

from imapclient import IMAPClient

from postroom.store import users
from tests.integration.imap_raw import RawClient

# the service process and account fixtures of test_imap_service, requested by name below
from tests.integration.test_imap_service import (  # noqa: F401
    PASSWORD,
    Account,
    Server,
    account,
    certs,
    domain,
    imaps,
    server,
    unverified,
)

# the two messages of RFC 3502's example (section 6.3.11 of RFC 3501 for the first)
FRED = (b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
        b"From: Fred Foobar <foobar@Blurdybloop.example.COM>\r\n"
        b"Subject: afternoon meeting\r\n"
        b"To: mooch@owatagu.siam.edu.example\r\n"
        b"Message-Id: <B27397-0100000@Blurdybloop.example.COM>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n"
        b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n")
JOE = (b"Date: Mon, 7 Feb 1994 22:43:04 -0800 (PST)\r\n"
       b"From: Joe Mooch <mooch@OWaTaGu.siam.EDU.example>\r\n"
       b"Subject: Re: afternoon meeting\r\n"
       b"To: foobar@blurdybloop.example.com\r\n"
       b"Message-Id: <a0434793874930@OWaTaGu.siam.EDU.example>\r\n"
       b"MIME-Version: 1.0\r\n"
       b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n"
       b"3:30 is fine with me.\r\n")


def multiappend(client: RawClient, tag: bytes, mailbox: bytes,
                messages: list[tuple[bytes, bytes]]) -> bytes:
    """APPEND with synchronizing literals, waiting for each ``+`` as RFC 3502's example does."""
    client.send(tag + b" APPEND " + mailbox)
    for prefix, data in messages:
        client.send((b" " + prefix if prefix else b"") + b" {%d}\r\n" % len(data))
        got = client.read_line()
        if not got.startswith(b"+"):
            return got  # refused before the literal
        client.send(data)
    client.send(b"\r\n")
    return client.read_until_tagged(tag)


def test_rfc3502_example_stores_both_with_one_appenduid_range(server: Server,  # noqa: F811
                                                              account: Account) -> None:  # noqa: F811
    client = RawClient(server, account)
    try:
        assert b"MULTIAPPEND" in client.command(b"c CAPABILITY")
        reply = multiappend(client, b"A003", b"INBOX",
                            [(b"(\\Seen)", FRED),
                             (b"(\\Seen) \" 1-Jul-2002 22:30:00 -0700\"", JOE)])
        match = re.fullmatch(rb"A003 OK \[APPENDUID (\d+) (\d+):(\d+)\] APPEND completed\r\n",
                             reply)
        assert match, reply
        assert int(match.group(3)) == int(match.group(2)) + 1
        fetched = client.command(b"f EXAMINE INBOX") + client.command(
            b"g FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE)")
        assert b"* 2 EXISTS" in fetched
        # the same instant (the store keeps INTERNALDATE in UTC); EXAMINE shows the untaken
        # messages \Recent without taking them (RFC 3501 6.3.2)
        assert b'* 2 FETCH (FLAGS (\\Seen \\Recent) INTERNALDATE "02-Jul-2002 05:30:00 +0000" ' \
               b"RFC822.SIZE %d)" % len(JOE) in fetched, fetched
        assert b"RFC822.SIZE %d)" % len(FRED) in fetched
    finally:
        client.close()


def test_multiappend_is_all_or_none_when_the_quota_stops_the_last(
        server: Server, account: Account) -> None:  # noqa: F811
    account.database.run_sync(users.set_quota, account.address, 2 * len(FRED) + 100)
    client = RawClient(server, account)
    try:
        reply = client.command(b"a APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s {%d+}\r\n%s"
                               % (len(FRED), FRED, len(JOE), JOE, 4000, b"x" * 4000))
        assert reply.startswith(b"a NO [OVERQUOTA]"), reply
        assert b"* 0 EXISTS" in client.command(b"s SELECT INBOX")
        # and a MULTIAPPEND that fits is stored whole
        reply = client.command(b"b APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s"
                               % (len(FRED), FRED, len(JOE), JOE))
        # the selected mailbox grows once, by both, recent in this session (RFC 3501 2.3.2)
        assert re.fullmatch(rb"\* 2 EXISTS\r\n\* 2 RECENT\r\n"
                            rb"b OK \[APPENDUID \d+ 1:2\] APPEND completed\r\n", reply), reply
    finally:
        client.close()


def test_multiappend_to_a_missing_mailbox_is_trycreate_and_stores_nothing(
        server: Server, account: Account) -> None:  # noqa: F811
    client = RawClient(server, account)
    try:
        reply = client.command(b"a APPEND Nowhere {%d+}\r\n%s {%d+}\r\n%s"
                               % (len(FRED), FRED, len(JOE), JOE))
        assert reply.startswith(b"a NO [TRYCREATE]"), reply
        assert b"Nowhere" not in client.command(b"l LIST \"\" *")
    finally:
        client.close()


def test_multiappend_reaches_another_device_as_one_exists(server: Server,  # noqa: F811
                                                          account: Account) -> None:  # noqa: F811
    watcher = IMAPClient(server.host, server.tls_port, ssl=True, ssl_context=unverified(),
                         timeout=30)
    client = RawClient(server, account)
    try:
        watcher.login(account.address, PASSWORD)
        watcher.select_folder("INBOX")
        watcher.idle()
        reply = client.command(b"a APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s {%d+}\r\n%s"
                               % (len(FRED), FRED, len(JOE), JOE, len(FRED), FRED))
        assert b"a OK [APPENDUID" in reply
        seen: list = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (3, b"EXISTS") not in seen:
            seen += watcher.idle_check(timeout=2)
        watcher.idle_done()
        exists = [r for r in seen if len(r) == 2 and r[1] == b"EXISTS"]
        assert exists == [(3, b"EXISTS")], seen
    finally:
        client.close()
        watcher.logout()


NUL_BYTES = bytes(range(256)) * 4
PARTS = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: binary\r\n"
         b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"
         b"--BB\r\nContent-Type: application/octet-stream\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\n"
         + base64.encodebytes(NUL_BYTES).replace(b"\n", b"\r\n")
         + b"--BB\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
         b"caf=C3=A9 and a soft=\r\nbreak\r\n"
         b"--BB\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
         b"begin 644 x\r\n"
         b"--BB--\r\n")


def test_binary_fetch_decodes_base64_and_quoted_printable(server: Server,  # noqa: F811
                                                          account: Account) -> None:  # noqa: F811
    client = RawClient(server, account)
    try:
        assert b"BINARY" in client.command(b"c CAPABILITY")
        assert b"a OK" in client.command(b"a APPEND INBOX {%d+}\r\n%s" % (len(PARTS), PARTS))
        client.command(b"s SELECT INBOX")
        # base64 with NULs: literal8; the size is the decoded size; .PEEK and SIZE leave \Seen
        reply = client.command(b"f FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])")
        assert reply == (b"* 1 FETCH (BINARY.SIZE[1] %d BINARY[1] ~{%d}\r\n%s)\r\n"
                         b"f OK FETCH completed\r\n" % (len(NUL_BYTES), len(NUL_BYTES), NUL_BYTES))
        reply = client.command(b"g FETCH 1 (BINARY.PEEK[2] BINARY.PEEK[1]<256.4> FLAGS)")
        assert reply == (b"* 1 FETCH (BINARY[2] {21}\r\ncaf\xc3\xa9 and a softbreak "
                         b"BINARY[1]<256> ~{4}\r\n\x00\x01\x02\x03 FLAGS (\\Recent))\r\n"
                         b"g OK FETCH completed\r\n"), reply
        # an encoding nobody defined (RFC 3516 4.3)
        reply = client.command(b"h FETCH 1 (BINARY.PEEK[3])")
        assert reply.startswith(b"h NO [UNKNOWN-CTE]"), reply
        # BINARY without .PEEK sets \Seen
        reply = client.command(b"i FETCH 1 (BINARY[2])")
        assert b"FLAGS (\\Seen \\Recent)" in reply, reply
        # BINARY[] is the whole message as stored
        reply = client.command(b"j FETCH 1 (BINARY.PEEK[])")
        assert b"BINARY[] {%d}\r\n%s)" % (len(PARTS), PARTS) in reply
    finally:
        client.close()


def test_append_with_literal8_reaches_another_device_byte_exact(
        server: Server, account: Account) -> None:  # noqa: F811
    message = (b"From: a@example.org\r\nSubject: raw\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary"
               b"\r\n\r\n" + NUL_BYTES)
    reader = RawClient(server, account)
    writer = RawClient(server, account)
    try:
        reader.command(b"s SELECT INBOX")
        writer.send(b"a APPEND INBOX ~{%d}\r\n" % len(message))
        assert writer.read_line().startswith(b"+")
        writer.send(message + b"\r\n")
        reply = writer.read_until_tagged(b"a")
        assert re.fullmatch(rb"a OK \[APPENDUID \d+ 1\] APPEND completed\r\n", reply), reply
        reply = reader.command(b"n NOOP")
        assert b"* 1 EXISTS" in reply
        reply = reader.command(b"f FETCH 1 (BINARY.PEEK[1] RFC822.SIZE)")
        assert reply == (b"* 1 FETCH (BINARY[1] ~{%d}\r\n%s RFC822.SIZE %d)\r\n"
                         b"f OK FETCH completed\r\n" % (len(NUL_BYTES), NUL_BYTES, len(message)))
    finally:
        reader.close()
        writer.close()


def test_imapclient_multiappend_with_flags_and_dates(server: Server,  # noqa: F811
                                                     account: Account) -> None:  # noqa: F811
    from datetime import UTC, datetime

    client = IMAPClient(server.host, server.tls_port, ssl=True, ssl_context=unverified(),
                        timeout=30)
    try:
        client.login(account.address, PASSWORD)
        when = datetime(2002, 7, 2, 5, 30, tzinfo=UTC)
        reply = client.multiappend("INBOX", [FRED, {"msg": JOE, "flags": ["\\Flagged"],
                                                    "date": when}])
        status, lines = reply  # imapclient's raw command answer
        assert status == "OK", reply
        assert re.fullmatch(rb"\[APPENDUID \d+ 1:2\] APPEND completed", lines[-1]), reply
        client.select_folder("INBOX", readonly=True)
        fetched = client.fetch([1, 2], ["FLAGS", "INTERNALDATE", "RFC822"])
        assert fetched[1][b"RFC822"] == FRED and fetched[2][b"RFC822"] == JOE
        assert fetched[2][b"FLAGS"] == (b"\\Flagged", b"\\Recent")  # untaken, read-only
        assert fetched[2][b"INTERNALDATE"].astimezone(UTC) == when
    finally:
        client.logout()
