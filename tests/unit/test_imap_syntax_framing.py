"""IMAP command reader framing: literals, limits, resynchronisation and pauses."""

from postroom_imap.syntax import (
    Command,
    CommandReader,
    LiteralTooBig,
    NeedContinuation,
    ParseError,
    RawLine,
)
from postroom_imap.syntax import Limits as ReaderLimits


def kinds(events):
    return [type(e).__name__ for e in events]


def test_synchronizing_literal_asks_for_continuation_before_data():
    reader = CommandReader()
    assert reader.feed(b"a LOGIN {4}\r\n") == [NeedContinuation("a", 4)]
    assert reader.in_command
    assert reader.feed(b"fred") == []
    events = reader.feed(b" {3}\r\n")
    assert events == [NeedContinuation("a", 3)]
    events = reader.feed(b"xyz\r\n")
    assert events[0].args.user == "fred" and events[0].args.password == "xyz"
    assert not reader.in_command


def test_huge_synchronizing_literal_is_refused_before_it_is_sent():
    reader = CommandReader(authenticated=True)
    events = reader.feed(b"a APPEND INBOX {4294967296}\r\nb NOOP\r\n")
    assert events == [LiteralTooBig("a", 4294967296, True), Command("b", "NOOP", events[1].args)]


def test_non_synchronizing_literal_over_limit_is_skipped_without_buffering():
    reader = CommandReader(ReaderLimits(max_literal=10))
    events = reader.feed(b"a LOGIN {50+}\r\n" + b"x" * 20)
    assert events == [LiteralTooBig("a", 50, False)]
    assert reader.pending == 0
    events = reader.feed(b"y" * 30 + b" rest\r\nb NOOP\r\n")
    assert kinds(events) == ["Command"] and events[0].tag == "b"


def test_skipped_command_with_second_literal_is_skipped_whole():
    reader = CommandReader(ReaderLimits(max_literal=10))
    events = reader.feed(b"a LOGIN {20+}\r\n" + b"x" * 20 + b" {3+}\r\nabc\r\nb NOOP\r\n")
    assert kinds(events) == ["LiteralTooBig", "Command"]


def test_append_literal_uses_the_message_size_limit():
    limits = ReaderLimits(max_literal=10, max_append_literal=1000)
    reader = CommandReader(limits, authenticated=True)
    events = reader.feed(b"a APPEND INBOX {500+}\r\n" + b"m" * 500 + b"\r\n")
    assert events[0].args.messages[0].data == b"m" * 500
    reader = CommandReader(limits, authenticated=True)
    assert kinds(reader.feed(b"a APPEND INBOX {1001}\r\n")) == ["LiteralTooBig"]


def test_small_literal_limit_applies_to_other_commands():
    reader = CommandReader(ReaderLimits(max_literal=10))
    assert kinds(reader.feed(b"a SELECT {11}\r\n")) == ["LiteralTooBig"]


def test_literal_minus_caps_non_synchronizing_literals():
    reader = CommandReader(ReaderLimits(literal_minus=True), authenticated=True)
    assert reader.feed(b"a SELECT {5000+}\r\n") == [LiteralTooBig("a", 5000, False)]


def test_command_total_size_is_bounded_across_literals():
    reader = CommandReader(ReaderLimits(max_literal=100, max_command=150))
    events = reader.feed(b"a LOGIN {100+}\r\n" + b"u" * 100 + b" {100}\r\n")
    assert kinds(events) == ["LiteralTooBig"]


def test_over_long_line_is_reported_once_and_reader_recovers():
    reader = CommandReader(ReaderLimits(max_line=100))
    events = reader.feed(b"a LOGIN " + b"x" * 500)
    assert events == [ParseError("a", "line too long")]
    assert reader.pending == 0
    events = reader.feed(b"x" * 500 + b"\r\nb NOOP\r\n")
    assert kinds(events) == ["Command"] and events[0].tag == "b"


def test_over_long_line_in_one_chunk_is_reported():
    reader = CommandReader(ReaderLimits(max_line=100))
    events = reader.feed(b"a NOOP " + b"x" * 200 + b"\r\nb NOOP\r\n")
    assert kinds(events) == ["ParseError", "Command"]


def test_deeply_nested_lists_are_bad_not_a_crash():
    events = CommandReader().feed(b"a FETCH 1 " + b"(" * 10000 + b")" * 10000 + b"\r\n")
    assert events == [ParseError("a", "lists nested too deeply")]


def test_too_many_arguments_is_bad():
    reader = CommandReader(ReaderLimits(max_args=50))
    flags = b" ".join(b"k%d" % i for i in range(100))
    events = reader.feed(b"a STORE 1 +FLAGS (" + flags + b")\r\n")
    assert events == [ParseError("a", "too many arguments")]


def test_unbalanced_parenthesis_and_quote_are_bad():
    events = CommandReader().feed(b'a FETCH 1 (FLAGS\r\nb LOGIN "x\r\nc NOOP\r\n')
    assert kinds(events) == ["ParseError", "ParseError", "Command"]


def test_literal_in_the_middle_of_a_line_is_bad():
    assert kinds(CommandReader().feed(b"a LOGIN {3} x\r\n")) == ["ParseError"]


def test_starttls_pauses_so_pipelined_plaintext_can_be_discarded():
    reader = CommandReader()
    events = reader.feed(b"a STARTTLS\r\nb LOGIN user pass\r\n")
    assert kinds(events) == ["Command"] and events[0].name == "STARTTLS"
    assert reader.paused and reader.pending > 0
    assert reader.discard_pending() == len(b"b LOGIN user pass\r\n")
    assert reader.resume() == []
    assert reader.feed(b"c CAPABILITY\r\n")[0].tag == "c"


def test_authenticate_exchange_reads_raw_lines():
    reader = CommandReader()
    assert reader.feed(b"a AUTHENTICATE PLAIN\r\n")[0].name == "AUTHENTICATE"
    assert reader.feed(b"AGZyZWQAc2VjcmV0\r\n") == []
    assert reader.resume(raw_line=True) == [RawLine(b"AGZyZWQAc2VjcmV0")]
    assert reader.paused
    assert reader.resume() == []


def test_idle_done_arrives_as_raw_line_and_next_command_follows():
    reader = CommandReader()
    assert reader.feed(b"a IDLE\r\n")[0].name == "IDLE"
    assert reader.feed(b"DONE\r\nb NOOP\r\n") == []
    assert reader.resume(raw_line=True) == [RawLine(b"DONE")]
    assert [e.tag for e in reader.resume()] == ["b"]


def test_many_pipelined_commands_in_one_feed():
    events = CommandReader().feed(b"".join(b"t%d NOOP\r\n" % i for i in range(100)))
    assert [e.tag for e in events] == [f"t{i}" for i in range(100)]


def test_byte_at_a_time_feed_matches_whole_feed():
    data = (b'a APPEND INBOX (\\Seen) {11}\r\nhello world\r\nb FETCH 1:* (BODY.PEEK[HEADER.FIELDS'
            b' (FROM)])\r\nc LOGIN "u" {2+}\r\npw\r\n')
    whole = CommandReader().feed(data)
    reader = CommandReader()
    pieces = [e for i in range(len(data)) for e in reader.feed(data[i : i + 1])]
    assert pieces == whole


def test_over_long_complete_line_reports_its_own_tag():
    reader = CommandReader(ReaderLimits(max_line=100))
    events = reader.feed(b"x NOOP " + b"y" * 200 + b"\r\nb NOOP\r\n")
    assert events[0] == ParseError("x", "line too long") and events[1].tag == "b"
