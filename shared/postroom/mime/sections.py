"""Map IMAP section specifiers (BODY[1.2.MIME] and friends) to byte ranges of the raw message."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from postroom.mime.model import MessageMeta, Part


def find_part(meta: MessageMeta, path: Iterable[int]) -> Part | None:
    """The part at a section path (RFC 3501 6.4.5); ``()`` is the message itself."""
    node = meta.body
    at_message = True  # a non-multipart message body is addressed as part 1
    for number in path:
        if node.is_message and not at_message:
            node = node.children[0]
            at_message = True
        if node.is_multipart and node.children:
            if not 1 <= number <= len(node.children):
                return None
            node = node.children[number - 1]
            at_message = False
        elif number == 1 and at_message:
            at_message = False
        else:
            return None
    return node


def section_range(
    meta: MessageMeta, path: tuple[int, ...], text: str = ""
) -> tuple[int, int] | None:
    """``(start, end)`` of BODY[path.text]; text is "", HEADER, TEXT, MIME or HEADER.FIELDS[.NOT].

    Returns None when the section does not exist (the server sends an empty string).
    """
    text = text.upper()
    part = find_part(meta, path)
    if part is None:
        return None
    if text == "":
        if not path:
            return (0, meta.size)
        return (part.body_start, part.end)
    if text == "MIME":
        return (part.header_start, part.body_start) if path else None
    if path:
        if not part.is_message:
            return None
        part = part.children[0]
    if text.startswith("HEADER"):
        return (part.header_start, part.body_start)
    if text == "TEXT":
        return (part.body_start, part.end)
    return None


def filter_header_fields(header: bytes, names: Iterable[str], exclude: bool = False) -> bytes:
    """The fields of a header block named (or, with ``exclude``, not named) in ``names``.

    The result ends with the blank line, as RFC 3501 HEADER.FIELDS requires.
    A field's name is what precedes its first colon, less trailing blanks, when
    that is printable ASCII without spaces or colons (``_FIELD_NAME``);
    a line without such a name is never kept. Lines end at LF, CRLF or a bare
    CR (``bytes.splitlines``); the block ends at its first empty line.

    FETCH of a few header fields runs this for every message of a range
    (issue 23): a short list of names on a block without bare CRs is found in
    one scan of the lower-cased block (:func:`_named_fields`, no Python work
    for a line not kept); anything else takes the line loop (:func:`_field_lines`).
    """
    listed = tuple(names)
    if not exclude and len(listed) <= 16:
        wanted = _wanted(listed)
        if header.count(b"\r") == header.count(b"\r\n"):
            return _named_fields(header, _field_names(wanted))
    else:
        wanted = _wanted(listed) if len(listed) <= 16 else _wanted.__wrapped__(listed)
    return _field_lines(header, wanted, exclude)


def _named_fields(header: bytes, wanted: tuple[bytes, ...]) -> bytes:
    """:func:`filter_header_fields` of ``wanted`` on a block whose lines all end in LF or CRLF.

    ``wanted``: lower-cased names that fit the field name grammar. One scan of
    the lower-cased block (behind an LF, so its first line starts after one
    too), up to its first empty line, by :func:`_fields_pattern`: a field line
    of a wanted name with its continuation lines, or the empty line. Only
    possessive quantifiers and no nesting that can retry: linear in the block
    (at most 16 names are tried at each line start).
    """
    if not wanted:
        return b"\r\n"
    low = b"\n" + header.lower()
    size = len(low)
    out = []
    # low[k] is header[k - 1]: a match low[s:e] is the field header[s:e], the LF
    # that ends it included (low[e]); at the end of a block without one, a
    # field line alone gets CRLF, a continuation line is kept as it is
    for match in _fields_pattern(wanted).finditer(low):
        start, stop = match.span()
        if low[stop - 1] == 10:  # a field ends before its LF: this is the empty line
            break
        if stop < size:
            out.append(header[start:stop])
        elif b"\n" in low[start + 1:stop]:
            out.append(header[start:])
        else:
            out.append(header[start:] + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


@functools.lru_cache(maxsize=64)
def _fields_pattern(wanted: tuple[bytes, ...]) -> re.Pattern[bytes]:
    """After an LF: a line of one of ``wanted`` (blanks, a colon) and its continuation
    lines, less the last LF; or the empty line (CRLF or LF) that ends the block."""
    names = b"|".join(re.escape(n) for n in sorted(wanted))
    return re.compile(rb"\n(?:(?:" + names + rb")[ \t]*+:[^\n]*+(?:\n[ \t][^\n]*+)*+|\r?\n)")


def _field_lines(header: bytes, wanted: frozenset[bytes], exclude: bool) -> bytes:
    """:func:`filter_header_fields`, a line at a time (any block, any list of names).

    A name is split off with ``partition`` and checked against the grammar
    only when the check decides (a requested name, or any name with ``exclude``).
    """
    out: list[bytes] = []
    keep = False
    for line in header.splitlines(keepends=True):
        if line == b"\r\n" or line == b"\n":
            break
        first = line[:1]
        if first == b" " or first == b"\t":
            if keep:
                out.append(line)
            continue
        name, colon, _ = line.partition(b":")
        name = name.rstrip(b" \t").lower()
        if exclude:
            keep = name not in wanted and bool(colon) and _FIELD_NAME.fullmatch(name) is not None
        else:
            keep = name in wanted and bool(colon) and _FIELD_NAME.fullmatch(name) is not None
        if keep:
            out.append(line if line.endswith(b"\n") else line + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")


@functools.lru_cache(maxsize=64)
def _wanted(names: tuple[str, ...]) -> frozenset[bytes]:
    return frozenset(n.lower().encode("ascii", "replace") for n in names)


@functools.lru_cache(maxsize=64)
def _field_names(wanted: frozenset[bytes]) -> tuple[bytes, ...]:
    """The names of ``wanted`` a field can have (the others match no line)."""
    return tuple(n for n in wanted if _FIELD_NAME.fullmatch(n) is not None)
