"""SEARCH keys (the types) and their one parameterised SQL condition over entries and messages.

The condition is over ``mailbox_entries e`` and ``messages m``; the imap
service parses a client's SEARCH into these keys and :mod:`postroom.store.entries`
runs the condition.

Address keys match the text MIME analysis keeps for them in
``metadata.sort.text`` (the decoded field plus every address as a client shows
it, ``Name <mailbox@host>``); subject keys, and HEADER on the fields MIME
analysis keeps, match the decoded values cached in ``messages.metadata``
(case-insensitively, any script). SENT* use the Date: header's own day
(``metadata.sort.sent_day``), else INTERNALDATE's. BODY and TEXT match the
decoded text kept by :mod:`postroom.store.fts` (its full-text index, then a
substring check). Other header fields, and BODY and TEXT on a blob not indexed
yet, match the raw bytes in the database: the blob is rendered with
``encode(..., 'escape')`` (NUL and 8-bit bytes become ``\\nnn``, so any byte
is safe) and the needle is escaped the same way; that folds ASCII case only.
Nothing is loaded into Python.

HEADER on other fields is the costly key on a big mailbox (a regular
expression over every message's header block), so cheap necessary conditions
run first, inside a CASE so the planner cannot reorder them: the longest run
of the value's bytes that no case folding can change (no ASCII letter) must
occur in the raw blob (``position`` on bytea, no decoding), then the value, or
the field name when the value is empty, must occur case-folded in the text up
to the first empty line, which holds the whole header block. Only the messages
that pass both are matched exactly. The first test also drops matches that
only existed inside an escape sequence (``\\200`` for byte 0x80), which were
never matches of the message's bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

from postroom.mime import SEARCH_FIELDS
from postroom.store import fts

# ---- search keys (RFC 3501 section 6.4.4, RFC 7162 MODSEQ) ----


@dataclass(frozen=True)
class SequenceSet:
    """``1:*,3,5:7``; ``None`` stands for ``*``; ``saved`` is ``$`` (RFC 5182)."""

    ranges: tuple[tuple[int | None, int | None], ...] = ()
    saved: bool = False

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Ordered, merged inclusive ranges with ``*`` replaced by ``largest``."""
        spans = []
        for lo, hi in self.ranges:
            a = largest if lo is None else lo
            b = largest if hi is None else hi
            a, b = min(a, b), max(a, b)
            spans.append((a, b))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        return merged

    def contains(self, number: int, largest: int) -> bool:
        """Whether ``number`` is in the set when ``*`` is ``largest``."""
        return any(a <= number <= b for a, b in self.resolve(largest))

    def iter(self, largest: int, limit: int | None = None) -> Iterator[int]:
        """Members up to ``largest`` (callers bound huge sets by ``largest``)."""
        for a, b in self.resolve(largest):
            yield from range(a, min(b, largest if limit is None else limit) + 1)




@dataclass(frozen=True)
class SearchAll:
    """ALL."""


@dataclass(frozen=True)
class SearchFlag:
    """A system flag or keyword set (``present``) or not; RECENT/OLD use ``\\Recent``."""

    flag: str
    present: bool = True


@dataclass(frozen=True)
class SearchText:
    """BCC, BODY, CC, FROM, SUBJECT, TEXT, TO with a (decoded) substring."""

    where: str
    value: str


@dataclass(frozen=True)
class SearchHeader:
    """HEADER field-name string (empty string matches any message with the field)."""

    name: str
    value: str


@dataclass(frozen=True)
class SearchDate:
    """BEFORE/ON/SINCE (internal date) and SENTBEFORE/SENTON/SENTSINCE (Date header)."""

    sent: bool
    op: str  # "before", "on", "since"
    day: date


@dataclass(frozen=True)
class SearchSize:
    """LARGER / SMALLER n."""

    op: str  # "larger", "smaller"
    size: int


@dataclass(frozen=True)
class SearchSet:
    """A message set: sequence numbers, or UIDs when ``uid``."""

    sequence: SequenceSet
    uid: bool = False


@dataclass(frozen=True)
class SearchModseq:
    """MODSEQ [entry-name entry-type-req] mod-sequence-valzer (RFC 7162)."""

    modseq: int
    entry: str | None = None
    entry_type: str | None = None


@dataclass(frozen=True)
class SearchAnd:
    """All of ``keys`` (a parenthesised list, or the top level)."""

    keys: tuple[SearchKey, ...]


@dataclass(frozen=True)
class SearchOr:
    """OR a b."""

    left: SearchKey
    right: SearchKey


@dataclass(frozen=True)
class SearchNot:
    """NOT key."""

    key: SearchKey


SearchKey = (SearchAll | SearchFlag | SearchText | SearchHeader | SearchDate | SearchSize
             | SearchSet | SearchModseq | SearchAnd | SearchOr | SearchNot)


