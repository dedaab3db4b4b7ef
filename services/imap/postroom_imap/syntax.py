"""Incremental, pure IMAP command reader: bytes in, typed commands and framing events out.

``CommandReader.feed(data)`` frames lines and literals (``{n}``, ``{n+}``,
``~{n}``), enforces limits before buffering, and parses each complete command
into a :class:`Command` with typed arguments (see ``syntax_types``). Hostile
input yields :class:`ParseError` (answer BAD) and the reader resynchronises at
the next line; it never raises.

After STARTTLS, AUTHENTICATE and IDLE the reader pauses: unread bytes stay
buffered until the server calls :meth:`CommandReader.resume` (optionally
asking for the next line raw, for SASL responses and ``DONE``) or drops them
with :meth:`CommandReader.discard_pending` (the STARTTLS injection guard).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from postroom_imap.syntax_args import Args
from postroom_imap.syntax_commands import COMMANDS, UID_COMMANDS
from postroom_imap.syntax_lexer import Atom, SyntaxProblem, tokenize
from postroom_imap.syntax_search import BadCharset

_LITERAL = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}$")
_TAG = re.compile(rb"^([\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c\x7e]+)(?: |$)")
_PAUSE_AFTER = frozenset({"STARTTLS", "AUTHENTICATE", "IDLE", "COMPRESS"})
LITERAL_MINUS_MAX = 4096  # RFC 7888: largest non-synchronizing literal under LITERAL-


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client may make the reader hold or do."""

    max_line: int = 64 * 1024
    max_literal: int = 64 * 1024
    max_append_literal: int = 35 * 1024 * 1024
    max_command: int = 1024 * 1024  # all lines and literals of one non-APPEND command
    max_depth: int = 32
    max_args: int = 10_000
    literal_minus: bool = False  # advertise LITERAL- instead of LITERAL+


@dataclass(frozen=True)
class Command:
    """A complete, parsed command; ``args`` is a dataclass from ``syntax_types``."""

    tag: str
    name: str
    args: object
    uid: bool = False


@dataclass(frozen=True)
class NeedContinuation:
    """A synchronizing literal was announced: send ``+ ...`` to let the client go on."""

    tag: str
    size: int


@dataclass(frozen=True)
class LiteralTooBig:
    """A literal over the limit: answer ``tag NO [TOOBIG]`` (BAD for non-synchronizing)."""

    tag: str | None
    size: int
    synchronizing: bool


@dataclass(frozen=True)
class ParseError:
    """Answer ``tag BAD text`` (``* BAD`` when tag is None); ``code`` like BADCHARSET means NO."""

    tag: str | None
    text: str
    code: str | None = None


@dataclass(frozen=True)
class RawLine:
    """A line requested with ``resume(raw_line=True)``: a SASL response or IDLE's DONE."""

    data: bytes


Event = Command | NeedContinuation | LiteralTooBig | ParseError | RawLine

# reader states
_LINE, _LITERAL_STATE, _SKIP_LINE, _SKIP_LITERAL = range(4)


def _head(line: bytes) -> tuple[str | None, str, str]:
    """Tag, command name and UID sub-command of a command's first line ("" when absent)."""
    match = _TAG.match(line)
    if not match:
        return None, "", ""
    words = line[match.end() :].split(b" ", 2)
    name = words[0].upper().decode("ascii", "replace") if words else ""
    sub = words[1].upper().decode("ascii", "replace") if name == "UID" and len(words) > 1 else ""
    return match.group(1).decode("ascii"), name, sub


def parse_command(
    segments: list[bytes], literals: list[tuple[bytes, bool]], limits: Limits | None = None
) -> Command | ParseError:
    """Parse one framed command (text segments around its literals); never raises."""
    limits = limits or Limits()
    tag, _, _ = _head(segments[0])
    try:
        tokens = tokenize(segments, literals, limits.max_depth, limits.max_args)
        if tag is None or len(tokens) < 2 or not isinstance(tokens[0], Atom):
            raise SyntaxProblem("missing tag or command")
        name_tok = tokens[1]
        if not isinstance(name_tok, Atom):
            raise SyntaxProblem("missing command name")
        name = name_tok.text.upper()
        uid = name == "UID"
        rest = 2
        table = COMMANDS
        if uid:
            if len(tokens) < 3 or not isinstance(tokens[2], Atom):
                raise SyntaxProblem("missing UID command")
            name = tokens[2].text.upper()
            rest = 3
            table = UID_COMMANDS
        grammar = table.get(name)
        if grammar is None:
            raise SyntaxProblem("unknown command")
        args = grammar(Args(tokens[rest:], name))
        return Command(tag, name, args, uid)
    except BadCharset as exc:
        return ParseError(tag, str(exc), "BADCHARSET")
    except SyntaxProblem as exc:
        return ParseError(tag, str(exc))
    except RecursionError:
        return ParseError(tag, "command too complex")


