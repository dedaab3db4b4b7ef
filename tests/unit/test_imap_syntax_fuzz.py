"""Fuzz tests: the IMAP command reader never raises, stays bounded and resynchronises."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom_imap.syntax import (
    Command,
    CommandReader,
    LiteralTooBig,
    NeedContinuation,
    ParseError,
    RawLine,
)
from postroom_imap.syntax import Limits as ReaderLimits
from postroom_imap.syntax_mutf7 import decode_mutf7, encode_mutf7

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EVENTS = (Command, NeedContinuation, LiteralTooBig, ParseError, RawLine)
LIMITS = ReaderLimits(max_line=200, max_literal=100, max_append_literal=300, max_depth=8,
                      max_args=50)

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
@given(chunks=st.lists(st.one_of(imapish, st.binary(max_size=64)), max_size=8))
def test_reader_never_raises_and_stays_bounded(chunks):
    reader = CommandReader(LIMITS)
    for chunk in chunks:
        for event in drain(reader, chunk):
            assert isinstance(event, EVENTS)
        assert reader.pending <= LIMITS.max_line + 1


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
    whole = CommandReader(LIMITS).feed(data)
    reader = CommandReader(LIMITS)
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
