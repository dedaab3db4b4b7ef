"""CATENATE (RFC 4469) through the imap service process: URL and TEXT parts, all or none."""

from __future__ import annotations

import re

from tests.integration.imap_raw import RawClient

# the service process and account fixtures of test_imap_service, requested by name below
from tests.integration.test_imap_service import (  # noqa: F401
    MULTIPART,
    Account,
    Server,
    account,
    certs,
    domain,
    imaps,
    server,
    unverified,
)

BOUNDARY = b"--------------030308070208000400050907"


def body_of(client: RawClient, tag: bytes, uid: int) -> bytes:
    reply = client.command(tag + b" UID FETCH %d (BODY.PEEK[])" % uid)
    match = re.search(rb"BODY\[\] \{(\d+)\}\r\n", reply)
    assert match, reply
    return reply[match.end():match.end() + int(match.group(1))]


def test_rfc4469_style_forward_is_assembled_and_seen_by_another_device(
        server: Server, account: Account) -> None:  # noqa: F811
    writer = RawClient(server, account)
    watcher = RawClient(server, account)
    try:
        assert b"CATENATE" in writer.command(b"c CAPABILITY")
        reply = writer.command(b"a APPEND INBOX {%d+}\r\n%s" % (len(MULTIPART), MULTIPART))
        uidvalidity = int(re.search(rb"APPENDUID (\d+) 1\]", reply).group(1))
        watcher.command(b"s SELECT INBOX")
        base = b"/INBOX;UIDVALIDITY=%d/;UID=1" % uidvalidity
        first_text = b"\r\n--" + BOUNDARY + b"\r\n"
        last_text = b"\r\n--" + BOUNDARY + b"--\r\n"
        # RFC 4469 section 5's example, with our message in place of its UID 20 and 9
        writer.send(b"A003 APPEND INBOX (\\Seen \\Draft $MDNSent) CATENATE "
                    b'(URL "%s/;section=HEADER" TEXT {%d}\r\n' % (base, len(first_text)))
        assert writer.read_line().startswith(b"+")
        writer.send(first_text + b' URL "%s/;section=1.MIME" URL "%s/;section=1" TEXT {%d}\r\n'
                    % (base, base, len(last_text)))
        assert writer.read_line().startswith(b"+")
        writer.send(last_text + b")\r\n")
        reply = writer.read_until_tagged(b"A003")
        assert reply == b"A003 OK [APPENDUID %d 2] APPEND completed\r\n" % uidvalidity, reply
        writer.command(b"e EXAMINE INBOX")
        header_end = MULTIPART.index(b"\r\n\r\n") + 4
        part_one_mime = b"Content-Type: text/plain\r\n\r\n"
        expected = (MULTIPART[:header_end] + first_text + part_one_mime + b"first part"
                    + last_text)
        assert body_of(writer, b"f", 2) == expected
        # the other device sees it arrive, byte for byte the same
        assert b"* 2 EXISTS" in watcher.command(b"n NOOP")
        assert body_of(watcher, b"g", 2) == expected
        # the watcher's sync is the first session to see it: \Recent there (RFC 3501 2.3.2)
        assert b"FLAGS (\\Seen \\Draft $MDNSent \\Recent)" in watcher.command(
            b"h FETCH 2 (FLAGS)")
    finally:
        writer.close()
        watcher.close()


def test_a_bad_url_stores_nothing_even_in_a_multiappend(server: Server,  # noqa: F811
                                                        account: Account) -> None:  # noqa: F811
    client = RawClient(server, account)
    try:
        client.command(b"a APPEND INBOX {%d+}\r\n%s" % (len(MULTIPART), MULTIPART))
        reply = client.command(b'b APPEND INBOX {%d+}\r\n%s CATENATE (TEXT {3+}\r\nabc'
                               b' URL "/INBOX/;UID=99")' % (len(MULTIPART), MULTIPART))
        # unquoted, as RFC 4469's verified erratum 4046 corrects its example
        assert reply == (b"b NO [BADURL /INBOX/;UID=99] URL does not name a message here"
                         b"\r\n"), reply
        for url in (b"imap://other.example/INBOX/;UID=1", b"/Nowhere/;UID=1",
                    b"/INBOX;UIDVALIDITY=1/;UID=1", b"/INBOX/;UID=1/;PARTIAL=0.10"):
            reply = client.command(b'c APPEND INBOX CATENATE (URL "%s")' % url)
            assert reply.startswith(b"c NO [BADURL %s]" % url), reply
        assert b"* 1 EXISTS" in client.command(b"s SELECT INBOX")
        # a URL without UIDVALIDITY and a whole message
        reply = client.command(b'd APPEND INBOX CATENATE (URL "/INBOX/;UID=1")')
        assert b"d OK [APPENDUID" in reply
        assert body_of(client, b"f", 2) == MULTIPART
    finally:
        client.close()
