"""IMAP4rev2 (RFC 9051 5.1) mailbox names: UTF-8 in and out once the session enabled it."""

from __future__ import annotations

from postroom_imap.render import mailbox_name
from postroom_imap.syntax import Command, CommandReader


def test_reader_takes_ascii_names_as_they_are_after_enable_imap4rev2() -> None:
    reader = CommandReader()
    first = reader.feed(b'a ENABLE IMAP4rev2\r\nb CREATE "&AOk-"\r\n')
    # ENABLE pauses the reader: the CREATE is parsed with the rules ENABLE sets
    assert [e.name for e in first if isinstance(e, Command)] == ["ENABLE"]
    reader.utf8_names = True
    rest = reader.resume()
    assert len(rest) == 1 and isinstance(rest[0], Command)
    assert rest[0].args.mailbox == "&AOk-"
    # a rev1 reader decodes modified UTF-7
    rev1 = CommandReader().feed(b'b CREATE "&AOk-"\r\n')[0]
    assert isinstance(rev1, Command) and rev1.args.mailbox == "\u00e9"


def test_utf8_names_are_written_as_they_are() -> None:
    assert mailbox_name("\u00e9t\u00e9") == b"&AOk-t&AOk-"
    assert mailbox_name("\u00e9t\u00e9", utf8=True) == '"\u00e9t\u00e9"'.encode()
    assert mailbox_name("Tom & Jerry", utf8=True) == b'"Tom & Jerry"'
    assert mailbox_name("Tom & Jerry") == b'"Tom &- Jerry"'
    assert mailbox_name("a&b", utf8=True) == b"a&b"
    assert mailbox_name('x"\u00e9\\', utf8=True) == 'x\\"\u00e9\\\\'.join('""').encode()
    assert mailbox_name("INBOX", utf8=True) == b"INBOX"
    # control characters never go into a quoted string
    assert mailbox_name("\u00e9\x01", utf8=True).startswith(b"{")


def test_oldname_line_carries_the_mailbox_attributes_and_the_old_name() -> None:
    from postroom_imap.handlers_mailbox import oldname_line
    from postroom_imap.policy import MailboxRow

    rows = [MailboxRow("INBOX", None, True), MailboxRow("Alt", "\\Archive", True),
            MailboxRow("Alt/2024", None, False), MailboxRow("\u00e9t\u00e9", None, False)]
    assert oldname_line(rows, "Alt", "Archive") == (
        b'* LIST (\\HasChildren \\Archive \\Subscribed) "/" Alt ("OLDNAME" (Archive))\r\n')
    assert oldname_line(rows, "\u00e9t\u00e9", "e\u0301te\u0301") == (
        '* LIST (\\HasNoChildren) "/" "\u00e9t\u00e9" ("OLDNAME" ("e\u0301te\u0301"))\r\n'
        .encode())
    # gone again before the LIST could be sent: no attributes known
    assert oldname_line(rows, "Gone", "Old") == b'* LIST () "/" Gone ("OLDNAME" (Old))\r\n'
