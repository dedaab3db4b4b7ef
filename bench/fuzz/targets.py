"""One function per parser: feed it fuzzer bytes and raise only on a real bug.

Each target is also importable without atheris (tests and a quick replay of a
crash file use them directly): ``python bench/fuzz/run.py --replay FILE``.
"""

from __future__ import annotations

from collections.abc import Callable

from postroom.mime import analyze
from postroom.smtp import grammar
from postroom.smtp.data import ChunkAccumulator, DataReader, End
from postroom_imap.syntax import CommandReader, Limits
from postroom_pop3 import wire


def _split(data: bytes) -> list[bytes]:
    """Cut the input into pieces at the bytes' own choosing (first byte = piece size)."""
    if not data:
        return [b""]
    size = data[0] % 64 + 1
    body = data[1:]
    return [body[i:i + size] for i in range(0, len(body), size)] or [b""]


def smtp_grammar(data: bytes) -> None:
    """Every line parses into a command or raises ParseError (which becomes a 5xx reply)."""
    for utf8 in (False, True):
        for line in data.split(b"\r\n"):
            try:
                grammar.parse_command(line, smtputf8=utf8)
            except grammar.ParseError:
                pass


def smtp_data(data: bytes) -> None:
    """DATA and BDAT readers: bounded output, no exception, at most one End."""
    reader = DataReader(max_size=64 * 1024)
    ends = 0
    total = 0
    for piece in _split(data):
        if reader.done:
            break
        for event in reader.feed(piece):
            if isinstance(event, End):
                ends += 1
            else:
                total += len(event.data)
    assert ends <= 1
    assert total <= 64 * 1024 + 1024
    chunks = ChunkAccumulator(max_size=64 * 1024)
    for piece in _split(data):
        chunks.feed(piece)
    if chunks.finish() is None:
        assert len(chunks.message()) <= 64 * 1024 + 2


def imap_reader(data: bytes) -> None:
    """The IMAP CommandReader frames any byte stream without raising, within its limits."""
    # the first byte picks the state: before login (small literals only) or after it
    reader = CommandReader(Limits(max_line=4096, max_literal=4096, max_command=16 * 1024,
                                  max_append_literal=16 * 1024, spool_threshold=1024),
                           authenticated=bool(data[:1]) and data[0] & 1 == 1)
    for piece in _split(data):
        reader.feed(piece)
        if reader.paused:
            reader.resume()
        assert reader.pending <= len(data)


def pop3_wire(data: bytes) -> None:
    """POP3 command lines, numbers, SASL PLAIN and TOP: only their documented errors."""
    for line in data.split(b"\r\n"):
        try:
            wire.parse_command(line)
        except wire.CommandSyntaxError:
            pass
        wire.parse_number(line)
        try:
            wire.decode_sasl_plain(line)
        except wire.SaslError:
            pass
    message = wire.to_crlf(data)
    assert message.startswith(wire.top(message, data[0] if data else 0))
    stuffed = wire.dot_stuff(message)
    assert stuffed.endswith(b".\r\n")


def mime_analyze(data: bytes) -> None:
    """analyze() never raises; its metadata is JSON-ready."""
    meta = analyze(data)
    meta.to_dict()


TARGETS: dict[str, Callable[[bytes], None]] = {
    "smtp-grammar": smtp_grammar,
    "smtp-data": smtp_data,
    "imap-reader": imap_reader,
    "pop3-wire": pop3_wire,
    "mime-analyze": mime_analyze,
}
