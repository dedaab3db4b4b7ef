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
    a line without such a name is never kept. The name is split off with
    ``partition`` and checked against the grammar only when the check decides
    (a requested name, or any name with ``exclude``): FETCH of a few header
    fields runs this for every message of a range (issue 23).
    """
    listed = tuple(names)
    # the sets of short lists (what clients send) are kept; a long one is not held
    wanted = _wanted(listed) if len(listed) <= 16 else _wanted.__wrapped__(listed)
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
