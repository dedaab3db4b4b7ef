"""Incremental, pure IMAP command reader: bytes in, typed commands and framing events out.

``CommandReader.feed(data)`` frames lines and literals (``{n}``, ``{n+}``,
``~{n}``), enforces limits before buffering, and parses each complete command
into a :class:`Command` with typed arguments (see ``syntax_types``). Hostile
input yields :class:`ParseError` (answer BAD) and the reader resynchronises at
the next line; it never raises.

Literals are judged when announced, before a byte of them is read or a ``+``
is sent (see :class:`Limits`): before login (``authenticated`` false) only
small ones are read and APPEND is refused; after it, each command has a
literal count and a byte budget. A refused literal's data is skipped, never
held. A large APPEND literal is written to a temporary file as it arrives
(:mod:`postroom_imap.spool`) rather than kept in memory. :attr:`CommandReader.held`
tells the server how much one connection holds, so that it can stop reading.

After STARTTLS, AUTHENTICATE and IDLE the reader pauses: unread bytes stay
buffered until the server calls :meth:`CommandReader.resume` (optionally
asking for the next line raw, for SASL responses and ``DONE``) or drops them
with :meth:`CommandReader.discard_pending` (the STARTTLS injection guard).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from postroom_imap.spool import SpooledLiteral
from postroom_imap.syntax_args import UTF8_NAMES, Args, InvalidMailboxName
from postroom_imap.syntax_commands import COMMANDS, UID_COMMANDS
from postroom_imap.syntax_lexer import Atom, Literal, SyntaxProblem, tokenize
from postroom_imap.syntax_search import BadCharset

_LITERAL = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}$")
_TAG = re.compile(rb"^([\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c\x7e]+)(?: |$)")
# ENABLE: an ENABLE IMAP4rev2 changes how the next commands are parsed (``utf8_names``)
_PAUSE_AFTER = frozenset({"STARTTLS", "AUTHENTICATE", "IDLE", "COMPRESS", "ENABLE"})
LITERAL_MINUS_MAX = 4096  # RFC 7888: largest non-synchronizing literal under LITERAL-


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client may make the reader (and its connection) hold or do."""

    max_line: int = 64 * 1024
    max_literal: int = 64 * 1024
    max_append_literal: int = 35 * 1024 * 1024
    max_command: int = 1024 * 1024  # all lines and literals of one non-APPEND command
    max_append_command: int = 100 * 1024 * 1024  # all lines and literals of one APPEND
    max_literals: int = 100  # literals in one command (MULTIAPPEND's messages included)
    # before login: the largest literal (LOGIN's user and password), and all of one command;
    # APPEND is refused outright, so an anonymous peer never gets a "+" for more than this
    max_preauth_literal: int = 4096
    max_preauth_command: int = 64 * 1024
    # an APPEND's literals beyond this many bytes in memory go to a temporary file instead
    spool_threshold: int = 1024 * 1024
    # bytes one connection may hold (unread input, the command being read, commands waiting
    # or running; spooled literals included) before the server stops reading from it
    max_held: int = 16 * 1024 * 1024
    max_preauth_held: int = 256 * 1024
    max_depth: int = 32
    max_args: int = 10_000
    literal_minus: bool = False  # advertise LITERAL- instead of LITERAL+


@dataclass(frozen=True)
class Command:
    """A complete, parsed command; ``args`` is a dataclass from ``syntax_types``.

    ``size`` is the bytes it arrived as (lines and literals, spooled ones too):
    what the connection holds until the command has run.
    """

    tag: str
    name: str
    args: object
    uid: bool = False
    size: int = field(default=0, compare=False)


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
class LiteralRefused:
    """A literal the reader will not read (its data, if sent anyway, is skipped).

    Answer ``tag <status> text``; a BAD counts as a protocol error. ``why``
    names the rule for logs and metrics: ``preauth_append``, ``preauth_size``,
    ``count`` (too many literals in one command), ``spool`` (no room on disk).
    """

    tag: str | None
    text: str
    why: str
    status: str = "BAD"


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


Event = Command | NeedContinuation | LiteralTooBig | LiteralRefused | ParseError | RawLine

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
    segments: list[bytes], literals: list[Literal], limits: Limits | None = None, size: int = 0
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
        return Command(tag, name, args, uid, size)
    except BadCharset as exc:
        return ParseError(tag, str(exc), "BADCHARSET")
    except InvalidMailboxName as exc:
        return ParseError(tag, str(exc), "CANNOT")
    except SyntaxProblem as exc:
        return ParseError(tag, str(exc))
    except RecursionError:
        return ParseError(tag, "command too complex")


