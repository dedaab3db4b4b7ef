"""Fuzz tests: the IMAP command reader never raises, stays bounded and resynchronises."""

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.mutf7 import decode_mutf7, encode_mutf7
from postroom_imap.syntax import (
    Command,
    CommandReader,
    LiteralRefused,
    LiteralTooBig,
    NeedContinuation,
    ParseError,
    RawLine,
)
from postroom_imap.syntax import Limits as ReaderLimits

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EVENTS = (Command, NeedContinuation, LiteralTooBig, LiteralRefused, ParseError, RawLine)
LIMITS = ReaderLimits(max_line=200, max_literal=100, max_append_literal=300, max_depth=8,
                      max_args=50, max_command=400, max_append_command=600, max_literals=5,
                      max_preauth_literal=20, max_preauth_command=100, spool_threshold=50)

FRAGMENTS = [b"a ", b"UID ", b"FETCH ", b"SEARCH ", b"APPEND ", b"LOGIN ", b"STORE ", b"IDLE",
             b"STARTTLS", b"(", b")", b'"', b"\\", b"{3}", b"{2+}", b"~{1}", b"\r\n", b"\n",
             b"1:*", b"BODY[", b"]", b"<0.5>", b" ", b"NIL", b"OR ", b"NOT ", b"\x00", b"\xff"]
imapish = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=8)), max_size=40).map(
    b"".join)


def drain(reader: CommandReader, data: bytes) -> list:
    events = reader.feed(data)
    while reader.paused:
        events += reader.resume()
    return events


@FUZZ
@given(chunks=st.lists(st.one_of(imapish, st.binary(max_size=64)), max_size=8),
       authenticated=st.booleans())
def test_reader_never_raises_and_stays_bounded(chunks, authenticated):
    reader = CommandReader(LIMITS, authenticated=authenticated)
    command = (max(LIMITS.max_command, LIMITS.max_append_command) if authenticated
               else LIMITS.max_preauth_command)
    for chunk in chunks:
        for event in drain(reader, chunk):
            assert isinstance(event, EVENTS)
            if not authenticated:
                assert not (isinstance(event, NeedContinuation) and event.size > 20)
                assert not (isinstance(event, Command) and event.name == "APPEND")
        assert reader.pending <= LIMITS.max_line + 1
        # a command's literals within its budget, plus the line being read after the last one
        assert reader.held <= command + 2 * (LIMITS.max_line + 2)


@FUZZ
@given(payloads=st.lists(st.binary(max_size=120), min_size=1, max_size=4),
       cuts=st.lists(st.integers(0, 600), max_size=10))
def test_spooled_append_messages_read_back_exactly(payloads, cuts):
    data = b"a APPEND INBOX" + b"".join(b" {%d}\r\n" % len(p) + p for p in payloads) + b"\r\n"
    reader = CommandReader(LIMITS, authenticated=True)
    events = []
    last = 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        events += reader.feed(data[last:cut])
        last = cut
    command = events[-1]
    assert isinstance(command, Command), events
    got = [m.data if isinstance(m.data, bytes) else m.data.read() for m in command.args.messages]
    assert got == payloads
    command.args.close()


@FUZZ
@given(garbage=st.binary(max_size=300).filter(lambda b: b"{" not in b))
def test_reader_resynchronises_at_next_line(garbage):
    reader = CommandReader(LIMITS)
    drain(reader, garbage)
    events = drain(reader, b"\r\nzz9 NOOP\r\n")
    assert events and events[-1] == Command("zz9", "NOOP", events[-1].args)


@FUZZ
@given(payload=st.binary(max_size=300), cuts=st.lists(st.integers(0, 400), max_size=10))
def test_literal_split_across_feeds_parses_identically(payload, cuts):
    data = b"a APPEND INBOX (\\Seen) {%d}\r\n" % len(payload) + payload + b"\r\nb NOOP\r\n"
    limits = dataclasses.replace(LIMITS, spool_threshold=1000)  # in memory, so comparable
    whole = CommandReader(limits, authenticated=True).feed(data)
    reader = CommandReader(limits, authenticated=True)
    events = []
    last = 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        events += reader.feed(data[last:cut])
        last = cut
    assert events == whole
    assert whole[1].args.messages[0].data == payload


@FUZZ
@given(name=st.text(max_size=30))
def test_modified_utf7_round_trips(name):
    encoded = encode_mutf7(name)
    assert encoded.isascii()
    assert decode_mutf7(encoded) == name
