"""IMAP command reader: real-world commands parse into typed arguments."""

from datetime import date

import pytest

from postroom_imap.syntax import Command, CommandReader, ParseError
from postroom_imap.syntax_types import (
    Append,
    Copy,
    Expunge,
    FetchItem,
    Id,
    ListArgs,
    Login,
    NoArgs,
    Search,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchModseq,
    SearchNot,
    SearchOr,
    SearchSet,
    SearchText,
    Section,
    Select,
    SequenceSet,
    Sort,
    Status,
    Store,
)


def one(line: bytes) -> Command:
    events = CommandReader().feed(line)
    assert len(events) == 1, events
    event = events[0]
    assert isinstance(event, Command), event
    return event


def bad(line: bytes) -> ParseError:
    events = CommandReader().feed(line)
    assert len(events) == 1 and isinstance(events[0], ParseError), events
    return events[0]


@pytest.mark.parametrize("name", [b"CAPABILITY", b"noop", b"LOGOUT", b"STARTTLS", b"CHECK",
                                  b"CLOSE", b"UNSELECT", b"IDLE", b"NAMESPACE", b"EXPUNGE"])
def test_commands_without_arguments(name):
    cmd = one(b"x1 " + name + b"\r\n")
    assert cmd.name == name.decode().upper()
    assert isinstance(cmd.args, NoArgs | Expunge)


def test_login_with_quoted_escapes():
    cmd = one(b'a001 LOGIN "SMITH" "sesa\\"me\\\\"\r\n')
    assert cmd.args == Login("SMITH", 'sesa"me\\')


def test_imaplib_style_login_with_atoms():
    assert one(b"JGLH1 LOGIN user secret\r\n").args == Login("user", "secret")


def test_lf_only_line_ending_is_accepted():
    assert one(b"a NOOP\n").name == "NOOP"


def test_select_with_condstore_parameter():
    cmd = one(b"A142 SELECT INBOX (CONDSTORE)\r\n")
    assert cmd.args == Select("INBOX", True, ("CONDSTORE",))


def test_inbox_is_case_insensitive():
    assert one(b"a EXAMINE inbox\r\n").args == Select("INBOX")


def test_mailbox_names_decode_modified_utf7():
    cmd = one(b'a CREATE "~peter/mail/&U,BTFw-/&ZeVnLIqe-"\r\n')
    assert cmd.args.mailbox == "~peter/mail/台北/日本語"


def test_invalid_modified_utf7_is_taken_as_it_is_but_never_created():
    # a legal astring: DELETE/SELECT of it then answer NO [NONEXISTENT], not BAD
    assert one(b"a DELETE &Jjo\r\n").args.mailbox == "&Jjo"
    name = b"!#$&'+,-.0123456789:;<=>?@^_`|[}"
    assert one(b"a SELECT " + name + b"\r\n").args.mailbox == name.decode()
    assert one(b'a LIST "" ' + name + b"%*\r\n").args.patterns == (name.decode() + "%*",)
    refused = bad(b"a CREATE " + name + b"\r\n")
    assert refused.code == "CANNOT" and "not modified UTF-7" in refused.text
    assert bad(b"a RENAME x " + name + b"\r\n").code == "CANNOT"
    escaped = name.replace(b"&", b"&-")  # the same name written as modified UTF-7
    assert one(b"a CREATE " + escaped + b"\r\n").args.mailbox == name.decode()


def test_create_special_use():
    cmd = one(b"t1 CREATE MySpecial (USE (\\Drafts \\Sent))\r\n")
    assert cmd.args.special_use == ("\\Drafts", "\\Sent")


def test_list_with_wildcards_and_empty_reference():
    assert one(b'A682 LIST "" *\r\n').args == ListArgs("", ("*",))
    assert one(b"a LIST ~/Mail/ %\r\n").args == ListArgs("~/Mail/", ("%",))


def test_list_extended_with_selection_and_return():
    cmd = one(b'a LIST (SUBSCRIBED) "" ("INBOX" "Sent") RETURN (CHILDREN SPECIAL-USE)\r\n')
    assert cmd.args == ListArgs("", ("INBOX", "Sent"), ("SUBSCRIBED",), ("CHILDREN", "SPECIAL-USE"))


def test_status_items():
    cmd = one(b"A042 STATUS blurdybloop (UIDNEXT MESSAGES HIGHESTMODSEQ)\r\n")
    assert cmd.args == Status("blurdybloop", ("UIDNEXT", "MESSAGES", "HIGHESTMODSEQ"))


def test_status_rejects_unknown_item():
    assert bad(b"a STATUS INBOX (FOO)\r\n").tag == "a"


def test_fetch_macro_expands():
    cmd = one(b"a FETCH 1:* ALL\r\n")
    assert cmd.args.macro == "ALL"
    assert [i.name for i in cmd.args.items] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]


