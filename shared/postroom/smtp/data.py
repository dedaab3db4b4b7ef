"""Message content readers as pure state machines: the DATA reader and the BDAT accumulator.

The DATA reader ends a message only on CRLF.CRLF, un-stuffs dots (RFC 5321
section 4.5.2) correctly however the bytes are split into reads, and never
leaves DATA early: a bare CR or LF, a NUL, an over-long line or too much data
mark the message as rejected, and the reader keeps consuming (and
discarding) until the real end so that nothing in a body is ever read as a
command (the SMTP smuggling class of CVE-2023-51764).
"""

from __future__ import annotations

from dataclasses import dataclass

from postroom.smtp import replies as R
from postroom.smtp.replies import Reply

# RFC 5321 section 4.5.3.1.6: a text line is at most 1000 octets including its CRLF
DEFAULT_MAX_LINE = 1000


@dataclass(frozen=True)
class Content:
    """Un-stuffed message bytes, in order; a rejected message yields no more of these."""

    data: bytes


@dataclass(frozen=True)
class End:
    """CRLF.CRLF was read: ``rest`` is what followed it (pipelined commands)."""

    rest: bytes
    rejection: Reply | None
    size: int


DataEvent = Content | End


class DataReader:
    """Feed it the bytes after ``354``; it yields Content events then one End."""

    def __init__(self, max_size: int, max_line_length: int = DEFAULT_MAX_LINE) -> None:
        self.max_size = max_size
        self.max_line_length = max_line_length
        self.size = 0
        self.rejection: Reply | None = None
        self.done = False
        # an incomplete line (never more than one line long) waiting for its CRLF
        self._pending = b""
        # inside a line already known to be too long: its bytes are skipped up to its CRLF
        self._in_long_line = False

    def feed(self, data: bytes) -> list[DataEvent]:
        if self.done:
            raise RuntimeError("DATA already ended")
        buf = self._pending + data
        self._pending = b""
        out: list[bytes] = []
        events: list[DataEvent] = []
        limit = self.max_line_length - 2
        pos = self._fast_path(buf, limit, out)
        while True:
            idx = buf.find(b"\r\n", pos)
            if idx < 0:
                break
            line = buf[pos:idx]
            pos = idx + 2
            if self._in_long_line:
                self._in_long_line = False
                continue
            if line == b".":
                self.done = True
                if out:
                    events.append(Content(b"".join(out)))
                events.append(End(buf[pos:], self.rejection, self.size))
                return events
            if line[:1] == b".":
                line = line[1:]
            if len(line) > limit:
                self._reject(R.DATA_LINE_TOO_LONG)
            elif b"\r" in line or b"\n" in line:
                # lines are split only at CRLF, so any CR or LF left inside one is bare
                self._reject(R.BARE_LINE_ENDING)
            elif b"\0" in line:
                self._reject(R.NUL_IN_MESSAGE)
            self._store(line + b"\r\n", out)
        tail = buf[pos:]
        trailing_cr = tail.endswith(b"\r")
        if not self._in_long_line:
            length = len(tail) - trailing_cr - (tail[:1] == b".")
            if length > limit:
                self._reject(R.DATA_LINE_TOO_LONG)
                self._in_long_line = True
        # a long line's bytes are dropped, but a final CR may be the first half of its CRLF
        if self._in_long_line:
            self._pending = b"\r" if trailing_cr else b""
        else:
            self._pending = tail
        if out:
            events.append(Content(b"".join(out)))
        return events

    def _fast_path(self, buf: bytes, limit: int, out: list[bytes]) -> int:
        """Take every complete line of ``buf`` at once when none needs a closer look.

        That is the common case (no dot at a line start, no bare CR/LF, no NUL,
        no long line); checking it with C-level byte operations is many times
        faster than the per-line loop, which handles everything else.
        """
        if self._in_long_line or self.rejection is not None:
            return 0
        last = buf.rfind(b"\r\n")
        if last < 0:
            return 0
        region = buf[:last + 2]
        crlf = region.count(b"\r\n")
        if (region[:1] == b"." or b"\n." in region or b"\0" in region
                or region.count(b"\r") != crlf or region.count(b"\n") != crlf
                or max(map(len, region.split(b"\r\n"))) > limit):
            return 0
        self._store(region, out)
        # a message that grew too big is re-examined line by line (nothing more is stored)
        return len(region) if self.rejection is None else 0

    def _reject(self, reply: Reply) -> None:
        if self.rejection is None:
            self.rejection = reply

    def _store(self, piece: bytes, out: list[bytes]) -> None:
        if self.rejection is not None:
            return
        if self.size + len(piece) > self.max_size:
            self._reject(R.MESSAGE_TOO_BIG)
            return
        self.size += len(piece)
        out.append(piece)


class ChunkAccumulator:
    """The message of a BDAT transaction (RFC 3030), checked as it arrives chunk by chunk.

    Content is not dot-stuffed, but unless the client asked for BINARYMIME
    (which we do not offer) it must still be CRLF lines: bare CR or LF, NUL and
    over-long lines are refused as in DATA, across chunk boundaries.
    """

    def __init__(self, max_size: int, max_line_length: int = DEFAULT_MAX_LINE) -> None:
        self.max_size = max_size
        self.max_line_length = max_line_length
        self.size = 0
        self.rejection: Reply | None = None
        self._chunks: list[bytes] = []
        self._pending_cr = False
        self._line_length = 0

    def feed(self, data: bytes) -> None:
        """Add part of a chunk (any split); check it and keep it unless rejected."""
        if not data:
            return
        self._check(data)
        if self.rejection is not None:
            self._chunks.clear()
            return
        if self.size + len(data) > self.max_size:
            self.rejection = R.MESSAGE_TOO_BIG
            self._chunks.clear()
            return
        self.size += len(data)
        self._chunks.append(data)

    def finish(self) -> Reply | None:
        """Call after the LAST chunk: the rejection, if any."""
        if self._pending_cr and self.rejection is None:
            self.rejection = R.BARE_LINE_ENDING
        return self.rejection

    def message(self) -> bytes:
        """The whole message, ending in CRLF (added when the client did not send it)."""
        body = b"".join(self._chunks)
        if body and not body.endswith(b"\r\n"):
            body += b"\r\n"
        return body

    def _check(self, data: bytes) -> None:
        if self.rejection is not None:
            return
        starts_lf = data[:1] == b"\n"
        crlf = data.count(b"\r\n") + (self._pending_cr and starts_lf)
        ends_cr = data.endswith(b"\r")
        bare_cr = data.count(b"\r") + self._pending_cr - ends_cr - crlf
        bare_lf = data.count(b"\n") - crlf
        self._pending_cr = ends_cr
        if bare_cr or bare_lf:
            self.rejection = R.BARE_LINE_ENDING
            return
        if b"\0" in data:
            self.rejection = R.NUL_IN_MESSAGE
            return
        segments = data.split(b"\n")
        lengths = [len(seg) for seg in segments]
        lengths[0] += self._line_length
        # every segment but the last ended with LF: with it, the line is length + 1 octets
        complete = lengths[:-1]
        self._line_length = lengths[-1]
        if (complete and max(complete) + 1 > self.max_line_length) or \
                self._line_length > self.max_line_length - 1:
            self.rejection = R.DATA_LINE_TOO_LONG
