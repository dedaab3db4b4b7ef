"""The DATA reader and BDAT accumulator: termination, dot-unstuffing, hostile content, fuzzing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.smtp import replies as R
from postroom.smtp.data import ChunkAccumulator, Content, DataReader, End


def read(chunks: list[bytes], max_size: int = 10_000, max_line: int = 1000
         ) -> tuple[bytes, End | None]:
    """Feed ``chunks``; after the End, later chunks are appended to its ``rest``."""
    reader = DataReader(max_size, max_line)
    content = []
    end = None
    for index, chunk in enumerate(chunks):
        for event in reader.feed(chunk):
            if isinstance(event, Content):
                content.append(event.data)
            else:
                end = End(event.rest + b"".join(chunks[index + 1:]), event.rejection, event.size)
        if end:
            break
    return b"".join(content), end


def test_message_ends_on_crlf_dot_crlf() -> None:
    content, end = read([b"Subject: x\r\n\r\nbody\r\n.\r\n"])
    assert content == b"Subject: x\r\n\r\nbody\r\n"
    assert end is not None and end.rejection is None and end.rest == b""


def test_empty_message_ends_immediately() -> None:
    content, end = read([b".\r\n"])
    assert content == b"" and end is not None


def test_bytes_after_the_end_are_returned_as_rest() -> None:
    _, end = read([b"a\r\n.\r\nQUIT\r\n"])
    assert end is not None and end.rest == b"QUIT\r\n"


def test_dot_stuffed_line_is_unstuffed() -> None:
    content, _ = read([b"..hidden\r\n...\r\n.\r\n"])
    assert content == b".hidden\r\n..\r\n"


def test_dot_unstuffing_works_across_every_split_point() -> None:
    wire = b"a\r\n..b\r\n.\r\n..\r\nc\r\n.\r\n"
    for cut in range(len(wire) + 1):
        for cut2 in range(cut, len(wire) + 1):
            content, end = read([wire[:cut], wire[cut:cut2], wire[cut2:]])
            assert content == b"a\r\n.b\r\n", (cut, cut2)
            assert end is not None and end.rest == b"..\r\nc\r\n.\r\n"


def test_terminator_split_byte_by_byte() -> None:
    wire = b"x\r\n.\r\n"
    content, end = read([bytes([b]) for b in wire])
    assert content == b"x\r\n" and end is not None


def test_lf_dot_lf_does_not_end_the_message() -> None:
    _, end = read([b"a\n.\nMAIL FROM:<x@y.example>\r\n"])
    assert end is None


def test_lf_dot_lf_marks_the_message_rejected_at_the_real_end() -> None:
    _, end = read([b"a\n.\nb\r\n.\r\n"])
    assert end is not None and end.rejection == R.BARE_LINE_ENDING


def test_cr_dot_cr_does_not_end_the_message() -> None:
    _, end = read([b"a\r.\rb\r\n"])
    assert end is None


def test_lf_dot_crlf_does_not_end_the_message() -> None:
    _, end = read([b"a\n.\r\nRCPT TO:<x@y.example>\r\n"])
    assert end is None


def test_crlf_dot_lf_does_not_end_the_message() -> None:
    _, end = read([b"a\r\n.\nDATA\r\n"])
    assert end is None


def test_bare_cr_is_rejected() -> None:
    content, end = read([b"a\rb\r\n.\r\n"])
    assert end is not None and end.rejection == R.BARE_LINE_ENDING
    assert b"\r" not in content.replace(b"\r\n", b"")


def test_bare_lf_is_never_stored() -> None:
    content, end = read([b"ok\r\nbad\nline\r\nmore\r\n.\r\n"])
    assert end is not None and end.rejection == R.BARE_LINE_ENDING
    assert b"bad" not in content and b"more" not in content


def test_bare_cr_split_across_reads_is_rejected() -> None:
    _, end = read([b"a\r", b"b\r\n.\r\n"])
    assert end is not None and end.rejection == R.BARE_LINE_ENDING


def test_crlf_split_across_reads_is_not_bare() -> None:
    _, end = read([b"a\r", b"\n.\r\n"])
    assert end is not None and end.rejection is None


def test_nul_is_rejected() -> None:
    _, end = read([b"a\x00b\r\n.\r\n"])
    assert end is not None and end.rejection == R.NUL_IN_MESSAGE


def test_line_of_1000_octets_is_accepted() -> None:
    _, end = read([b"x" * 998 + b"\r\n.\r\n"])
    assert end is not None and end.rejection is None


def test_over_long_line_is_rejected_but_reading_continues_to_the_real_end() -> None:
    smuggled = b"\r\nMAIL FROM:<x@y.example>\r\nRCPT TO:<z@y.example>\r\nDATA\r\n"
    _, end = read([b"x" * 5000 + smuggled, b"evil\r\n.\r\nQUIT\r\n"])
    assert end is not None
    assert end.rejection == R.DATA_LINE_TOO_LONG
    assert end.rest == b"QUIT\r\n"


def test_over_long_line_without_crlf_is_skipped_in_bounded_memory() -> None:
    reader = DataReader(10_000)
    for _ in range(100):
        reader.feed(b"y" * 10_000)
    assert reader.rejection == R.DATA_LINE_TOO_LONG
    assert len(reader._pending) <= 1
    events = reader.feed(b"\r\n.\r\n")
    assert isinstance(events[-1], End)


def test_over_long_line_ending_in_cr_then_lf_then_dot() -> None:
    _, end = read([b"z" * 2000 + b"\r", b"\n.\r\n"])
    assert end is not None and end.rejection == R.DATA_LINE_TOO_LONG and end.rest == b""


def test_size_limit_is_enforced_while_receiving_and_excess_discarded() -> None:
    content, end = read([b"abcdefgh\r\n" * 100, b".\r\n"], max_size=95)
    assert end is not None and end.rejection == R.MESSAGE_TOO_BIG
    assert len(content) <= 95


def test_feeding_after_the_end_is_an_error() -> None:
    reader = DataReader(100)
    reader.feed(b".\r\n")
    try:
        reader.feed(b"x")
    except RuntimeError:
        return
    raise AssertionError("feed after End must raise")


# --- BDAT accumulator


def test_chunks_are_concatenated() -> None:
    acc = ChunkAccumulator(1000)
    acc.feed(b"Subject: a\r")
    acc.feed(b"\n\r\nbody\r\n")
    assert acc.finish() is None
    assert acc.message() == b"Subject: a\r\n\r\nbody\r\n"


def test_chunk_without_final_crlf_gets_one() -> None:
    acc = ChunkAccumulator(1000)
    acc.feed(b"a\r\nb")
    assert acc.finish() is None and acc.message() == b"a\r\nb\r\n"


def test_bare_lf_in_chunk_is_rejected() -> None:
    acc = ChunkAccumulator(1000)
    acc.feed(b"a\nb\r\n")
    assert acc.finish() == R.BARE_LINE_ENDING


def test_trailing_cr_at_last_chunk_is_bare() -> None:
    acc = ChunkAccumulator(1000)
    acc.feed(b"a\r")
    assert acc.finish() == R.BARE_LINE_ENDING


def test_chunks_over_the_size_limit_are_rejected() -> None:
    acc = ChunkAccumulator(10)
    acc.feed(b"12345\r\n")
    acc.feed(b"12345\r\n")
    assert acc.rejection == R.MESSAGE_TOO_BIG and acc.message() == b""


def test_long_line_across_chunks_is_rejected() -> None:
    acc = ChunkAccumulator(100_000)
    acc.feed(b"x" * 600)
    acc.feed(b"x" * 600 + b"\r\n")
    assert acc.rejection == R.DATA_LINE_TOO_LONG


# --- fuzzing


def _stuff(lines: list[bytes]) -> bytes:
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


_LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")
                                   .replace(b"\0", b""))


@settings(max_examples=400, deadline=None)
@given(lines=st.lists(st.one_of(_LINE, st.sampled_from([b".", b"..", b".x", b""])), max_size=30),
       trailer=st.binary(max_size=30), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_fuzz_any_split_of_a_stuffed_message_round_trips(
        lines: list[bytes], trailer: bytes, cuts: list[int]) -> None:
    wire = _stuff(lines) + b".\r\n" + trailer
    points = sorted({c % (len(wire) + 1) for c in cuts})
    chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    content, end = read(chunks, max_size=1_000_000)
    assert end is not None and end.rejection is None
    assert content == b"".join(line + b"\r\n" for line in lines)
    assert end.rest == trailer


@settings(max_examples=400, deadline=None)
@given(stream=st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\0", b"x" * 50]),
                       max_size=60).map(b"".join),
       cuts=st.lists(st.integers(0, 3000), max_size=6))
def test_fuzz_reader_ends_only_at_the_first_crlf_dot_crlf(stream: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    content, end = read(chunks, max_size=1_000_000, max_line=120)
    first = (b"\r\n" + stream).find(b"\r\n.\r\n")
    if first < 0:
        assert end is None
        return
    assert end is not None
    consumed = len(stream) - len(end.rest)
    assert consumed == first + 3
    if end.rejection is None:
        body = content.replace(b"\r\n", b"")
        assert b"\r" not in body and b"\n" not in body and b"\0" not in body