def test_fetch_thunderbird_style_item_list():
    cmd = one(b"9 UID fetch 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc "
              b"Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To "
              b"Content-Type Reply-To)])\r\n")
    assert cmd.uid and cmd.name == "FETCH"
    peek = cmd.args.items[3]
    assert peek.peek and peek.section.text == "HEADER.FIELDS"
    assert peek.section.fields[:3] == ("FROM", "TO", "CC")
    assert peek.response_name().startswith("BODY[HEADER.FIELDS (FROM TO CC")


def test_fetch_partial_and_part_sections():
    cmd = one(b"a FETCH 2 (BODY[1.2.MIME] BODY[]<0.2048> BINARY.PEEK[1]<10.20> BINARY.SIZE[2])\r\n")
    items = cmd.args.items
    assert items[0] == FetchItem("BODY", Section((1, 2), "MIME"))
    assert items[1] == FetchItem("BODY", Section(), (0, 2048))
    assert items[1].response_name() == "BODY[]<0>"
    assert items[2] == FetchItem("BINARY", Section((1,)), (10, 20), peek=True)
    assert items[3] == FetchItem("BINARY.SIZE", Section((2,)))


def test_fetch_seen_semantics():
    cmd = one(b"a FETCH 1 (BODY[TEXT] BODY.PEEK[TEXT] RFC822 BODYSTRUCTURE)\r\n")
    assert [i.sets_seen for i in cmd.args.items] == [True, False, True, False]


def test_fetch_changedsince_modifier():
    cmd = one(b"s100 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n")
    assert cmd.args.changedsince == 12345 and cmd.args.vanished


@pytest.mark.parametrize("line", [
    b"a FETCH 1 (BODY[HEADER.FOO])\r\n",
    b"a FETCH 1 (BODY[MIME])\r\n",
    b"a FETCH 1 (BODY[]<0.0>)\r\n",
    b"a FETCH 1 (BINARY[TEXT])\r\n",
    b"a FETCH 1 ()\r\n",
    b"a FETCH 0 FLAGS\r\n",
    b"a FETCH 1:4294967296 FLAGS\r\n",
    b"a FETCH 1,,2 FLAGS\r\n",
    b"a FETCH 1 (FLAGS) (FOO 1)\r\n",
])
def test_invalid_fetch_is_bad(line):
    assert bad(line).tag == "a"


def test_sequence_sets():
    cmd = one(b"a FETCH 1:*,3,5:7,*:4 FLAGS\r\n")
    seq = cmd.args.sequence
    assert seq == SequenceSet(((1, None), (3, 3), (5, 7), (None, 4)))
    assert seq.resolve(10) == [(1, 10)]
    assert SequenceSet(((5, 7), (3, 3))).resolve(10) == [(3, 3), (5, 7)]
    assert one(b"a UID COPY $ Trash\r\n").args == Copy(SequenceSet(saved=True), "Trash")


def test_store_with_unchangedsince_and_silent():
    cmd = one(b"d105 STORE 7,5,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)\r\n")
    assert cmd.args == Store(SequenceSet(((7, 7), (5, 5), (9, 9))), "+", True, ("\\Deleted",),
                             320162338)


def test_store_flags_without_parentheses():
    assert one(b"a STORE 1 -FLAGS \\Seen $Label1\r\n").args.flags == ("\\Seen", "$Label1")
    assert one(b"a STORE 1 FLAGS ()\r\n").args.mode == ""


def test_store_rejects_bad_action():
    assert bad(b"a STORE 1 ++FLAGS (\\Seen)\r\n").tag == "a"


def test_search_rfc3501_example():
    cmd = one(b'A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"\r\n')
    assert cmd.args == Search(SearchAnd((
        SearchFlag("\\Flagged"), SearchDate(False, "since", date(1994, 2, 1)),
        SearchNot(SearchText("from", "Smith")))))


def test_search_nested_or_and_parentheses():
    cmd = one(b"a UID SEARCH OR (UNSEEN SMALLER 100) OR DELETED UID 1:5 HEADER X-Spam \"\"\r\n")
    key = cmd.args.key
    assert isinstance(key, SearchAnd)
    assert isinstance(key.keys[0], SearchOr)
    uids = SearchSet(SequenceSet(((1, 5),)), True)
    assert key.keys[0].right == SearchOr(SearchFlag("\\Deleted"), uids)
    assert key.keys[1] == SearchHeader("x-spam", "")


def test_search_charset_and_literal_text():
    reader = CommandReader()
    events = reader.feed(b"a SEARCH CHARSET UTF-8 SUBJECT {6}\r\n")
    assert events[0].size == 6
    events = reader.feed("grüß".encode() + b"\r\n")
    assert events[0].args.charset == "UTF-8"
    assert events[0].args.key == SearchText("subject", "grüß")


def test_search_unknown_charset_is_badcharset():
    err = bad(b"a SEARCH CHARSET X-KLINGON TEXT a\r\n")
    assert err.code == "BADCHARSET"


