"""Dot-stuffing on whole lines, whatever the chunking (the twisted.mail per-chunk defect)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom_mta.smtpclient_data import DotStuffer, stuff, unstuff


def stuff_in_chunks(message: bytes, cuts: list[int]) -> bytes:
    stuffer = DotStuffer()
    out, start = [], 0
    for cut in [*sorted(cuts), len(message)]:
        out.append(stuffer.feed(message[start:cut]))
        start = cut
    return b"".join([*out, stuffer.finish()])


def test_dot_line_is_stuffed_and_terminator_added():
    assert stuff(b"a\r\n.\r\nb\r\n") == b"a\r\n..\r\nb\r\n.\r\n"


def test_leading_dot_of_the_message_is_stuffed():
    assert stuff(b".hidden\r\n") == b"..hidden\r\n.\r\n"


def test_message_of_only_dot_lines():
    assert stuff(b".\r\n.\r\n.\r\n") == b"..\r\n..\r\n..\r\n.\r\n"


def test_missing_final_line_ending_is_added():
    assert stuff(b"no newline") == b"no newline\r\n.\r\n"


def test_empty_message_is_just_the_terminator():
    assert stuff(b"") == b".\r\n"


def test_bare_lf_and_bare_cr_become_crlf():
    assert stuff(b"a\nb\rc\r\n.d\n") == b"a\r\nb\r\nc\r\n..d\r\n.\r\n"


def test_bare_lf_dot_lf_cannot_end_the_message_early():
    # "\n.\n" is read as end-of-data by lax receivers (SMTP smuggling)
    assert stuff(b"a\n.\nMAIL FROM:<x@y>\n") == b"a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n"


def test_crlf_split_between_chunks_stays_one_line_ending():
    assert stuff_in_chunks(b"a\r\n.b\r\n", [1, 2]) == b"a\r\n..b\r\n.\r\n"


@pytest.mark.parametrize("chunk_size", [16 * 1024, 64 * 1024])
@pytest.mark.parametrize("shift", range(-3, 4))
def test_dot_line_on_every_offset_around_chunk_boundary(chunk_size, shift):
    # a "." line starting at chunk_size + shift: exactly where twisted.mail broke
    filler = b"x" * 76 + b"\r\n"
    body = (filler * (chunk_size // len(filler) + 1))[: chunk_size + shift - 2]
    head = body.removesuffix(b"\r") + b"x" * body.endswith(b"\r") + b"\r\n"
    assert len(head) == chunk_size + shift
    message = head + b".\r\nQUIT\r\n" + filler
    wire = stuff(message, chunk_size)
    assert b"\r\n.\r\n" not in wire[:-5]
    assert unstuff(wire) == message


@pytest.mark.parametrize("chunk_size", [16 * 1024, 64 * 1024])
def test_dot_lines_at_every_offset_over_two_chunk_boundaries(chunk_size):
    message = b"".join(b"y" * n + b"\r\n.\r\n" for n in range(64)) * 700
    wire = stuff(message, chunk_size)
    assert wire.count(b"\r\n.\r\n") == 1 and wire.endswith(b"\r\n.\r\n")
    assert unstuff(wire) == message


@given(st.lists(st.sampled_from([b".", b"\r\n", b"\r", b"\n", b"a", b"..", b"\r\n."]),
                max_size=40),
       st.lists(st.integers(min_value=0, max_value=80), max_size=6))
def test_chunking_never_changes_the_wire_form(parts, cuts):
    message = b"".join(parts)
    cuts = [c for c in cuts if c <= len(message)]
    assert stuff_in_chunks(message, cuts) == stuff(message, len(message) + 1)


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_wire_form_has_one_terminator_and_round_trips(message, chunk_size):
    wire = stuff(message, chunk_size)
    # the only end-of-data is the last line, and no line ending but CRLF is on the wire
    assert wire == b".\r\n" or wire.index(b"\r\n.\r\n") == len(wire) - 5
    assert not wire.startswith(b".\r\n") or wire == b".\r\n"
    assert b"\r" not in wire.replace(b"\r\n", b"") and b"\n" not in wire.replace(b"\r\n", b"")
    normalised = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if normalised and not normalised.endswith(b"\r\n"):
        normalised += b"\r\n"
    assert unstuff(wire) == normalised
