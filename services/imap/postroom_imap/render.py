"""Server response syntax: flag lists, mailbox names, dates, and FETCH data from store rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from operator import itemgetter

from postroom.mime import (
    MessageMeta,
    analyze,
    filter_header_fields,
    render_bodystructure,
    render_envelope,
    section_range,
    string,
)
from postroom.mutf7 import encode_mutf7
from postroom_imap.binary import binary_section
from postroom_imap.policy import FetchRow
from postroom_imap.syntax_args import is_atom
from postroom_imap.syntax_types import FetchItem

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_CANONICAL = {f.lower(): f for f in (*SYSTEM_FLAGS, "\\Recent")}


def canonical_flag(flag: str) -> str:
    """System flags in their usual case (they are case-insensitive, RFC 3501 2.3.2)."""
    return _CANONICAL.get(flag.lower(), flag)


def flag_list(flags: Iterable[str]) -> bytes:
    return b"(" + " ".join(flags).encode("utf-8") + b")"


def mailbox_name(name: str, utf8: bool = False) -> bytes:
    """A mailbox name for the wire: modified UTF-7, quoted unless a plain atom.

    ``utf8`` (an IMAP4rev2 session, RFC 9051 5.1): the name as it is, in UTF-8,
    quoted (RFC 9051 allows UTF-8 in quoted strings) unless a plain atom.
    """
    wire = name if utf8 else encode_mutf7(name)
    if wire == "INBOX" or (wire.isascii() and is_atom(wire) and "%" not in wire
                           and "*" not in wire):
        return wire.encode("ascii")
    if utf8 and not wire.isascii() and len(wire) <= 1024 and all(
            c >= " " and c != "\x7f" for c in wire):
        return b'"' + wire.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8") + b'"'
    return string(wire)


def internaldate(when: datetime) -> bytes:
    """``"17-Jul-1996 02:44:25 -0700"``."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    offset = when.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset else 0
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    text = (f"{when.day:02d}-{_MONTHS[when.month - 1]}-{when.year:04d} "
            f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} "
            f"{sign}{minutes // 60:02d}{minutes % 60:02d}")
    return b'"' + text.encode("ascii") + b'"'


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def literal8(data: bytes) -> bytes:
    """A literal, or ``~{n}`` (RFC 3516 literal8) when the data holds a NUL."""
    if b"\x00" in data:
        return b"~{%d}\r\n" % len(data) + data
    return literal(data)


def needs_blob(item: FetchItem) -> bool:
    return item.section is not None or item.name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT")


def header_only(item: FetchItem) -> bool:
    """Whether the item reads no byte of the blob past the message's own header.

    HEADER, HEADER.FIELDS (.NOT) of the message itself and RFC822.HEADER: a
    FETCH of only these (and items needing no blob) reads the blob up to the
    end of its header, never its body (``fetch(..., head=True)``).
    """
    if item.section is None:
        return item.name == "RFC822.HEADER" or not needs_blob(item)
    return (not item.name.startswith("BINARY") and not item.section.path
            and item.section.text.upper().startswith("HEADER"))


def needs_meta(item: FetchItem) -> bool:
    """Whether the item needs the cached analysis (BODY[] and BODY.PEEK[] are the blob alone)."""
    if item.section is None:
        return item.name in ("ENVELOPE", "BODY", "BODYSTRUCTURE")
    return bool(item.section.path or item.section.text)


def needs_tree(item: FetchItem) -> bool:
    """Whether the item needs the whole analysis, not only the offsets of the message's header."""
    if item.section is None:
        return item.name in ("ENVELOPE", "BODY", "BODYSTRUCTURE")
    return bool(item.section.path)


def metadata(row: FetchRow) -> MessageMeta:
    """The row's cached MIME analysis, computed from the blob when the cache is empty.

    Also computed when the row holds only the top part's offsets (a fetch
    asked for no ``tree``), which never happens for the items that need it.
    """
    if row.meta and "body" in row.meta and "envelope" in row.meta:
        return MessageMeta.from_dict(row.meta)
    return analyze(row.blob or b"")


def _top_span(row: FetchRow, meta: MessageMeta | None, text: str) -> tuple[int, int] | None:
    """``section_range(meta, (), text)``; without ``meta``, from the cached analysis's top part.

    Rebuilding the whole MessageMeta of every message costs more than the rest
    of a header FETCH, which needs two offsets of it. Without ``meta`` the
    row's cached analysis must have its ``body`` (else the caller built ``meta``).
    """
    if meta is not None:
        return section_range(meta, (), text)
    assert row.meta is not None
    body = row.meta["body"]
    text = text.upper()
    if text == "":
        return (0, row.meta["size"])
    if text.startswith("HEADER"):
        return (body["header_start"], body["body_start"])
    if text == "TEXT":
        return (body["body_start"], body["end"])
    return None


