"""A scripted compliance run: the example exchanges of RFC 3501 and RFC 9051, replayed.

Each script sends an RFC example's client lines (its own tags, its own
mailbox names and messages: Fred Foobar's APPEND of RFC 3501 6.3.11, Terry
Gray's message of 7.4.2) to the live service and compares every reply line
exactly. Where this server's reply differs from the example's text, the
difference is one the RFC leaves to the server, and the expected line says
which (comment ``# RFC: ...``): more LIST attributes (CHILDREN is on), the
account's default mailboxes in a ``LIST "" *``, APPENDUID/COPYUID codes
(UIDPLUS), HIGHESTMODSEQ at SELECT (CONDSTORE), message numbers and UIDs of
a mailbox built for the script, EXPUNGE responses highest number first, an
INTERNALDATE written in UTC, lower-case MIME type names, STATUS items in the
order asked. ``re.Pattern`` lines stand for values the server picks
(UIDVALIDITY).
"""

from __future__ import annotations

import re
import socket

from tests.integration import test_imap_service as base
from tests.integration.test_imap_service import PASSWORD, Account, Server, unverified

certs, server, domain, account = base.certs, base.server, base.domain, base.account

Line = bytes | re.Pattern[bytes]
Step = tuple[bytes | tuple[bytes, bytes], list[Line]]

