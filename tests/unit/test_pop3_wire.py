"""The POP3 wire helpers: command parsing, CRLF, dot-stuffing across chunks, TOP, SASL PLAIN."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom_pop3 import wire


def unstuff(body: bytes) -> bytes:
    """What a client does: drop the terminator line and one leading dot of each line."""
    assert body.endswith(b".\r\n")
    lines = body[:-3].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def test_parse_command_uppercases_keyword_and_keeps_argument() -> None:
    command = wire.parse_command(b"pass my secret  pw")
    assert command.keyword == "PASS"
    assert command.argument == b"my secret  pw"


@pytest.mark.parametrize("line", [b"", b" USER", b"US", b"USERS1", b"\x00\xff", b"12 3"])
def test_parse_command_rejects_garbage(line: bytes) -> None:
    with pytest.raises(wire.CommandSyntaxError):
        wire.parse_command(line)


@pytest.mark.parametrize(("text", "value"), [(b"1", 1), (b"007", 7), (b"4294967295", 4294967295)])
def test_parse_number_accepts_digits(text: bytes, value: int) -> None:
    assert wire.parse_number(text) == value


@pytest.mark.parametrize("text", [b"-1", b"+1", b"1.0", b"", b"x", b"9" * 400, b"1 2"])
def test_parse_number_rejects_signs_garbage_and_huge_numbers(text: bytes) -> None:
    assert wire.parse_number(text) is None


def test_to_crlf_fixes_bare_lf_and_bare_cr() -> None:
    assert wire.to_crlf(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd"


def test_dot_stuff_doubles_leading_dots_only() -> None:
    assert wire.dot_stuff(b".a\r\nb.c\r\n.\r\n") == b"..a\r\nb.c\r\n..\r\n.\r\n"


def test_dot_stuff_adds_crlf_when_message_lacks_one() -> None:
    assert wire.dot_stuff(b"abc") == b"abc\r\n.\r\n"


def test_dot_stuff_of_empty_message_is_terminator_only() -> None:
    assert wire.dot_stuff(b"") == b".\r\n"


def test_dot_stuffer_stuffs_a_line_that_starts_at_a_chunk_boundary() -> None:
    stuffer = wire.DotStuffer()
    out = stuffer.feed(b"x" * 10 + b"\r\n") + stuffer.feed(b".\r\nrest\r\n") + stuffer.finish()
    assert out == b"x" * 10 + b"\r\n..\r\nrest\r\n.\r\n"


@given(st.lists(st.sampled_from([b".", b"\r\n", b"a", b".."]), max_size=40),
       st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=20))
def test_dot_stuffer_output_does_not_depend_on_chunking(parts: list[bytes],
                                                        cuts: list[int]) -> None:
    data = b"".join(parts)
    stuffer = wire.DotStuffer()
    out, position, i = b"", 0, 0
    while position < len(data):
        size = cuts[i % len(cuts)]
        out += stuffer.feed(data[position:position + size])
        position += size
        i += 1
    out += stuffer.finish()
    assert out == wire.dot_stuff(data)


@given(st.lists(st.sampled_from([b".", b"..", b"a", b" "]), max_size=10).map(b"".join),
       st.integers(min_value=0, max_value=5))
def test_dot_stuffing_round_trips_through_a_client(line: bytes, count: int) -> None:
    message = b"".join(line + b"\r\n" for _ in range(count))
    assert unstuff(wire.dot_stuff(message)) == message


MESSAGE = b"Subject: hi\r\nFrom: a@example.org\r\n\r\nline1\r\nline2\r\nline3\r\n"


def test_top_zero_lines_is_header_and_blank_line() -> None:
    assert wire.top(MESSAGE, 0) == b"Subject: hi\r\nFrom: a@example.org\r\n\r\n"


def test_top_two_lines() -> None:
    assert wire.top(MESSAGE, 2).endswith(b"\r\n\r\nline1\r\nline2\r\n")


def test_top_more_lines_than_body_is_whole_message() -> None:
    assert wire.top(MESSAGE, 10**9) == MESSAGE


def test_top_of_message_without_body_is_whole_message() -> None:
    assert wire.top(b"Subject: x\r\n", 3) == b"Subject: x\r\n"


def plain(*fields: bytes) -> bytes:
    return base64.b64encode(b"\0".join(fields))


def test_decode_sasl_plain_returns_the_three_fields() -> None:
    assert wire.decode_sasl_plain(plain(b"", b"bob@example.org", b"p w")) == (
        "", "bob@example.org", "p w")


@pytest.mark.parametrize("response", [
    b"!!!notbase64", b"YWJj", plain(b"a", b"b"), plain(b"", b"", b"pw"), plain(b"", b"u", b""),
    plain(b"", b"\xff", b"pw"), b"=",
])
def test_decode_sasl_plain_rejects_malformed_responses(response: bytes) -> None:
    with pytest.raises(wire.SaslError):
        wire.decode_sasl_plain(response)