_BODY_START = "coalesce((m.metadata->'body'->>'body_start')::int, 0)"
_HEADER_TEXT = f"encode(substring(m.blob FROM 1 FOR {_BODY_START}), 'escape')"
_BODY_TEXT = f"encode(substring(m.blob FROM {_BODY_START} + 1), 'escape')"
_WHOLE_TEXT = "encode(m.blob, 'escape')"
# the blob up to its first empty line (CRLF CRLF), or all of it: never shorter than the header
_HEADER_PREFIX = ("encode(substring(m.blob FROM 1 FOR coalesce(nullif(position("
                  "'\\x0d0a0d0a'::bytea IN m.blob), 0) + 3, octet_length(m.blob))), 'escape')")
# a run of at least this many case-proof bytes is worth a raw-byte test
_MIN_RUN = 3
_INTERNAL_DAY = "(e.internaldate AT TIME ZONE 'UTC')::date"
# the Date: header's day as written (its own zone); mail analysed before sent_day was kept
# falls back to the UTC day of its date, and mail without a parsable Date: to INTERNALDATE
_SENT_DAY = ("coalesce((m.metadata->'sort'->>'sent_day')::date, "
             "((m.metadata->'sort'->>'date')::timestamptz AT TIME ZONE 'UTC')::date, "
             f"{_INTERNAL_DAY})")
_OPS = {"before": "<", "on": "=", "since": ">="}


def escape_bytes(data: bytes) -> str:
    """Bytes as PostgreSQL's ``encode(..., 'escape')`` renders them."""
    out = []
    for b in data:
        if b == 0 or b >= 0x80:
            out.append(f"\\{b:03o}")
        elif b == 0x5C:
            out.append("\\\\")
        else:
            out.append(chr(b))
    return "".join(out)


def caseless_run(data: bytes) -> bytes:
    """The longest run of bytes that are not ASCII letters (case folding leaves them alone)."""
    best = b""
    for run in _LETTERS.split(data):
        if len(run) > len(best):
            best = run
    return best


_LETTERS = re.compile(rb"[A-Za-z]+")
# the characters of encode(..., 'escape')'s sequences (\\ and \ooo)
_ESCAPE_CHARS = re.compile(r"[\\0-7]")


def _regex_literal(text: str) -> str:
    """``text`` matched literally in a PostgreSQL ARE (escape every non-alphanumeric)."""
    return "".join(c if c.isascii() and c.isalnum() else "\\" + c for c in text)