def _section(item: FetchItem, row: FetchRow, meta: MessageMeta | None) -> bytes:
    blob = row.blob or b""
    section = item.section
    assert section is not None
    if not section.path and not section.text:
        data = blob
    else:
        text = section.text.split(".")[0] if section.text.startswith("HEADER") else section.text
        if section.path:
            assert meta is not None
            span = section_range(meta, section.path, text)
        else:
            span = _top_span(row, meta, text)
        data = b"" if span is None else blob[span[0]:span[1]]
        if section.text.startswith("HEADER.FIELDS") and span is not None:
            data = filter_header_fields(data, section.fields,
                                        exclude=section.text == "HEADER.FIELDS.NOT")
    if item.partial is not None:
        start, length = item.partial
        data = data[start:start + length]
    return literal(data)


# what a FETCH item renders, decided once per command (FetchPlan)
_UID, _FLAGS, _DATE, _SIZE, _MODSEQ, _ENVELOPE, _STRUCTURE, _BODY, _RFC822, _RFC822_PART, \
    _BINARY, _SECTION = range(12)
_SIMPLE = {"UID": _UID, "FLAGS": _FLAGS, "INTERNALDATE": _DATE, "RFC822.SIZE": _SIZE,
           "MODSEQ": _MODSEQ, "ENVELOPE": _ENVELOPE, "BODYSTRUCTURE": _STRUCTURE,
           "RFC822": _RFC822, "RFC822.HEADER": _RFC822_PART, "RFC822.TEXT": _RFC822_PART}


class FetchPlan:
    """The items of one FETCH command, classified once and rendered for each row.

    Byte for byte what rendering each row's items one by one makes: the same
    order (UID first when asked, the items as given, an implicit FLAGS, then
    MODSEQ), the same dropping of a repeated name, the cached analysis built
    at the same item. Only the per-item decisions (kind, response name, whether
    it needs the analysis) are taken once per command instead of once per
    message (issue 23: a header FETCH of 20 messages renders 20 lines).
    """

    __slots__ = ("implicit_flags", "steps", "with_modseq")

    def __init__(self, items: Iterable[FetchItem], *, with_uid: bool,
                 with_modseq: bool) -> None:
        # (kind, name as bytes, item, needs the whole analysis, needs the analysis)
        steps: list[tuple[int, bytes, FetchItem | None, bool, bool]] = []
        names: set[str] = set()
        if with_uid:
            names.add("UID")
            steps.append((_UID, b"UID ", None, False, False))
        for item in items:
            name = item.name
            kind = _SIMPLE.get(name) if item.section is None else None
            if kind is None:
                if name == "BODY" and item.section is None:
                    kind = _BODY
                elif item.section is not None and name.startswith("BINARY"):
                    kind, name = _BINARY, item.response_name()
                elif item.section is not None:
                    kind, name = _SECTION, item.response_name()
                else:  # not an item the grammar makes: rendered as nothing, as before
                    kind = -1
            tree, meta = needs_tree(item), needs_meta(item)
            if kind == -1 or name in names:
                # dropped, but the analysis it would have built is built here, as before
                if tree or meta:
                    steps.append((-1, b"", item, tree, meta))
                continue
            names.add(name)
            steps.append((kind, name.encode("ascii") + b" ", item, tree, meta))
        self.steps = tuple(steps)
        # FLAGS shown when a row's \Seen was set or the caller asks, unless an item did
        self.implicit_flags = "FLAGS" not in names
        self.with_modseq = with_modseq and "MODSEQ" not in names

    def render(self, row: FetchRow, with_flags: bool = False,
               flags: tuple[str, ...] | None = None) -> bytes:
        """The parenthesised data of one FETCH response (without ``* n FETCH``).

        ``flags``: shown instead of the row's (its flags and ``\\Recent``),
        without a copy of the row for each recent message.
        """
        if flags is None:
            flags = row.flags
        out: list[bytes] = []
        meta: MessageMeta | None = None
        # the header's offsets come from the cached analysis as it is, when it is there
        cached = row.meta is not None and "body" in row.meta
        for kind, label, item, tree, needs in self.steps:
            if meta is None and (tree or (not cached and needs)):
                meta = metadata(row)
            if kind == _SECTION:
                assert item is not None
                out.append(label + _section(item, row, meta))
            elif kind == _UID:
                out.append(b"UID %d" % row.uid)
            elif kind == _FLAGS:
                out.append(label + flag_list(flags))
            elif kind == _SIZE:
                out.append(b"RFC822.SIZE %d" % row.size)
            elif kind == _DATE:
                out.append(label + internaldate(row.internaldate))
            elif kind == _MODSEQ:
                out.append(b"MODSEQ (%d)" % row.modseq)
            elif kind == _ENVELOPE:
                assert meta is not None
                out.append(label + render_envelope(meta))
            elif kind == _STRUCTURE:
                assert meta is not None
                out.append(label + render_bodystructure(meta, extended=True))
            elif kind == _BODY:
                assert meta is not None
                out.append(label + render_bodystructure(meta, extended=False))
            elif kind == _RFC822:
                out.append(label + literal(row.blob or b""))
            elif kind == _RFC822_PART:
                assert item is not None
                if meta is None and not cached:
                    meta = metadata(row)
                span = _top_span(row, meta, item.name.split(".")[1])
                blob = row.blob or b""
                out.append(label + literal(b"" if span is None else blob[span[0]:span[1]]))
            elif kind == _BINARY:
                assert item is not None and item.section is not None
                data = binary_section(row.blob or b"", meta, item.section.path)
                if item.name == "BINARY.SIZE":
                    out.append(label + b"%d" % len(data))
                else:
                    if item.partial is not None:
                        start, length = item.partial
                        data = data[start:start + length]
                    out.append(label + literal8(data))
        if (with_flags or row.seen_set) and self.implicit_flags:
            out.append(b"FLAGS " + flag_list(flags))
        if self.with_modseq:
            out.append(b"MODSEQ (%d)" % row.modseq)
        return b"(" + b" ".join(out) + b")"


