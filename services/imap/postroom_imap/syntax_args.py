"""A cursor over command tokens with RFC 3501 argument forms: astring, number, set, date, flag."""

from __future__ import annotations

import re
from contextvars import ContextVar
from datetime import UTC, date, datetime, timedelta, timezone

from postroom.mutf7 import MailboxNameError, decode_mutf7
from postroom_imap.syntax_lexer import Atom, Str, SyntaxProblem, Token
from postroom_imap.syntax_types import MAX_NUMBER, MAX_NUMBER64, SequenceSet

# true while the reader parses a command of an IMAP4rev2 session (RFC 9051 5.1: mailbox names
# are UTF-8 there, so an ASCII name such as "a&b" or "&AOk-" is what it says)
UTF8_NAMES: ContextVar[bool] = ContextVar("imap_utf8_names", default=False)

_MONTHS = {m: i + 1 for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
_DATE = re.compile(r"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")
_DATE_TIME = re.compile(
    r"^([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$")
_SEQ_NUMBER = re.compile(r"^(?:\*|[1-9]\d{0,9})$")
_FLAG = re.compile(r"^\\?[^\x00-\x20(){%*\"\\\]\x7f]+$")
_ATOM = re.compile(r"^[^\x00-\x20(){%*\"\\\]\x7f]+$")


def parse_sequence_set(text: str) -> SequenceSet:
    """Parse ``1:*,3,5:7`` or ``$``; raises SyntaxProblem."""
    if text == "$":
        return SequenceSet(saved=True)
    if not text or len(text) > 100_000:
        raise SyntaxProblem("invalid sequence set")
    ranges: list[tuple[int | None, int | None]] = []
    for piece in text.split(","):
        ends = piece.split(":")
        if len(ends) > 2 or not all(_SEQ_NUMBER.match(e) for e in ends):
            raise SyntaxProblem("invalid sequence set")
        values = [None if e == "*" else int(e) for e in ends]
        if any(v is not None and v > MAX_NUMBER for v in values):
            raise SyntaxProblem("sequence number out of range")
        ranges.append((values[0], values[-1]))
    return SequenceSet(tuple(ranges))


class Args:
    """Consumes tokens left to right; every method raises SyntaxProblem on a mismatch."""

    def __init__(self, tokens: list[Token], what: str = "command") -> None:
        self.tokens = tokens
        self.pos = 0
        self.what = what

    def more(self) -> bool:
        return self.pos < len(self.tokens)

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.more() else None

    def peek_atom(self) -> str | None:
        """Upper-cased text of the next token if it is an atom."""
        tok = self.peek()
        return tok.text.upper() if isinstance(tok, Atom) else None

    def next(self, expected: str) -> Token:
        if not self.more():
            raise SyntaxProblem(f"missing {expected}")
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def end(self) -> None:
        if self.more():
            raise SyntaxProblem(f"unexpected extra arguments to {self.what}")

    def atom(self, expected: str = "atom") -> str:
        tok = self.next(expected)
        if not isinstance(tok, Atom):
            raise SyntaxProblem(f"expected {expected}")
        return tok.text

    def astring_bytes(self, expected: str = "string") -> bytes:
        tok = self.next(expected)
        if isinstance(tok, Str):
            if tok.spooled is not None:
                raise SyntaxProblem(f"{expected} too long")
            return tok.data
        if isinstance(tok, Atom):
            return tok.text.encode("utf-8")
        raise SyntaxProblem(f"expected {expected}")

    def astring(self, expected: str = "string", charset: str = "utf-8") -> str:
        data = self.astring_bytes(expected)
        try:
            return data.decode(charset)
        except (UnicodeDecodeError, LookupError) as exc:
            raise SyntaxProblem(f"invalid text in {expected}") from exc

    def string(self, expected: str = "string") -> str:
        tok = self.next(expected)
        if not isinstance(tok, Str):
            raise SyntaxProblem(f"expected {expected} as a quoted string or literal")
        if tok.spooled is not None:
            raise SyntaxProblem(f"{expected} too long")
        try:
            return tok.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SyntaxProblem(f"invalid UTF-8 in {expected}") from exc

    def nstring(self, expected: str = "string") -> str | None:
        if self.peek_atom() == "NIL":
            self.pos += 1
            return None
        return self.string(expected)

    def list(self, expected: str = "list") -> list[Token]:
        tok = self.next(expected)
        if not isinstance(tok, list):
            raise SyntaxProblem(f"expected {expected}")
        return tok

    def number(self, expected: str = "number", limit: int = MAX_NUMBER) -> int:
        text = self.atom(expected)
        if not text.isdigit() or not text.isascii() or len(text) > 20 or int(text) > limit:
            raise SyntaxProblem(f"invalid {expected}")
        return int(text)

    def modseq(self, expected: str = "mod-sequence") -> int:
        return self.number(expected, MAX_NUMBER64)

    def sequence_set(self) -> SequenceSet:
        return parse_sequence_set(self.atom("sequence set"))

    def mailbox(self, *, strict: bool = False) -> str:
        """A mailbox name; ``strict`` (a name to create) refuses one not in modified UTF-7."""
        return mailbox_name(self.astring_bytes("mailbox name"), strict=strict)

    def flag(self) -> str:
        text = self.atom("flag")
        if not _FLAG.match(text) or text == "\\":
            raise SyntaxProblem("invalid flag")
        return text

    def flag_list(self) -> tuple[str, ...]:
        items = Args(self.list("flag list"), "flag list")
        flags = []
        while items.more():
            flags.append(items.flag())
        return tuple(flags)

    def date(self) -> date:
        text = self.astring("date")
        match = _DATE.match(text)
        month = _MONTHS.get(match.group(2).lower()) if match else None
        if not match or month is None:
            raise SyntaxProblem("invalid date")
        try:
            return date(int(match.group(3)), month, int(match.group(1)))
        except ValueError as exc:
            raise SyntaxProblem("invalid date") from exc


class InvalidMailboxName(SyntaxProblem):
    """A name to be created that is not valid modified UTF-7: the reply is ``NO [CANNOT]``."""


def mailbox_name(data: bytes, *, strict: bool = False) -> str:
    """A wire mailbox name as Unicode; ``INBOX`` in any case is INBOX (RFC 3501 5.1).

    An ASCII name that is not valid modified UTF-7 (``&'+,-`` is an
    unterminated &-sequence) is a legal astring: it is taken as it is, so
    SELECT of it answers ``NO [NONEXISTENT]`` and a LIST pattern made of it
    matches nothing, instead of ``BAD`` (each BAD spends the session's error
    budget, and enough of them close the connection). ``strict`` (CREATE,
    RENAME's new name) refuses it instead: no name is stored that LIST would
    show in another form.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SyntaxProblem("invalid mailbox name") from exc
    if not text.isascii() or UTF8_NAMES.get():
        name = text  # UTF-8 names from clients that skip modified UTF-7, and IMAP4rev2's
    else:
        try:
            name = decode_mutf7(text)
        except MailboxNameError as exc:
            if strict:
                raise InvalidMailboxName(f"mailbox name is not modified UTF-7: {exc}") from exc
            name = text
    if any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise SyntaxProblem("invalid mailbox name")
    if name.upper() == "INBOX":
        return "INBOX"
    return name


def is_atom(text: str) -> bool:
    """Whether ``text`` may be sent as an IMAP atom."""
    return bool(_ATOM.match(text))


def parse_date_time(text: str) -> datetime:
    """``"17-Jul-1996 02:44:25 -0700"`` (APPEND) as an aware datetime."""
    match = _DATE_TIME.match(text)
    month = _MONTHS.get(match.group(2).lower()) if match else None
    if not match or month is None:
        raise SyntaxProblem("invalid date-time")
    day, _, year, hh, mm, ss, sign, zh, zm = match.groups()
    offset = timedelta(hours=int(zh), minutes=int(zm))
    try:
        tz = timezone(-offset if sign == "-" else offset) if offset else UTC
        return datetime(int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=tz)
    except ValueError as exc:
        raise SyntaxProblem("invalid date-time") from exc
