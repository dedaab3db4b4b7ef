"""ManageSieve framing (RFC 5804 section 4): commands of atoms, quoted strings, literals.

Pure and bounded: :class:`Framer` takes the bytes a peer sends and yields one
:class:`Command` (or :class:`FrameError`) at a time, never holding more than
one command: a line without its end is at most ``max_line`` octets, a quoted
string at most :data:`MAX_QUOTED` (RFC 5804: 1024 octets), a literal at most
``max_literal`` (a bigger one is read and thrown away, then refused as
``(QUOTA/MAXSIZE)``), and the literals of one command together at most
``max_held``. Both ``{n+}`` (non-synchronising) and ``{n}`` literals are
read straight on: no continuation is sent (RFC 5804 4: the server never waits
for a client's permission). No regex runs over client input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CRLF = b"\r\n"
# RFC 5804 section 4: a quoted string is at most 1024 octets
MAX_QUOTED = 1024
# the text of one command outside its literals (names, quoted strings, numbers)
MAX_LINE = 8 * 1024
# a number is at most 4294967295 (RFC 5804 4)
MAX_NUMBER = 4294967295

Arg = bytes | int


@dataclass(frozen=True)
class Command:
    """One command: its name (upper-cased; empty when the line starts with a string, as a
    SASL response does) and its arguments (bytes for strings, int for numbers)."""

    name: str
    args: tuple[Arg, ...] = ()
    # octets of literals the command held
    size: int = 0

    def strings(self, low: int, high: int | None = None) -> list[bytes] | None:
        """The arguments when they are ``low``..``high`` strings, else None."""
        high = low if high is None else high
        if not low <= len(self.args) <= high or not all(isinstance(a, bytes) for a in self.args):
            return None
        return [a for a in self.args if isinstance(a, bytes)]


@dataclass(frozen=True)
class FrameError:
    """A command that could not be read; ``quota`` when a literal was over the limit."""

    message: str
    quota: bool = False


class _Syntax(ValueError):
    pass


def quote(text: str) -> bytes:
    """A string as the server sends it: quoted when short and plain, else a literal."""
    data = text.encode("utf-8")
    if len(data) <= MAX_QUOTED and not any(c in data for c in b"\r\n\0"):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def _tokens(segment: bytes, out: list[Arg], first: bool) -> tuple[str | None, int | None, bool]:
    """Read the tokens of ``segment`` (text without CRLF) into ``out``.

    Returns (command name if ``first`` and the segment starts with an atom,
    the literal's length if the segment ends with ``{n}``/``{n+}``, whether any
    token was read). _Syntax on anything else.
    """
    i, n = 0, len(segment)
    name: str | None = None
    seen = False
    while i < n:
        c = segment[i]
        if c == 0x20:
            i += 1
            continue
        if c == 0x22:  # quoted string
            j, buf = i + 1, bytearray()
            while True:
                if j >= n:
                    raise _Syntax("unterminated quoted string")
                d = segment[j]
                if d == 0x5C:  # backslash: only \\ and \" (RFC 5804 4)
                    if j + 1 >= n or segment[j + 1] not in (0x5C, 0x22):
                        raise _Syntax("bad escape in quoted string")
                    buf.append(segment[j + 1])
                    j += 2
                elif d == 0x22:
                    break
                elif d in (0x00, 0x0D, 0x0A):
                    raise _Syntax("control character in quoted string")
                else:
                    buf.append(d)
                    j += 1
                if len(buf) > MAX_QUOTED:
                    raise _Syntax("quoted string too long")
            out.append(bytes(buf))
            i = j + 1
        elif c == 0x7B:  # {n} or {n+}: must end the segment
            close = segment.find(b"}", i)
            if close != n - 1:
                raise _Syntax("a literal must end the line")
            inner = segment[i + 1:close]
            if inner.endswith(b"+"):
                inner = inner[:-1]
            if not inner or len(inner) > 10 or not inner.isdigit():
                raise _Syntax("bad literal length")
            size = int(inner)
            if size > MAX_NUMBER:
                raise _Syntax("bad literal length")
            return name, size, True
        elif 0x30 <= c <= 0x39:
            j = i
            while j < n and 0x30 <= segment[j] <= 0x39:
                j += 1
            if j - i > 10 or (j < n and segment[j] != 0x20):
                raise _Syntax("bad number")
            value = int(segment[i:j])
            if value > MAX_NUMBER:
                raise _Syntax("number too large")
            out.append(value)
            i = j
        elif first and not seen and (0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A):
            j = i
            while j < n and (0x41 <= segment[j] <= 0x5A or 0x61 <= segment[j] <= 0x7A):
                j += 1
            if j - i > 32 or (j < n and segment[j] != 0x20):
                raise _Syntax("bad command name")
            name = segment[i:j].decode("ascii").upper()
            i = j
        else:
            raise _Syntax("unexpected character")
        seen = True
    return name, None, seen


@dataclass
class Framer:
    """Turns the peer's bytes into commands, one at a time (see the module docstring)."""

    max_literal: int
    max_held: int
    max_line: int = MAX_LINE
    buffer: bytearray = field(default_factory=bytearray)
    _name: str | None = None
    _args: list[Arg] = field(default_factory=list)
    _started: bool = False
    _held: int = 0
    _literal_left: int = 0
    _literal: bytearray | None = None
    _error: FrameError | None = None  # the command is being skipped; this is its answer
    _skip_line: bool = False  # drop up to the next LF, then answer _error

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def discard(self) -> None:
        """Forget everything buffered and any command in progress (STARTTLS)."""
        self.buffer.clear()
        self._reset()

    @property
    def pending(self) -> int:
        """Octets buffered and held for the command in progress."""
        return len(self.buffer) + self._held

    def _reset(self) -> None:
        self._name, self._args, self._started, self._held = None, [], False, 0
        self._literal_left, self._literal, self._error, self._skip_line = 0, None, None, False

    def _fail(self, error: FrameError) -> None:
        """Skip the rest of this command (to its final CRLF), then answer ``error``."""
        self._args, self._held, self._literal = [], 0, None
        if self._error is None:
            self._error = error
        self._skip_line = True

    def next(self) -> Command | FrameError | None:
        """The next complete command (or error), or None when more bytes are needed."""
        while True:
            if self._literal_left:
                take = min(self._literal_left, len(self.buffer))
                if not take:
                    return None
                if self._literal is not None:
                    self._literal += self.buffer[:take]
                del self.buffer[:take]
                self._literal_left -= take
                if self._literal_left:
                    return None
                if self._literal is not None:
                    self._args.append(bytes(self._literal))
                    self._literal = None
                continue
            end = self.buffer.find(b"\n", 0, self.max_line + 2)
            if end < 0:
                if len(self.buffer) <= self.max_line + 1:
                    return None
                # a line too long: drop it up to its LF (or all of it, and go on dropping)
                self._fail(FrameError("line too long"))
                end = self.buffer.find(b"\n")
                if end < 0:
                    del self.buffer[:]
                    return None
                del self.buffer[:end + 1]
                error = self._error or FrameError("line too long")
                self._reset()
                return error
            segment = bytes(self.buffer[:end])
            del self.buffer[:end + 1]
            if segment.endswith(b"\r"):
                segment = segment[:-1]
            if self._skip_line:
                # skipping an over-long literal's command: a literal may still follow
                size = _trailing_literal(segment)
                if size is not None:
                    self._literal_left = size
                    continue
                error = self._error or FrameError("syntax error")
                self._reset()
                return error
            if len(segment) > self.max_line:
                self._fail(FrameError("line too long"))
                continue
            try:
                name, size, seen = _tokens(segment, self._args, not self._started)
            except _Syntax as exc:
                self._fail(FrameError(str(exc)))
                size = _trailing_literal(segment)
                if size is not None:
                    self._literal_left = size
                    continue
                error = self._error or FrameError("syntax error")
                self._reset()
                return error
            if name is not None:
                self._name = name
            self._started = self._started or seen
            if size is not None:
                self._literal_left = size
                if size > self.max_literal or self._held + size > self.max_held:
                    self._fail(FrameError(f"a string is at most {self.max_literal} octets",
                                          quota=True))
                    self._literal_left = size
                else:
                    self._held += size
                    self._literal = bytearray()
                continue
            if not self._started:
                self._reset()
                continue  # an empty line: ignored
            command = Command(self._name or "", tuple(self._args), self._held)
            self._reset()
            return command


def _trailing_literal(segment: bytes) -> int | None:
    """The length of a ``{n}``/``{n+}`` that ends ``segment`` (a skipped command's), or None."""
    if not segment.endswith(b"}"):
        return None
    start = segment.rfind(b"{", max(0, len(segment) - 14))
    if start < 0:
        return None
    inner = segment[start + 1:-1]
    if inner.endswith(b"+"):
        inner = inner[:-1]
    if not inner or len(inner) > 10 or not inner.isdigit():
        return None
    size = int(inner)
    return size if size <= MAX_NUMBER else None
