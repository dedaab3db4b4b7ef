"""Wildcard patterns matched in linear time: IMAP LIST's ``*``/``%`` and Sieve's ``*``/``?``.

Patterns come from the network (a LIST command) or are matched against text
that does (a rule's ``:matches`` against a sender's header), so they are never
turned into regular expressions: a backtracking engine takes exponential time
on ``**...*x`` and polynomial time of the pattern's degree on ``*a*b*c``.

A pattern is compiled once into tokens (literal characters and wildcards),
with runs of star-like wildcards collapsed (``**`` and ``*%`` are ``*``, ``%%``
is ``%``), and matched by simulating its NFA: the set of pattern positions
still alive is the bits of one integer, and each character of the text costs a
few integer operations on ``len(pattern) + 1`` bits. So a match costs
O(len(text) * len(pattern) / 64) word operations whatever the pattern, and
nothing backtracks. Two shortcuts keep the common cases at C speed: a pattern
whose only wildcard is ``*`` is matched segment by segment with ``str.find``
(leftmost placement of each segment is always right for ``*``), and when the
only live positions are a wildcard and the literal after it, the scan jumps to
that literal's next occurrence.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Wild(enum.Enum):
    """The wildcards: ``*`` (any run), ``%`` (any run without the delimiter), ``?`` (one)."""

    ANY = "*"
    ANY_BUT = "%"
    ONE = "?"


Token = str | Wild  # a str token is one literal character


class PatternTooComplex(ValueError):
    """A pattern beyond the caller's bounds (length or wildcard count); the message says which."""


def collapse(tokens: Iterable[Token]) -> list[Token]:
    """Runs of ``*``/``%`` as one wildcard: ``*`` when the run holds a ``*``, else ``%``.

    ``?`` is not part of a run: it consumes exactly one character.
    """
    out: list[Token] = []
    for token in tokens:
        if token in (Wild.ANY, Wild.ANY_BUT) and out and out[-1] in (Wild.ANY, Wild.ANY_BUT):
            if token is Wild.ANY:
                out[-1] = Wild.ANY
            continue
        out.append(token)
    return out