def fetch_items(row: FetchRow, items: Iterable[FetchItem], *, with_uid: bool,
                with_modseq: bool, with_flags: bool = False) -> bytes:
    """The parenthesised data of one FETCH response (without ``* n FETCH``)."""
    return FetchPlan(items, with_uid=with_uid, with_modseq=with_modseq).render(row, with_flags)


_FLAG_ONLY = {"UID": b"UID %d", "FLAGS": b"FLAGS (%s)", "MODSEQ": b"MODSEQ (%d)"}
# the argument orders (indexes into (seq, uid, flags, modseq)) rendered without a picker
_SEQ_UID_FLAGS = (0, 1, 2)
_SEQ_UID_FLAGS_MODSEQ = (0, 1, 2, 3)


class _Encoded(dict[str, bytes]):
    """Flag strings to their bytes, each encoded on first use (a C lookup for the rest)."""

    def __missing__(self, flags: str) -> bytes:
        shown = self[flags] = flags.encode("utf-8")
        return shown


class FlagsLine:
    """Makes ``* seq FETCH (...)`` lines from ``(uid, flags, modseq)`` store rows.

    ``flags`` is the flag names joined by spaces. Only for FETCHes asking
    nothing beyond UID, FLAGS and MODSEQ (what clients send to resynchronise a
    big mailbox); a line is byte for byte what :func:`fetch_items` makes, with
    the item order worked out once and each distinct flag string encoded once.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.template = b"* %d FETCH (" + b" ".join(_FLAG_ONLY[n] for n in names) + b")\r\n"
        self.order = (0, *({"UID": 1, "FLAGS": 2, "MODSEQ": 3}[n] for n in names))
        # always two or more indexes, so the getter returns a tuple for the % operator
        self.pick = itemgetter(*self.order)
        # one entry per distinct flag string of the mailbox, for this command only
        self.encoded = _Encoded()

    def __call__(self, seq: int, uid: int, flags: str, modseq: int) -> bytes:
        return self.template % self.pick((seq, uid, self.encoded[flags], modseq))

    def many(self, first: int, rows: Sequence[tuple[int, str, int]]) -> list[bytes]:
        """The lines of ``rows`` numbered ``first``, ``first + 1``, ... in order.

        The hot loop of ``FETCH 1:* (UID FLAGS)``: one list comprehension with
        the common item orders formatted directly (no picker tuple a line).
        """
        shown = self.encoded
        template, numbers = self.template, range(first, first + len(rows))
        if self.order == _SEQ_UID_FLAGS:
            return [template % (n, uid, shown[flags])
                    for n, (uid, flags, _) in zip(numbers, rows, strict=True)]
        if self.order == _SEQ_UID_FLAGS_MODSEQ:
            return [template % (n, uid, shown[flags], modseq)
                    for n, (uid, flags, modseq) in zip(numbers, rows, strict=True)]
        pick = self.pick
        return [template % pick((n, uid, shown[flags], modseq))
                for n, (uid, flags, modseq) in zip(numbers, rows, strict=True)]


def flags_line_renderer(items: Sequence[FetchItem], *, with_uid: bool,
                        with_modseq: bool) -> FlagsLine | None:
    """A :class:`FlagsLine` for these FETCH items, or None when they ask more than
    UID, FLAGS and MODSEQ."""
    names: list[str] = ["UID"] if with_uid else []
    for item in items:
        if item.name not in _FLAG_ONLY or item.section is not None or item.partial is not None:
            return None
        if item.name not in names:
            names.append(item.name)
    if with_modseq and "MODSEQ" not in names:
        names.append("MODSEQ")
    return FlagsLine(names)