def test_search_modseq_with_entry():
    cmd = one(b'a SEARCH MODSEQ "/flags/\\\\draft" all 620162338\r\n')
    assert cmd.args.key == SearchModseq(620162338, "/flags/\\draft", "ALL")
    assert one(b"a SEARCH MODSEQ 5\r\n").args.key == SearchModseq(5)


def test_search_sequence_keys_and_new():
    cmd = one(b"a SEARCH 2:4 NEW\r\n")
    assert cmd.args.key.keys[0] == SearchSet(SequenceSet(((2, 4),)))


def test_esearch_return_options():
    assert one(b"a SEARCH RETURN (MIN COUNT) ALL\r\n").args.returns == ("MIN", "COUNT")
    assert one(b"a SEARCH RETURN () ALL\r\n").args.returns == ("ALL",)


@pytest.mark.parametrize("line", [
    b"a SEARCH\r\n",
    b"a SEARCH FOO\r\n",
    b"a SEARCH SINCE 31-Feb-2020\r\n",
    b"a SEARCH OR SEEN\r\n",
    b"a SEARCH ()\r\n",
    b"a SEARCH LARGER x\r\n",
])
def test_invalid_search_is_bad(line):
    assert bad(line).tag == "a"


def test_sort_command():
    cmd = one(b"a UID SORT (REVERSE DATE SUBJECT) UTF-8 ALL\r\n")
    assert isinstance(cmd.args, Sort) and cmd.args.criteria == ("REVERSE", "DATE", "SUBJECT")


def test_append_with_flags_date_and_literal():
    reader = CommandReader(authenticated=True)
    events = reader.feed(
        b'A003 APPEND saved-messages (\\Seen) "17-Jul-1996 02:44:25 -0700" {22}\r\n')
    assert [type(e).__name__ for e in events] == ["NeedContinuation"]
    events = reader.feed(b"Subject: hi\r\n\r\nhello\r\n\r\n")
    args = events[0].args
    assert isinstance(args, Append) and args.mailbox == "saved-messages"
    msg = args.messages[0]
    assert msg.flags == ("\\Seen",) and msg.data == b"Subject: hi\r\n\r\nhello\r\n"
    assert msg.internal_date is not None and msg.internal_date.utcoffset().total_seconds() == -25200


def test_append_without_flags_literal_plus():
    events = CommandReader(authenticated=True).feed(b"a APPEND INBOX {5+}\r\nhello\r\n")
    assert events[0].args.messages[0].data == b"hello"


def test_multiappend_and_literal8():
    reader = CommandReader(authenticated=True)
    events = reader.feed(b"a APPEND INBOX {1+}\r\nx (\\Draft) ~{2+}\r\n\x00y\r\n")
    messages = events[0].args.messages
    assert [m.data for m in messages] == [b"x", b"\x00y"]
    assert messages[1].binary and messages[1].flags == ("\\Draft",)


def test_mailbox_name_as_literal():
    reader = CommandReader()
    assert reader.feed(b"a SELECT {5}\r\n")[0].size == 5
    assert reader.feed(b"Trash\r\n")[0].args == Select("Trash")


def test_copy_move_and_uid_expunge():
    assert one(b"a MOVE 1:3 Archive\r\n").args == Copy(SequenceSet(((1, 3),)), "Archive")
    assert one(b"a UID EXPUNGE 3000:3002\r\n").args == Expunge(SequenceSet(((3000, 3002),)))


def test_id_and_enable():
    assert one(b"a ID NIL\r\n").args == Id(None)
    assert one(b'a ID ("name" "mbsync" "version" NIL)\r\n').args == Id(
        (("name", "mbsync"), ("version", None)))
    caps = one(b"a ENABLE CONDSTORE utf8=accept\r\n").args.capabilities
    assert caps == ("CONDSTORE", "UTF8=ACCEPT")


def test_authenticate_with_initial_response():
    cmd = one(b"a AUTHENTICATE PLAIN AGZyZWQAc2VjcmV0\r\n")
    assert cmd.args.mechanism == "PLAIN" and cmd.args.initial == "AGZyZWQAc2VjcmV0"


def test_quota_commands():
    assert one(b"a GETQUOTAROOT INBOX\r\n").args.mailbox == "INBOX"
    assert one(b'a SETQUOTA "" (STORAGE 512)\r\n').args.limits == (("STORAGE", 512),)


def test_unknown_command_is_bad_with_tag():
    err = bad(b"abc FROBNICATE 1\r\n")
    assert err.tag == "abc" and err.text == "unknown command"


def test_untagged_garbage_is_bad_without_tag():
    assert bad(b"+\r\n").tag is None
    assert bad(b"\x01\x02\r\n").tag is None


def test_blank_lines_are_ignored():
    assert CommandReader().feed(b"\r\n\r\n") == []


def test_uid_alone_is_bad():
    assert bad(b"a UID\r\n").tag == "a"
    assert bad(b"a UID LOGIN x y\r\n").tag == "a"
