"""Tokens of one complete IMAP command: atoms, strings (quoted or literal) and nested lists."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from postroom_imap.spool import SpooledLiteral

# Atoms that carry a bracketed section with spaces inside: BODY[HEADER.FIELDS (A B)].
_SECTION_ATOMS = (b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE")
_ATOM_END = frozenset(b' ()"\t')


class SyntaxProblem(Exception):
    """The command is not valid IMAP syntax; the text is safe to send after BAD."""


@dataclass(frozen=True, slots=True)
class Atom:
    """An atom, flag, sequence set or other bare word (ASCII, or UTF-8 when the client sent it)."""

    text: str


@dataclass(frozen=True, slots=True)
class Str:
    """A quoted string or literal (``binary`` for literal8).

    A large APPEND literal arrives ``spooled`` to a temporary file, with empty
    ``data``; only APPEND's message argument accepts one (``Args`` refuses it
    anywhere else).
    """

    data: bytes
    literal: bool = False
    binary: bool = False
    spooled: SpooledLiteral | None = None


Token = Atom | Str | list


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SyntaxProblem("invalid UTF-8 in atom") from exc


Literal = tuple[bytes | SpooledLiteral, bool]  # a literal's data and whether it is literal8


def tokenize(
    segments: list[bytes], literals: list[Literal], max_depth: int, max_tokens: int
) -> list[Token]:
    """Tokens of a command given as text segments with a literal after each but the last."""
    if len(segments) != len(literals) + 1:
        raise SyntaxProblem("internal framing mismatch")
    root: list[Token] = []
    stack: list[list[Token]] = [root]
    count = 0

    def add(token: Token) -> None:
        nonlocal count
        count += 1
        if count > max_tokens:
            raise SyntaxProblem("too many arguments")
        stack[-1].append(token)

    for index, seg in enumerate(segments):
        pos = 0
        n = len(seg)
        while pos < n:
            ch = seg[pos]
            if ch in (0x20, 0x09):
                pos += 1
            elif ch == 0x28:  # (
                if len(stack) > max_depth:
                    raise SyntaxProblem("lists nested too deeply")
                new: list[Token] = []
                add(new)
                stack.append(new)
                pos += 1
            elif ch == 0x29:  # )
                if len(stack) == 1:
                    raise SyntaxProblem("unbalanced parenthesis")
                stack.pop()
                pos += 1
            elif ch == 0x22:  # "
                pos = _quoted(seg, pos + 1, add)
            elif ch == 0x7B or (ch == 0x7E and seg[pos + 1 : pos + 2] == b"{"):
                raise SyntaxProblem("literal not at end of line")
            else:
                pos = _atom(seg, pos, add)
        if index < len(literals):
            data, binary = literals[index]
            if isinstance(data, SpooledLiteral):
                add(Str(b"", literal=True, binary=binary, spooled=data))
            else:
                add(Str(data, literal=True, binary=binary))
    if len(stack) != 1:
        raise SyntaxProblem("unbalanced parenthesis")
    return root


def _quoted(seg: bytes, pos: int, add: Callable[[Token], None]) -> int:
    out = bytearray()
    n = len(seg)
    while pos < n:
        ch = seg[pos]
        if ch == 0x5C:  # backslash
            if pos + 1 >= n or seg[pos + 1] not in (0x5C, 0x22):
                raise SyntaxProblem("bad escape in quoted string")
            out.append(seg[pos + 1])
            pos += 2
        elif ch == 0x22:
            add(Str(bytes(out)))
            return pos + 1
        elif ch in (0x00, 0x0D, 0x0A):
            raise SyntaxProblem("control character in quoted string")
        else:
            out.append(ch)
            pos += 1
    raise SyntaxProblem("unterminated quoted string")


def _atom(seg: bytes, pos: int, add: Callable[[Token], None]) -> int:
    start = pos
    n = len(seg)
    while pos < n:
        ch = seg[pos]
        if ch in _ATOM_END:
            break
        if ch < 0x20 or ch == 0x7F:
            raise SyntaxProblem("control character in atom")
        if ch == 0x5B and seg[start:pos].upper() in _SECTION_ATOMS:  # [
            pos = _section_end(seg, pos + 1)
            continue
        if ch == 0x7B:
            raise SyntaxProblem("literal not at end of line")
        pos += 1
    add(Atom(_text(seg[start:pos])))
    return pos


def _section_end(seg: bytes, pos: int) -> int:
    """Index after the ``]`` closing a section, skipping quoted field names."""
    n = len(seg)
    quoted = False
    while pos < n:
        ch = seg[pos]
        if quoted:
            if ch == 0x5C:
                pos += 1
            elif ch == 0x22:
                quoted = False
        elif ch == 0x22:
            quoted = True
        elif ch == 0x5D:
            return pos + 1
        pos += 1
    raise SyntaxProblem("unterminated section")
