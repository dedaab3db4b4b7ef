"""ManageSieve framing (RFC 5804 section 4): strings, literals, numbers, and their bounds."""

from __future__ import annotations

import pytest

from postroom_managesieve import wire


def frame(data: bytes, *, max_literal: int = 1000, max_held: int = 2000) -> list:
    framer = wire.Framer(max_literal=max_literal, max_held=max_held)
    framer.feed(data)
    out = []
    while (event := framer.next()) is not None:
        out.append(event)
    return out


def test_a_command_with_quoted_strings_and_a_number():
    [command] = frame(b'havespace "my script" 1234\r\n')
    assert command == wire.Command("HAVESPACE", (b"my script", 1234))


def test_quoted_strings_unescape_backslash_and_quote():
    [command] = frame(b'PUTSCRIPT "a\\"b\\\\c" "x"\r\n')
    assert command.args == (b'a"b\\c', b"x")


@pytest.mark.parametrize("marker", [b"{11+}", b"{11}"])
def test_literals_of_both_kinds_are_read_without_a_continuation(marker):
    [command] = frame(b'PUTSCRIPT "s" ' + marker + b"\r\nkeep;\r\nstop\r\n")
    assert command == wire.Command("PUTSCRIPT", (b"s", b"keep;\r\nstop"), 11)


def test_a_command_arriving_in_pieces_is_assembled():
    framer = wire.Framer(max_literal=100, max_held=100)
    data = b'PUTSCRIPT "s" {5+}\r\nkeep;\r\nNOOP\r\n'
    events = []
    for i in range(len(data)):
        framer.feed(data[i:i + 1])
        while (event := framer.next()) is not None:
            events.append(event)
    assert events == [wire.Command("PUTSCRIPT", (b"s", b"keep;"), 5), wire.Command("NOOP")]


def test_a_literal_over_the_limit_is_skipped_and_refused_as_quota():
    events = frame(b'PUTSCRIPT "s" {20+}\r\n' + b"x" * 20 + b"\r\nNOOP\r\n", max_literal=10)
    assert events[0] == wire.FrameError("a string is at most 10 octets", quota=True)
    assert events[1] == wire.Command("NOOP")


def test_literals_together_over_the_held_bound_are_refused():
    events = frame(b"CHECKSCRIPT {8+}\r\n12345678 {8+}\r\n12345678\r\n", max_literal=10,
                   max_held=12)
    assert [type(e) for e in events] == [wire.FrameError]
    assert events[0].quota


def test_a_huge_literal_length_holds_nothing():
    framer = wire.Framer(max_literal=10, max_held=10)
    framer.feed(b"PUTSCRIPT \"s\" {4294967295+}\r\n" + b"x" * 100_000)
    assert framer.next() is None
    assert framer.pending == 0


@pytest.mark.parametrize("line", [
    b'PUTSCRIPT "unterminated',
    b'NOOP "bad \\x escape"',
    b"NOOP {5+} trailing",
    b"NOOP {99999999999+}",
    b"NOOP 12ab",
    b"NOOP 99999999999",
    b"NOOP @",
    b'"s" NOOP',
])
def test_syntax_errors_are_errors_not_exceptions(line):
    [event] = frame(line + b"\r\n")
    assert isinstance(event, wire.FrameError) and not event.quota


def test_a_quoted_string_over_1024_octets_is_an_error():
    [event] = frame(b'NOOP "' + b"a" * 1025 + b'"\r\n')
    assert isinstance(event, wire.FrameError)


def test_a_line_that_never_ends_is_bounded_and_answered_once_it_does():
    framer = wire.Framer(max_literal=10, max_held=10, max_line=100)
    framer.feed(b"N" * 1000)
    assert framer.next() is None
    assert framer.pending == 0
    framer.feed(b"more\r\nNOOP\r\n")
    assert framer.next() == wire.FrameError("line too long")
    assert framer.next() == wire.Command("NOOP")


def test_a_sasl_response_is_a_string_without_a_command_name():
    [event] = frame(b'"AGJvYgBwdw=="\r\n')
    assert event == wire.Command("", (b"AGJvYgBwdw==",))


def test_empty_lines_are_ignored():
    assert frame(b"\r\n\r\nNOOP\r\n") == [wire.Command("NOOP")]


def test_discard_forgets_a_command_in_progress():
    framer = wire.Framer(max_literal=100, max_held=100)
    framer.feed(b'PUTSCRIPT "s" {50+}\r\nabc')
    assert framer.next() is None
    framer.discard()
    framer.feed(b"NOOP\r\n")
    assert framer.next() == wire.Command("NOOP")


@pytest.mark.parametrize(("text", "sent"), [
    ("plain", b'"plain"'),
    ('a "q" \\', b'"a \\"q\\" \\\\"'),
    ("two\r\nlines", b"{10}\r\ntwo\r\nlines"),
])
def test_quote_sends_short_strings_quoted_and_others_as_literals(text, sent):
    assert wire.quote(text) == sent


def test_the_commands_after_a_long_line_in_one_chunk_are_kept():
    framer = wire.Framer(max_literal=10, max_held=10, max_line=100)
    framer.feed(b"A" * 150)
    assert framer.next() is None
    framer.feed(b"A" * 150 + b"\r\nNOOP\r\n")
    assert framer.next() == wire.FrameError("line too long")
    assert framer.next() == wire.Command("NOOP")