# RFC 3501 6.3.11: the APPEND example's message, 310 octets as its literal says
FRED = (b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
        b"From: Fred Foobar <foobar@Blurdybloop.COM>\r\n"
        b"Subject: afternoon meeting\r\n"
        b"To: mooch@owatagu.siam.edu\r\n"
        b"Message-Id: <B27397-0100000@Blurdybloop.COM>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
        b"\r\n"
        b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n")


def _gray() -> bytes:
    """RFC 3501 7.4.2's message: the envelope it shows, RFC822.SIZE 4286, a 3028-octet body
    of 92 lines (the text itself is not in the RFC; a padding field makes up the size)."""
    body = b"".join((b"x" * 31 if i < 84 else b"y" * 30) + b"\r\n" for i in range(92))
    head = (b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
            b"From: Terry Gray <gray@cac.washington.edu>\r\n"
            b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
            b"To: imap@cac.washington.edu\r\n"
            b"cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\r\n"
            b"Message-Id: <B27397-0100000@cac.washington.edu>\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n")
    pad = 4286 - len(body) - len(head) - len(b"X-Pad: \r\n\r\n")
    return head + b"X-Pad: " + b"p" * pad + b"\r\n\r\n" + body


GRAY = _gray()
DEFAULTS = [b'* LIST (\\HasNoChildren) "/" INBOX\r\n',  # RFC: a new account's mailboxes
            b'* LIST (\\HasNoChildren \\Archive) "/" Archive\r\n',
            b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts\r\n',
            b'* LIST (\\HasNoChildren \\Junk) "/" Junk\r\n',
            b'* LIST (\\HasNoChildren \\Sent) "/" Sent\r\n',
            b'* LIST (\\HasNoChildren \\Trash) "/" Trash\r\n']
UIDVALIDITY = re.compile(rb"\* OK \[UIDVALIDITY \d+\] UIDs valid\r\n")
FLAGS = [b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
         b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
         b"flags permitted\r\n"]


class Replay:
    """One logged-in connection sending RFC example lines with the RFC's own tags."""

    def __init__(self, server: Server, account: Account) -> None:
        raw = socket.create_connection((server.host, server.tls_port), timeout=10)
        self.sock = unverified().wrap_socket(raw, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        self.file.readline()  # greeting
        self.sock.sendall(b'L LOGIN "%s" "%s"\r\n' % (account.address.encode(),
                                                     PASSWORD.encode()))
        while not self.file.readline().startswith(b"L OK"):
            pass

    def reply(self, tag: bytes) -> list[bytes]:
        out = []
        while True:
            line = self.file.readline()
            assert line, "connection closed"
            size = re.search(rb"\{(\d+)\}\r\n$", line)
            if size:
                line += self.file.read(int(size.group(1))) + self.file.readline()
            out.append(line)
            if line.startswith(tag + b" "):
                return out

    def run(self, steps: list[Step]) -> None:
        for command, expected in steps:
            literal = None
            if isinstance(command, tuple):
                command, literal = command
            tag = command.split(b" ", 1)[0]
            self.sock.sendall(command + b"\r\n")
            if literal is not None:  # a synchronizing literal, as the RFC sends it
                assert self.file.readline() == b"+ Ready for literal data\r\n"
                self.sock.sendall(literal + b"\r\n")
            got = self.reply(tag)
            assert len(got) == len(expected), (command, got)
            for line, want in zip(got, expected, strict=True):
                if isinstance(want, re.Pattern):
                    assert want.fullmatch(line), (command, line, want)
                else:
                    assert line == want, (command, line, want)

    def close(self) -> None:
        self.sock.sendall(b"Z LOGOUT\r\n")
        self.sock.close()


def replay(server: Server, account: Account, steps: list[Step]) -> None:
    client = Replay(server, account)
    try:
        client.run(steps)
    finally:
        client.close()


def test_rfc3501_create_delete_rename_list_status(server: Server, account: Account) -> None:
    replay(server, account, [
        # 6.3.3 CREATE: a trailing delimiter declares a level; the superior is created
        (b"A003 CREATE owatagusiam/", [b"A003 OK CREATE completed\r\n"]),
        (b"A004 CREATE owatagusiam/blurdybloop", [b"A004 OK CREATE completed\r\n"]),
        # 6.3.4 DELETE, the second example ("foo" a real mailbox with an inferior)
        (b"A81 CREATE blurdybloop", [b"A81 OK CREATE completed\r\n"]),
        (b"A81 CREATE foo/bar", [b"A81 OK CREATE completed\r\n"]),
        (b'A82 LIST "" *', [  # RFC: () for each, the "." delimiter
            *DEFAULTS, b'* LIST (\\HasNoChildren) "/" blurdybloop\r\n',
            b'* LIST (\\HasChildren) "/" foo\r\n', b'* LIST (\\HasNoChildren) "/" foo/bar\r\n',
            b'* LIST (\\HasChildren) "/" owatagusiam\r\n',
            b'* LIST (\\HasNoChildren) "/" owatagusiam/blurdybloop\r\n',
            b"A82 OK LIST completed\r\n"]),
        (b"A83 DELETE blurdybloop", [b"A83 OK DELETE completed\r\n"]),
        (b"A84 DELETE foo", [b"A84 OK DELETE completed\r\n"]),
        (b'A86 LIST "" %', [  # foo stays as a \Noselect level
            *DEFAULTS, b'* LIST (\\Noselect \\HasChildren) "/" foo\r\n',
            b'* LIST (\\HasChildren) "/" owatagusiam\r\n', b"A86 OK LIST completed\r\n"]),
        # the first example's A684: a \Noselect name with inferiors cannot be deleted
        # (RFC: no response code; here the name is no mailbox at all)
        (b"A684 DELETE foo", [b"A684 NO [NONEXISTENT] no such mailbox\r\n"]),
        # 6.3.5 RENAME, both examples; INBOX's inferiors stay with INBOX
        (b"A1 CREATE sarasoop-src", [b"A1 OK CREATE completed\r\n"]),
        (b"A683 RENAME sarasoop-src sarasoop", [b"A683 OK RENAME completed\r\n"]),
        (b"A684 RENAME owatagusiam zowie", [b"A684 OK RENAME completed\r\n"]),
        (b"Z432 CREATE INBOX/bar", [b"Z432 OK CREATE completed\r\n"]),
        (b"Z433 RENAME INBOX old-mail", [b"Z433 OK RENAME completed\r\n"]),
        (b'Z434 LIST "" *', [
            b'* LIST (\\HasChildren) "/" INBOX\r\n', *DEFAULTS[1:3],
            b'* LIST (\\HasNoChildren) "/" INBOX/bar\r\n', *DEFAULTS[3:],
            b'* LIST (\\Noselect \\HasChildren) "/" foo\r\n',
            b'* LIST (\\HasNoChildren) "/" foo/bar\r\n',
            b'* LIST (\\HasNoChildren) "/" old-mail\r\n',
            b'* LIST (\\HasNoChildren) "/" sarasoop\r\n',
            b'* LIST (\\HasChildren) "/" zowie\r\n',
            b'* LIST (\\HasNoChildren) "/" zowie/blurdybloop\r\n',
            b"Z434 OK LIST completed\r\n"]),
        # 6.3.8 LIST: the delimiter and root (names here are never rooted: root "")
        (b'A101 LIST "" ""', [b'* LIST (\\Noselect) "/" ""\r\n', b"A101 OK LIST completed\r\n"]),
        (b"A202 LIST ~/Mail/ %", [b"A202 OK LIST completed\r\n"]),
        # 6.3.10 STATUS (RFC: MESSAGES 231 UIDNEXT 44292, in another order)
        (b"A042 STATUS sarasoop (UIDNEXT MESSAGES)", [
            b"* STATUS sarasoop (UIDNEXT 1 MESSAGES 0)\r\n", b"A042 OK STATUS completed\r\n"]),
        # 6.3.7 / 6.3.8 SUBSCRIBE and UNSUBSCRIBE (of mailboxes here)
        (b"A002 UNSUBSCRIBE sarasoop", [b"A002 OK UNSUBSCRIBE completed\r\n"]),
        (b"A002 SUBSCRIBE sarasoop", [b"A002 OK SUBSCRIBE completed\r\n"]),
        # 6.1.2 NOOP
        (b"a002 NOOP", [b"a002 OK NOOP completed\r\n"]),
    ])


def test_rfc3501_append_then_fetch_envelope_and_body(server: Server, account: Account) -> None:
    replay(server, account, [
        (b"A002 CREATE saved-messages", [b"A002 OK CREATE completed\r\n"]),
        # 6.3.11 APPEND, with its synchronizing literal (RFC: no APPENDUID, UIDPLUS's code)
        ((b"A003 APPEND saved-messages (\\Seen) {310}", FRED), [
            re.compile(rb"A003 OK \[APPENDUID \d+ 1\] APPEND completed\r\n")]),
        ((b'A004 APPEND saved-messages (\\Seen) "17-Jul-1996 02:44:25 -0700" {4286}', GRAY), [
            re.compile(rb"A004 OK \[APPENDUID \d+ 2\] APPEND completed\r\n")]),
        (b"A142 SELECT saved-messages", [
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
            b"flags permitted\r\n",
            b"* 2 EXISTS\r\n", b"* 2 RECENT\r\n", UIDVALIDITY,
            b"* OK [UIDNEXT 3] predicted next UID\r\n",
            b"* OK [HIGHESTMODSEQ 3] highest modseq\r\n",
            b"A142 OK [READ-WRITE] SELECT completed\r\n"]),
        # 6.4.5 FETCH
        (b"A654 FETCH 1:2 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])", [
            b"* 1 FETCH (FLAGS (\\Seen \\Recent) BODY[HEADER.FIELDS (DATE FROM)] {90}\r\n"
            b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
            b"From: Fred Foobar <foobar@Blurdybloop.COM>\r\n\r\n)\r\n",
            b"* 2 FETCH (FLAGS (\\Seen \\Recent) BODY[HEADER.FIELDS (DATE FROM)] {91}\r\n"
            b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
            b"From: Terry Gray <gray@cac.washington.edu>\r\n\r\n)\r\n",
            b"A654 OK FETCH completed\r\n"]),
        # 7.4.2 FETCH response: the RFC's ENVELOPE to the octet; INTERNALDATE the same instant
        # in UTC (RFC: "17-Jul-1996 02:44:25 -0700"), MIME names lower-case (case-insensitive)
        (b"A655 FETCH 2 (FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY)", [
            b'* 2 FETCH (FLAGS (\\Seen \\Recent) INTERNALDATE "17-Jul-1996 09:44:25 +0000" '
            b'RFC822.SIZE 4286 ENVELOPE ("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" '
            b'"IMAP4rev1 WG mtg summary and minutes" '
            b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
            b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
            b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
            b'((NIL NIL "imap" "cac.washington.edu")) '
            b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
            b'NIL NIL "<B27397-0100000@cac.washington.edu>") '
            b'BODY ("text" "plain" ("charset" "US-ASCII") NIL NIL "7bit" 3028 92))\r\n',
            b"A655 OK FETCH completed\r\n"]),
        # 6.4.5's partial fetch: <origin> in the reply, the octets asked for
        (b"A657 FETCH 1 (BODY[TEXT]<0.10> RFC822.SIZE)", [
            b"* 1 FETCH (BODY[TEXT]<0> {10}\r\nHello Joe, RFC822.SIZE 310)\r\n",
            b"A657 OK FETCH completed\r\n"]),
    ])


def test_rfc3501_search_store_copy_expunge_and_rfc9051_esearch(server: Server,
                                                              account: Account) -> None:
    for n in range(1, 12):
        sender = b"Smith <smith@example.test>" if n == 5 else b"Jones <jones@example.test>"
        account.deliver(b"From: %s\r\nSubject: message %d\r\n\r\nbody %d\r\n" % (sender, n, n))
    laptop, phone = Replay(server, account), Replay(server, account)
    try:
        laptop.run([
            (b"A0 SELECT INBOX", [
                *FLAGS, b"* 11 EXISTS\r\n", b"* 11 RECENT\r\n",
                b"* OK [UNSEEN 1] first unseen message\r\n", UIDVALIDITY,
                b"* OK [UIDNEXT 12] predicted next UID\r\n",
                b"* OK [HIGHESTMODSEQ 12] highest modseq\r\n",
                b"A0 OK [READ-WRITE] SELECT completed\r\n"]),
            (b"A1 STORE 2,5,10:11 +FLAGS.SILENT (\\Flagged)", [b"A1 OK STORE completed\r\n"]),
            (b"A1 STORE 1:3 +FLAGS.SILENT (\\Seen)", [b"A1 OK STORE completed\r\n"]),
            # 6.4.4 SEARCH (RFC: * SEARCH 2 84 882, in its bigger mailbox)
            (b'A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"', [
                b"* SEARCH 2 10 11\r\n", b"A282 OK SEARCH completed\r\n"]),
        ])
        # RFC 9051 6.4.4's ESEARCH examples, in an IMAP4rev2 session: the same mailbox gives
        # the RFC's own answers to A282, A283, A284 and the MIN UNSEEN one
        phone.run([
            (b"A300 ENABLE IMAP4rev2", [b"* ENABLED IMAP4rev2\r\n",
                                        b"A300 OK ENABLE completed\r\n"]),
            (b"A301 EXAMINE INBOX", [
                b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
                b"* OK [PERMANENTFLAGS ()] flags permitted\r\n", b"* 11 EXISTS\r\n",
                b'* LIST (\\HasNoChildren) "/" INBOX\r\n', UIDVALIDITY,
                b"* OK [UIDNEXT 12] predicted next UID\r\n",
                b"* OK [HIGHESTMODSEQ 14] highest modseq\r\n",
                b"A301 OK [READ-ONLY] EXAMINE completed\r\n"]),
            (b'A282 SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"', [
                b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\n', b"A282 OK SEARCH completed\r\n"]),
            (b'A283 SEARCH RETURN () FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"', [
                b'* ESEARCH (TAG "A283") ALL 2,10:11\r\n', b"A283 OK SEARCH completed\r\n"]),
            (b'A284 SEARCH TEXT "string not in mailbox"', [
                b'* ESEARCH (TAG "A284")\r\n', b"A284 OK SEARCH completed\r\n"]),
            (b"A284 SEARCH RETURN (MIN) UNSEEN", [
                b'* ESEARCH (TAG "A284") MIN 4\r\n', b"A284 OK SEARCH completed\r\n"]),
            (b"A285 UID SEARCH RETURN (MIN MAX) 1:5000", [  # RFC: MIN 7 MAX 3800
                b'* ESEARCH (TAG "A285") UID MIN 1 MAX 11\r\n', b"A285 OK SEARCH completed\r\n"]),
            (b"A286 SEARCH RETURN (COUNT) DELETED", [  # RFC: COUNT 15
                b'* ESEARCH (TAG "A286") COUNT 0\r\n', b"A286 OK SEARCH completed\r\n"]),
        ])
        laptop.run([
            # a second SELECT: nothing is recent any more, so STORE shows the RFC's flags
            (b"A2 SELECT INBOX", [
                b"* OK [CLOSED] previous mailbox closed\r\n", *FLAGS, b"* 11 EXISTS\r\n",
                b"* 0 RECENT\r\n", b"* OK [UNSEEN 4] first unseen message\r\n", UIDVALIDITY,
                b"* OK [UIDNEXT 12] predicted next UID\r\n",
                b"* OK [HIGHESTMODSEQ 14] highest modseq\r\n",
                b"A2 OK [READ-WRITE] SELECT completed\r\n"]),
            (b"A1 STORE 2 -FLAGS.SILENT (\\Flagged)", [b"A1 OK STORE completed\r\n"]),
            (b"A1 STORE 3 -FLAGS.SILENT (\\Seen)", [b"A1 OK STORE completed\r\n"]),
            (b"A1 STORE 4 +FLAGS.SILENT (\\Flagged \\Seen)", [b"A1 OK STORE completed\r\n"]),
            # 6.4.6 STORE: the RFC's three FETCH lines exactly
            (b"A003 STORE 2:4 +FLAGS (\\Deleted)", [
                b"* 2 FETCH (FLAGS (\\Deleted \\Seen))\r\n",
                b"* 3 FETCH (FLAGS (\\Deleted))\r\n",
                b"* 4 FETCH (FLAGS (\\Deleted \\Flagged \\Seen))\r\n",
                b"A003 OK STORE completed\r\n"]),
            # 6.4.7 COPY (RFC: no COPYUID, UIDPLUS's code)
            (b"A1 CREATE MEETING", [b"A1 OK CREATE completed\r\n"]),
            (b"A003 COPY 2:4 MEETING", [
                re.compile(rb"A003 OK \[COPYUID \d+ 2:4 1:3\] COPY completed\r\n")]),
            # 6.4.3 EXPUNGE with 3, 4, 7 and 11 deleted. RFC: * 3, * 3, * 5, * 8 EXPUNGE,
            # lowest first; highest first names the same messages (RFC 3501 7.4.1)
            (b"A1 STORE 2 -FLAGS.SILENT (\\Deleted)", [b"A1 OK STORE completed\r\n"]),
            (b"A1 STORE 7,11 +FLAGS.SILENT (\\Deleted)", [b"A1 OK STORE completed\r\n"]),
            (b"A202 EXPUNGE", [b"* 11 EXPUNGE\r\n", b"* 7 EXPUNGE\r\n", b"* 4 EXPUNGE\r\n",
                               b"* 3 EXPUNGE\r\n", b"A202 OK EXPUNGE completed\r\n"]),
            # 6.4.8 UID FETCH (RFC: its UIDs; FLAGS before UID)
            (b"A999 UID FETCH 4:6 FLAGS", [
                b"* 3 FETCH (UID 5 FLAGS (\\Flagged))\r\n", b"* 4 FETCH (UID 6 FLAGS ())\r\n",
                b"A999 OK FETCH completed\r\n"]),
            # 6.3.2 EXAMINE (RFC: 17 EXISTS, 2 RECENT, UNSEEN 8); the copies no session took
            (b"A932 EXAMINE MEETING", [
                b"* OK [CLOSED] previous mailbox closed\r\n",
                b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
                b"* OK [PERMANENTFLAGS ()] flags permitted\r\n",
                b"* 3 EXISTS\r\n", b"* 3 RECENT\r\n", b"* OK [UNSEEN 2] first unseen message\r\n",
                UIDVALIDITY, b"* OK [UIDNEXT 4] predicted next UID\r\n",
                b"* OK [HIGHESTMODSEQ 2] highest modseq\r\n",
                b"A932 OK [READ-ONLY] EXAMINE completed\r\n"]),
        ])
    finally:
        laptop.close()
        phone.close()