class CommandReader:
    """Frames and parses client commands from a byte stream."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._buf = bytearray()
        self._state = _LINE
        self._scan = 0  # where to resume looking for LF in the current line
        self._segments: list[bytes] = []
        self._literals: list[tuple[bytes, bool]] = []
        self._literal = bytearray()
        self._literal_size = 0
        self._literal_binary = False
        self._skip = 0
        self._tag: str | None = None
        self._name = ""
        self._total = 0
        self._paused = False
        self._raw_line = False

    @property
    def paused(self) -> bool:
        """True after STARTTLS/AUTHENTICATE/IDLE until :meth:`resume`."""
        return self._paused

    @property
    def pending(self) -> int:
        """Bytes received and not yet consumed."""
        return len(self._buf)

    @property
    def in_command(self) -> bool:
        """Whether a command has started but is not complete (e.g. waiting for a literal)."""
        return bool(self._segments) or self._state in (_LITERAL_STATE, _SKIP_LITERAL)

    def feed(self, data: bytes) -> list[Event]:
        """Take more bytes; return the events they complete."""
        self._buf += data
        return self._run()

    def resume(self, raw_line: bool = False) -> list[Event]:
        """Continue after a pause; with ``raw_line`` the next line comes back as RawLine."""
        self._paused = False
        self._raw_line = raw_line
        return self._run()

    def discard_pending(self) -> int:
        """Drop buffered, unread bytes (plaintext pipelined after STARTTLS); returns how many."""
        dropped = len(self._buf)
        self._buf.clear()
        self._scan = 0
        return dropped

    # -- internals --

    def _reset_command(self) -> None:
        self._segments = []
        self._literals = []
        self._tag = None
        self._name = ""
        self._total = 0

    def _run(self) -> list[Event]:
        events: list[Event] = []
        while not self._paused and self._buf:
            if self._state == _LITERAL_STATE:
                if not self._take_literal():
                    break
            elif self._state == _SKIP_LITERAL:
                take = min(self._skip, len(self._buf))
                del self._buf[:take]
                self._skip -= take
                if self._skip:
                    break
                self._state = _SKIP_LINE
            else:
                line = self._next_line(events)
                if line is None:
                    break
                if self._state == _SKIP_LINE:
                    self._skip_line(line)
                else:
                    self._line(line, events)
        return events

    def _next_line(self, events: list[Event]) -> bytes | None:
        nl = self._buf.find(b"\n", self._scan)
        if nl < 0:
            self._scan = len(self._buf)
            if len(self._buf) > self.limits.max_line:
                # Keep memory bounded: drop the partial line and skip to its end.
                self._overlong(events, bytes(self._buf[:200]))
                self._buf.clear()
                self._scan = 0
            return None
        line = bytes(self._buf[:nl])
        del self._buf[: nl + 1]
        self._scan = 0
        if len(line) > self.limits.max_line:
            self._overlong(events, line[:200])
        return line[:-1] if line.endswith(b"\r") else line

    def _overlong(self, events: list[Event], head: bytes) -> None:
        """Report a too-long line once; the rest of its command is skipped."""
        if self._state != _SKIP_LINE:
            tag = self._tag if self._segments else _head(head)[0]
            events.append(ParseError(tag, "line too long"))
            self._reset_command()
            self._state = _SKIP_LINE

    def _skip_line(self, line: bytes) -> None:
        """Discard the rest of a rejected command, including its non-synchronizing literals."""
        match = _LITERAL.search(line)
        if match and match.group(3):
            self._skip = int(match.group(2))
            self._state = _SKIP_LITERAL
        else:
            self._state = _LINE

    def _line(self, line: bytes, events: list[Event]) -> None:
        if self._raw_line and not self._segments:
            self._raw_line = False
            self._paused = True
            events.append(RawLine(line))
            return
        if not self._segments:
            if not line.strip():
                return  # tolerate blank lines between commands
            self._tag, self._name, sub = _head(line)
            if self._name == "UID":
                self._name = "UID " + sub
        self._total += len(line) + 2
        match = _LITERAL.search(line)
        if match is None:
            self._segments.append(line)
            self._finish(events)
            return
        size = int(match.group(2))
        sync = not match.group(3)
        binary = bool(match.group(1))
        append = self._name == "APPEND"
        limit = self.limits.max_append_literal if append else self.limits.max_literal
        too_big = size > limit
        if not too_big and self._name != "APPEND":
            too_big = self._total + size > self.limits.max_command
        if not sync and self.limits.literal_minus and size > LITERAL_MINUS_MAX:
            too_big = True
        if too_big:
            events.append(LiteralTooBig(self._tag, size, synchronizing=sync))
            self._reset_command()
            if not sync:
                self._skip = size
                self._state = _SKIP_LITERAL
            return
        if self._tag is None:
            # Untagged garbage announcing a literal: refuse it rather than read it.
            events.append(ParseError(None, "missing tag"))
            self._reset_command()
            if not sync:
                self._skip = size
                self._state = _SKIP_LITERAL
            return
        self._segments.append(line[: match.start()])
        self._total += size
        self._literal = bytearray()
        self._literal_size = size
        self._literal_binary = binary
        self._state = _LITERAL_STATE
        if sync:
            events.append(NeedContinuation(self._tag, size))

    def _take_literal(self) -> bool:
        need = self._literal_size - len(self._literal)
        chunk = self._buf[:need]
        self._literal += chunk
        del self._buf[: len(chunk)]
        if len(self._literal) < self._literal_size:
            return False
        self._literals.append((bytes(self._literal), self._literal_binary))
        self._literal = bytearray()
        self._state = _LINE
        self._scan = 0
        return True

    def _finish(self, events: list[Event]) -> None:
        result = parse_command(self._segments, self._literals, self.limits)
        self._reset_command()
        events.append(result)
        if isinstance(result, Command) and result.name in _PAUSE_AFTER and not result.uid:
            self._paused = True