class _Builder:
    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def param(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return ":" + name

    def contains(self, haystack: str, needle: str) -> str:
        value = self.param(escape_bytes(needle.encode("utf-8")).lower())
        return f"strpos(lower({haystack}), {value}) > 0"

    def cached_header(self, names: tuple[str, ...], value: str) -> str:
        fields = self.param(list(names))
        cond = f"h->>'name' = ANY(CAST({fields} AS text[]))"
        if value:
            cond += f" AND strpos(lower(h->>'decoded'), lower({self.param(value)})) > 0"
        return (f"EXISTS (SELECT 1 FROM jsonb_array_elements(coalesce(m.metadata->'headers', "  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
                f"'[]'::jsonb)) h WHERE {cond})")

    def address_text(self, name: str, value: str) -> str:
        """FROM/TO/CC/BCC: the decoded field and its addresses as a client shows them."""
        text = f"m.metadata->'sort'->'text'->>{self.param(name)}"
        old = self.cached_header((name,), value)  # mail analysed before the text was kept
        return (f"CASE WHEN m.metadata->'sort'->'text' IS NULL THEN {old} "
                f"ELSE strpos(lower(coalesce({text}, '')), lower({self.param(value)})) > 0 END")

    def raw_header(self, name: str, value: str) -> str:
        raw = value.encode("utf-8")
        pattern = ("(^|\n)" + _regex_literal(name) + "[ \t]*:([^\n]|\n[ \t])*"
                   + _regex_literal(escape_bytes(raw)))
        exact = f"{_HEADER_TEXT} ~* {self.param(pattern)}"
        needle = escape_bytes(raw if raw else name.encode("utf-8"))
        tests = [f"strpos(lower({_HEADER_PREFIX}), lower({self.param(needle)})) > 0"]
        run = caseless_run(raw)
        if len(run) >= _MIN_RUN:
            tests.insert(0, f"position({self.param(run)} IN m.blob) > 0")
        # CASE: evaluated in this order, whatever the planner thinks the costs are
        return f"CASE WHEN {' AND '.join(tests)} THEN {exact} ELSE false END"

    def header_candidate(self, name: str, value: str) -> str:
        """A test over ``message_headers h`` true for every message ``raw_header`` can match.

        ``h.header`` is the blob up to its first empty line, the text the second
        pre-test reads, so that test is the same there. The raw-byte test reads
        the header only (not the whole blob), which holds every real match, and
        every match ``raw_header`` counts when the escaped needle has no
        character of an escape sequence (backslash, octal digit), or the header
        has no escaped byte (``h.plain``); otherwise the second test decides.
        """
        raw = value.encode("utf-8")
        needle = escape_bytes(raw if raw else name.encode("utf-8"))
        folded = f"strpos(lower(encode(h.header, 'escape')), lower({self.param(needle)})) > 0"
        run = caseless_run(raw)
        if len(run) < _MIN_RUN:
            return folded
        test = f"position({self.param(run)} IN h.header) > 0"
        if _ESCAPE_CHARS.search(escape_bytes(raw)) is None:
            return test
        return f"CASE WHEN h.plain THEN {test} ELSE {folded} END"

    def build(self, key: SearchKey) -> str:
        if isinstance(key, SearchAll):
            return "TRUE"
        if isinstance(key, SearchFlag):
            if key.flag.lower() == "\\recent":
                # no message is \Recent in this server (see docs/imap.md)
                return "FALSE" if key.present else "TRUE"
            cond = f"{self.param(key.flag)} = ANY(e.flags)"
            return cond if key.present else f"NOT ({cond})"
        if isinstance(key, SearchText):
            if key.where in ("from", "to", "cc", "bcc"):
                return self.address_text(key.where, key.value)
            if key.where == "subject":
                return self.cached_header((key.where,), key.value)
            # BODY and TEXT: the full-text index, raw bytes for blobs not indexed (fts)
            raw = _BODY_TEXT if key.where == "body" else _WHOLE_TEXT
            return fts.search_condition(self.param, key.where, key.value,
                                        self.contains(raw, key.value))
        if isinstance(key, SearchHeader):
            if key.name in SEARCH_FIELDS:
                return self.cached_header((key.name,), key.value)
            return self.raw_header(key.name, key.value)
        if isinstance(key, SearchDate):
            day = _SENT_DAY if key.sent else _INTERNAL_DAY
            return f"{day} {_OPS[key.op]} {self.param(key.day)}"
        if isinstance(key, SearchSize):
            op = ">" if key.op == "larger" else "<"
            return f"m.size {op} {self.param(key.size)}"
        if isinstance(key, SearchSet):
            lows = [a or 0 for a, _ in key.sequence.ranges]
            highs = [b or 0 for _, b in key.sequence.ranges]
            if not lows:
                return "FALSE"
            return (f"EXISTS (SELECT 1 FROM unnest(CAST({self.param(lows)} AS bigint[]), "  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
                    f"CAST({self.param(highs)} AS bigint[])) r(lo, hi) "
                    "WHERE e.uid BETWEEN r.lo AND r.hi)")
        if isinstance(key, SearchModseq):
            return f"e.modseq >= {self.param(key.modseq)}"
        if isinstance(key, SearchAnd):
            return "(" + " AND ".join(self.build(k) for k in key.keys) + ")"
        if isinstance(key, SearchOr):
            return f"({self.build(key.left)} OR {self.build(key.right)})"
        if isinstance(key, SearchNot):
            return f"NOT ({self.build(key.key)})"
        raise ValueError(f"unknown search key {type(key).__name__}")


def _raw_headers(key: SearchKey) -> Iterator[SearchHeader]:
    """HEADER keys on fields MIME analysis does not keep that every match must satisfy."""
    if isinstance(key, SearchHeader) and key.name not in SEARCH_FIELDS:
        yield key
    elif isinstance(key, SearchAnd):
        for k in key.keys:
            yield from _raw_headers(k)


def search_plan(key: SearchKey) -> tuple[str, str | None, dict[str, Any]]:
    """(condition, header candidate test or None, bound parameters) for one SEARCH.

    The candidate test is over ``message_headers h`` (left-joined: ``h`` is
    NULL for a blob without a header row, which must then pass) and is true
    for every entry the condition can match; it is given when ``key`` requires
    HEADER on a field not cached, so the statement tests the narrow header
    rows first and reads ``messages`` for the candidates only
    (docs/decisions/0025). The condition alone stays exact.
    """
    builder = _Builder()
    where = builder.build(key)
    headers = list(_raw_headers(key))
    if not headers:
        return where, None, builder.params
    tests = " AND ".join(builder.header_candidate(k.name, k.value) for k in headers)
    return where, f"h.message_id IS NULL OR ({tests})", builder.params


def search_where(key: SearchKey) -> tuple[str, dict[str, Any]]:
    """(SQL condition, bound parameters); message sets must already be concrete UID ranges.

    BODY and TEXT refer to the searched mailbox's id as ``:mbox`` (postroom.store.fts),
    which the caller binds.
    """
    builder = _Builder()
    return builder.build(key), builder.params