class Glob:
    """A compiled wildcard pattern; :meth:`match` tells whether it matches a whole text."""

    __slots__ = (
        "_accept",
        "_delimiter",
        "_hops",
        "_moves",
        "_other",
        "_segments",
        "_start",
        "_wild",
        "tokens",
        "wildcards",
    )

    def __init__(self, tokens: Iterable[Token], delimiter: str | None = None) -> None:
        self.tokens: tuple[Token, ...] = tuple(collapse(tokens))
        self.wildcards = sum(1 for t in self.tokens if isinstance(t, Wild))
        self._delimiter = delimiter
        literals: dict[str, int] = {}
        one = any_ = any_but = 0
        for i, token in enumerate(self.tokens):
            bit = 1 << i
            if token is Wild.ANY:
                any_ |= bit
            elif token is Wild.ANY_BUT:
                any_but |= bit
            elif token is Wild.ONE:
                one |= bit
            else:
                literals[token] = literals.get(token, 0) | bit
        if delimiter is None:
            any_, any_but = any_ | any_but, 0  # no delimiter: % is *
        # per character: (positions it advances past, positions that stay alive on it)
        self._other = (one, any_ | any_but)
        self._moves = {char: (mask | one, any_ | any_but) for char, mask in literals.items()}
        if delimiter is not None:
            self._moves[delimiter] = (literals.get(delimiter, 0) | one, any_)
        self._wild = any_ | any_but
        self._accept = 1 << len(self.tokens)
        self._start = self._start_state()
        # "only *" patterns: the literal segments between the stars
        self._segments: tuple[str, ...] | None = None
        if not one and not any_but:
            parts = [""]
            for token in self.tokens:
                if isinstance(token, Wild):
                    parts.append("")
                else:
                    parts[-1] += token
            self._segments = tuple(parts)
        # resting states: a wildcard at i with only the token after it alive, mapped to
        # (the literal it waits for, or None at the end; whether the delimiter ends the wait)
        self._hops: dict[int, tuple[str | None, bool]] = {}
        for i, token in enumerate(self.tokens):
            if token not in (Wild.ANY, Wild.ANY_BUT):
                continue
            stops = bool(any_but >> i & 1)
            after = self.tokens[i + 1] if i + 1 < len(self.tokens) else None
            if after is None:
                self._hops[(1 << i) | self._accept] = (None, stops)
            elif isinstance(after, str):
                self._hops[(1 << i) | (1 << (i + 1))] = (after, stops)

    def _start_state(self) -> int:
        # a wildcard may match nothing; collapsed runs never put two in a row, so one step
        return 1 | ((1 & self._wild) << 1)

    def __repr__(self) -> str:
        text = "".join(t.value if isinstance(t, Wild) else t for t in self.tokens)
        return f"Glob({text!r})"

    def match(self, text: str) -> bool:
        """Whether the pattern matches all of ``text``."""
        if self._segments is not None:
            return self._match_segments(text)
        return self._simulate(text)[0]

    def _match_segments(self, text: str) -> bool:
        segments = self._segments
        assert segments is not None
        if len(segments) == 1:
            return text == segments[0]
        head, tail = segments[0], segments[-1]
        if (len(text) < len(head) + len(tail) or not text.startswith(head)
                or not text.endswith(tail)):
            return False
        pos, end = len(head), len(text) - len(tail)
        for segment in segments[1:-1]:
            found = text.find(segment, pos, end)
            if found < 0:
                return False
            pos = found + len(segment)
        return True

    def _simulate(self, text: str) -> tuple[bool, int]:
        """(matched, characters stepped one at a time): the NFA over ``text``."""
        moves, other, wild, hops = self._moves, self._other, self._wild, self._hops
        delimiter = self._delimiter
        state, pos, end, skipped = self._start, 0, len(text), 0
        while pos < end:
            if state in hops:
                wanted, stops = hops[state]
                if wanted is None:  # a trailing wildcard: the rest matches unless it stops
                    if not stops:
                        return True, pos - skipped
                    assert delimiter is not None
                    return text.find(delimiter, pos) < 0, pos - skipped
                found = text.find(wanted, pos)
                if found < 0:
                    return False, pos - skipped  # it waits for ever (or dies at a delimiter)
                if stops:
                    assert delimiter is not None
                    cut = text.find(delimiter, pos, found)
                    if cut >= 0:
                        found = cut
                skipped += found - pos
                pos = found
            advance, stay = moves.get(text[pos], other)
            state = ((state & advance) << 1) | (state & stay)
            state |= (state & wild) << 1
            pos += 1
            if not state:
                return False, pos - skipped
        return bool(state & self._accept), pos - skipped


def _bounded(glob: Glob, length: int, max_length: int | None,
             max_wildcards: int | None) -> Glob:
    if max_length is not None and length > max_length:
        raise PatternTooComplex(f"pattern longer than {max_length} characters")
    if max_wildcards is not None and glob.wildcards > max_wildcards:
        raise PatternTooComplex(f"pattern has more than {max_wildcards} wildcards")
    return glob


def list_pattern(pattern: str, delimiter: str, *, max_length: int | None = None,
                 max_wildcards: int | None = None) -> Glob:
    """An IMAP LIST pattern (RFC 3501 6.3.8): ``*`` any run, ``%`` any run without ``delimiter``.

    ``max_wildcards`` counts after collapsing runs; beyond either bound, PatternTooComplex.
    """
    if max_length is not None and len(pattern) > max_length:  # before any work on it
        raise PatternTooComplex(f"pattern longer than {max_length} characters")
    tokens = [Wild.ANY if c == "*" else Wild.ANY_BUT if c == "%" else c for c in pattern]
    return _bounded(Glob(tokens, delimiter), len(pattern), max_length, max_wildcards)


def sieve_pattern(pattern: str, *, max_length: int | None = None,
                  max_wildcards: int | None = None) -> Glob:
    """A Sieve ``:matches`` key (RFC 5228 2.7.1): ``*``, ``?``, and ``\\`` escaping the next.

    A trailing lone backslash escapes nothing and is dropped. Case folding is
    the comparator's business: fold the pattern and the text alike first.
    """
    if max_length is not None and len(pattern) > max_length:
        raise PatternTooComplex(f"pattern longer than {max_length} characters")
    tokens: list[Token] = []
    escaped = False
    for char in pattern:
        if escaped:
            tokens.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "*":
            tokens.append(Wild.ANY)
        elif char == "?":
            tokens.append(Wild.ONE)
        else:
            tokens.append(char)
    return _bounded(Glob(tokens), len(pattern), max_length, max_wildcards)
