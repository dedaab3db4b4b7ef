"""Sieve comparisons: comparators (RFC 4790), match types (RFC 5228 2.7, RFC 5231), captures.

``:matches`` never becomes a regular expression: whether a key matches is
:mod:`postroom.glob`'s linear-time NFA, and the match variables (RFC 5229
3.2: each wildcard's text, the leftmost wildcards taking as little as
possible) come from one bit-parallel pass over the text per pattern token
(:func:`captures`), O(len(pattern) * len(text) / 64) word operations, with
bounds on both. ``:regex`` is not offered at all (a user's pattern against a
sender's text is a denial of service waiting to happen).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from postroom.glob import Glob, Wild, sieve_pattern

CASEMAP = "i;ascii-casemap"
OCTET = "i;octet"
NUMERIC = "i;ascii-numeric"
# RFC 5229 3.2: match variables ${1}..${9} (and ${0}, the whole text)
MAX_MATCH_VARIABLES = 10
# beyond these, a :matches still answers, but without captures
MAX_CAPTURE_TEXT = 16 * 1024
MAX_CAPTURE_TOKENS = 256
MAX_KEY_CHARS = 4096

_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def casemap(text: str) -> str:
    """i;ascii-casemap: ASCII letters folded to lower case, every other character as is."""
    return text.translate(_ASCII_LOWER)


def fold(comparator: str, text: str) -> str:
    return casemap(text) if comparator == CASEMAP else text


def numeric(text: str) -> float:
    """i;ascii-numeric (RFC 4790 9.1): the leading digits' value; none is positive infinity."""
    end = 0
    while end < len(text) and end < 40 and "0" <= text[end] <= "9":
        end += 1
    return float(int(text[:end])) if end else float("inf")


def relation(rel: str, left: object, right: object) -> bool:
    """``left REL right`` for RFC 5231's gt, ge, lt, le, eq, ne."""
    if rel == "eq":
        return left == right
    if rel == "ne":
        return left != right
    if rel == "gt":
        return left > right  # type: ignore[operator]
    if rel == "ge":
        return left >= right  # type: ignore[operator]
    if rel == "lt":
        return left < right  # type: ignore[operator]
    if rel == "le":
        return left <= right  # type: ignore[operator]
    raise ValueError(f"unknown relation {rel}")


@functools.lru_cache(maxsize=2048)
def _glob(key: str) -> Glob:
    return sieve_pattern(key, max_length=MAX_KEY_CHARS)


def captures(glob: Glob, text: str) -> list[str] | None:
    """What each wildcard of ``glob`` matched in ``text`` (leftmost takes the least), or None
    when the pattern does not match or is beyond the capture bounds."""
    tokens = glob.tokens
    n = len(text)
    if n > MAX_CAPTURE_TEXT or len(tokens) > MAX_CAPTURE_TOKENS:
        return None
    full = (1 << (n + 1)) - 1
    below_end = (1 << n) - 1
    masks: dict[str, int] = {}
    wanted = {t for t in tokens if isinstance(t, str)}
    for i, char in enumerate(text):
        if char in wanted:
            masks[char] = masks.get(char, 0) | (1 << i)
    # alive[i]: the text positions from which tokens[i:] match the rest of the text
    alive = [0] * (len(tokens) + 1)
    alive[-1] = 1 << n
    for i in range(len(tokens) - 1, -1, -1):
        token, after = tokens[i], alive[i + 1]
        if token is Wild.ANY:
            alive[i] = ((1 << after.bit_length()) - 1) & full if after else 0
        elif token is Wild.ONE:
            alive[i] = (after >> 1) & below_end
        else:
            assert isinstance(token, str)
            alive[i] = (after >> 1) & masks.get(token, 0)
    if not alive[0] & 1:
        return None
    found: list[str] = []
    pos = 0
    for i, token in enumerate(tokens):
        if token is Wild.ANY:
            rest = alive[i + 1] >> pos
            step = (rest & -rest).bit_length() - 1
            found.append(text[pos:pos + step])
            pos += step
        elif token is Wild.ONE:
            found.append(text[pos])
            pos += 1
        else:
            pos += 1
    return found


def match_one(match: str, comparator: str, value: str, key: str,
              rel: str | None = None) -> tuple[bool, list[str] | None]:
    """Whether ``value`` matches ``key``; with :matches and a match, the match variables
    (${0} the whole value, then each wildcard's text) when they could be had."""
    if comparator == NUMERIC:
        if match == ":is":
            return numeric(value) == numeric(key), None
        if match == ":value" and rel:
            return relation(rel, numeric(value), numeric(key)), None
        return False, None  # RFC 4790: i;ascii-numeric offers equality and ordering only
    v, k = fold(comparator, value), fold(comparator, key)
    if match == ":is":
        return v == k, None
    if match == ":contains":
        return k in v, None
    if match == ":value" and rel:
        return relation(rel, v, k), None
    if match == ":matches":
        glob = _glob(k[:MAX_KEY_CHARS + 1])
        if not glob.match(v):
            return False, None
        parts = captures(glob, v)
        if parts is None:
            return True, None
        # the captured text as the message has it, not folded (same positions)
        out, pos = [value], 0
        for token in glob.tokens:
            if token is Wild.ANY:
                piece = parts[len(out) - 1]
                out.append(value[pos:pos + len(piece)])
                pos += len(piece)
            elif token is Wild.ONE:
                out.append(value[pos])
                pos += 1
            else:
                pos += 1
        return True, out[:MAX_MATCH_VARIABLES]
    return False, None


def count_matches(rel: str, count: int, keys: Sequence[str]) -> bool:
    """RFC 5231 :count: the number of values against each key, numerically."""
    return any(relation(rel, float(count), numeric(key)) for key in keys)