class CommandReader:
    """Frames and parses client commands from a byte stream.

    ``authenticated`` is the server's to set once a login succeeds; until
    then literals are held to the pre-login limits. A LOGIN pauses the reader
    (as AUTHENTICATE does) so that commands pipelined behind it are judged by
    its outcome.
    """

    def __init__(self, limits: Limits | None = None, *, authenticated: bool = False) -> None:
        self.limits = limits or Limits()
        self.authenticated = authenticated
        # mailbox names in UTF-8, not modified UTF-7: set by ENABLE IMAP4rev2 (RFC 9051 5.1)
        self.utf8_names = False
        self._buf = bytearray()
        self._state = _LINE
        self._scan = 0  # where to resume looking for LF in the current line
        self._segments: list[bytes] = []
        self._literals: list[Literal] = []
        self._literal = bytearray()
        self._spool: SpooledLiteral | None = None  # the literal being read, if not to memory
        self._literal_size = 0
        self._literal_got = 0
        self._literal_binary = False
        self._skip = 0
        self._tag: str | None = None
        self._name = ""
        self._total = 0  # bytes of the current command, its literals counted when announced
        self._held = 0  # bytes of the current command received so far (spooled ones too)
        self._spooled = 0  # of which in temporary files
        self._count = 0  # literals announced in the current command
        self._paused = False
        self._raw_line = False

    @property
    def paused(self) -> bool:
        """True after STARTTLS/AUTHENTICATE/IDLE (and LOGIN before login) until :meth:`resume`."""
        return self._paused

    @property
    def pending(self) -> int:
        """Bytes received and not yet consumed."""
        return len(self._buf)

    @property
    def held(self) -> int:
        """Bytes held for this connection: unread input and the command being read."""
        return len(self._buf) + self._held

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

    def take_pending(self) -> bytes:
        """Remove and return the buffered, unread bytes (the compressed stream after COMPRESS)."""
        data = bytes(self._buf)
        self.discard_pending()
        return data

    def close(self) -> None:
        """Free what the command being read holds (its temporary files); the connection is gone."""
        self._buf.clear()
        self._reset_command()
        self._state = _LINE

    # -- internals --

    def _reset_command(self, keep_literals: bool = False) -> None:
        """Forget the current command; close its spooled literals unless a Command owns them."""
        if not keep_literals:
            for data, _ in self._literals:
                if isinstance(data, SpooledLiteral):
                    data.close()
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self._literal = bytearray()
        self._segments = []
        self._literals = []
        self._tag = None
        self._name = ""
        self._total = 0
        self._held = 0
        self._spooled = 0
        self._count = 0

    def _run(self) -> list[Event]:
        events: list[Event] = []
        while not self._paused and self._buf:
            if self._state == _LITERAL_STATE:
                if not self._take_literal(events):
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
        self._held += len(line) + 2
        match = _LITERAL.search(line)
        if match is None:
            self._segments.append(line)
            self._finish(events)
            return
        size = int(match.group(2))
        sync = not match.group(3)
        self._count += 1
        refusal = self._refusal(size, sync)
        if refusal is not None:
            events.append(refusal)
            self._reset_command()
            if not sync:
                self._skip = size
                self._state = _SKIP_LITERAL
            return
        self._segments.append(line[: match.start()])
        self._total += size
        self._literal_size = size
        self._literal_got = 0
        self._literal_binary = bool(match.group(1))
        in_memory = self._held - self._spooled
        if self._name == "APPEND" and in_memory + size > self.limits.spool_threshold:
            try:
                self._spool = SpooledLiteral(size)
            except OSError:
                events.append(_no_room(self._tag))
                self._reset_command()
                if not sync:
                    self._skip = size
                    self._state = _SKIP_LITERAL
                return
        self._state = _LITERAL_STATE
        if sync:
            events.append(NeedContinuation(self._tag or "", size))

    def _refusal(self, size: int, sync: bool) -> Event | None:
        """Why a literal just announced must not be read, if it must not."""
        limits = self.limits
        append = self._name == "APPEND"
        if not self.authenticated:
            if append:
                return LiteralRefused(self._tag, "APPEND not allowed now", "preauth_append")
            if size > limits.max_preauth_literal or self._total + size > limits.max_preauth_command:
                return LiteralRefused(self._tag, "[TOOBIG] literal too large before login",
                                      "preauth_size")
        if self._count > limits.max_literals:
            return LiteralRefused(self._tag, "too many literals in one command", "count")
        if append:
            too_big = (size > limits.max_append_literal
                       or self._total + size > limits.max_append_command)
        else:
            too_big = size > limits.max_literal or self._total + size > limits.max_command
        if not sync and limits.literal_minus and size > LITERAL_MINUS_MAX:
            too_big = True
        if too_big:
            return LiteralTooBig(self._tag, size, synchronizing=sync)
        if self._tag is None:
            # Untagged garbage announcing a literal: refuse it rather than read it.
            return ParseError(None, "missing tag")
        return None

    def _take_literal(self, events: list[Event]) -> bool:
        take = min(self._literal_size - self._literal_got, len(self._buf))
        if self._spool is not None:
            try:
                with memoryview(self._buf) as view, view[:take] as chunk:
                    self._spool.write(chunk)
            except OSError:
                events.append(_no_room(self._tag))
                self._skip = self._literal_size - self._literal_got
                self._reset_command()
                self._state = _SKIP_LITERAL
                return True
            self._spooled += take
        else:
            self._literal += self._buf[:take]
        del self._buf[:take]
        self._literal_got += take
        self._held += take
        if self._literal_got < self._literal_size:
            return False
        if self._spool is not None:
            self._literals.append((self._spool, self._literal_binary))
            self._spool = None
        else:
            self._literals.append((bytes(self._literal), self._literal_binary))
            self._literal = bytearray()
        self._state = _LINE
        self._scan = 0
        return True

    def _finish(self, events: list[Event]) -> None:
        utf8 = UTF8_NAMES.set(self.utf8_names)
        try:
            result = parse_command(self._segments, self._literals, self.limits, self._held)
        finally:
            UTF8_NAMES.reset(utf8)
        # a parsed command owns its spooled literals (APPEND closes them once it has run)
        self._reset_command(keep_literals=isinstance(result, Command))
        events.append(result)
        if isinstance(result, Command) and not result.uid and (
                result.name in _PAUSE_AFTER or (result.name == "LOGIN" and not self.authenticated)):
            self._paused = True


def _no_room(tag: str | None) -> LiteralRefused:
    """The temporary file for an APPEND literal could not be made or written (disk full)."""
    return LiteralRefused(tag, "[UNAVAILABLE] no room to receive the message now", "spool", "NO")
