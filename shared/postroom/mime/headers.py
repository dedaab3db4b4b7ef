"""Header blocks: find where they end, unfold fields, decode RFC 2047 words and parameters."""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from dataclasses import dataclass, field

from postroom.mime.model import Limits

_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_BLANK = re.compile(rb"\n\r?\n")
_LOOSE_DROP = re.compile(rb"[\x00-\x20\x7f]+")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(\?=)[ \t\r\n]+(=\?)")
_Q_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")


@dataclass
class HeaderBlock:
    """A header block: ``[start, body_start)`` in the raw bytes and its unfolded fields.

    ``fields_end`` is where the leading run of well-formed fields ends (the blank
    line, the first malformed line, or the end): where a new field can be added
    that every parser reads as part of the header.
    """

    start: int
    body_start: int
    fields: list[tuple[str, bytes]] = field(default_factory=list)
    separated: bool = False
    defects: list[str] = field(default_factory=list)
    fields_end: int = -1
    #: (fields counted, first value of each name): built on the first lookup, rebuilt if
    #: fields were added since (analyze looks up some 20 names per block)
    _index: tuple[int, dict[str, bytes]] | None = field(default=None, compare=False, repr=False)

    def first(self, name: str) -> bytes | None:
        """Value of the first field called ``name`` (lower-case), or None."""
        index = self._index
        if index is None or index[0] != len(self.fields):
            # reversed: a later field of the same name is overwritten by the earlier one
            index = self._index = (len(self.fields), dict(reversed(self.fields)))
        return index[1].get(name)


def _loose_field(raw: bytes, pos: int, stop: int) -> tuple[str, int] | None:
    """The name a lenient parser would give the malformed line at ``pos`` (the text before
    its first colon, without blanks and control characters, lowercased) and where its
    value starts; None without a colon in its first 1000 bytes."""
    colon = raw.find(b":", pos, min(stop, pos + 1000))
    if colon < 0:
        return None
    name = _LOOSE_DROP.sub(b"", raw[pos:colon]).decode("ascii", "replace").lower()
    return name, colon + 1


def scan_header(raw: bytes, start: int, end: int, limits: Limits, *,
                whole_block: bool = False) -> HeaderBlock:
    """Scan the header block at ``start``; never reads past ``end``.

    The block ends after the first empty line, or before the first line that
    is neither a field nor a continuation (that line starts the body, as in
    Python's email package), or at ``end``.

    ``whole_block``: a malformed line does not end the block, only the empty
    line (or ``end``) does, as a lenient reader sees it. A malformed line with a
    colon is kept as a field under its lenient name (``_loose_field``), one
    without is skipped with its continuations; each is a defect. For checks that
    must see every field some reader of the message may take for one (the
    MSA's From: check), not for display.
    """
    block = HeaderBlock(start=start, body_start=end, fields_end=end)
    pos = start
    name: str | None = None
    value = bytearray()
    clean = True  # no malformed line yet (whole_block): fields_end is still ahead

    def keep() -> None:
        if name is None:
            return
        if len(block.fields) >= limits.max_headers:
            if "too many header fields" not in block.defects:
                block.defects.append("too many header fields")
            return
        block.fields.append((name, bytes(value[: limits.max_value_chars * 4]).strip()))

    while pos < end:
        if pos - start > limits.max_header_bytes:
            # Past the limit, stop collecting and only look for the separator.
            keep()
            block.defects.append("header too large")
            if clean:
                block.fields_end = pos
            found = _BLANK.search(raw, max(pos - 1, start), end)
            block.body_start = found.end() if found else end
            block.separated = found is not None
            return block
        nl = raw.find(b"\n", pos, end)
        after = end if nl < 0 else nl + 1
        stop = after - 1 if nl >= 0 else end
        if stop > pos and raw[stop - 1] == 0x0D:
            stop -= 1
        if stop == pos and nl >= 0:
            keep()
            block.body_start = after
            block.separated = True
            if clean:
                block.fields_end = pos
            return block
        first = raw[pos]
        if first in (0x20, 0x09) and name is not None:
            if len(value) < limits.max_value_chars * 4:
                value += raw[pos : min(stop, pos + limits.max_value_chars * 4)]
            pos = after
            continue
        match = _FIELD_NAME.match(raw, pos, min(stop, pos + 1000))
        if match is None:
            keep()
            if not whole_block:
                if pos != start:
                    block.defects.append("missing header separator")
                block.body_start = block.fields_end = pos
                return block
            if clean:
                block.fields_end = pos
                clean = False
            if "malformed header line" not in block.defects:
                block.defects.append("malformed header line")
            loose = _loose_field(raw, pos, stop)
            name, value = None, bytearray()
            if loose is not None:
                name, begin = loose
                value = bytearray(raw[begin : min(stop, begin + limits.max_value_chars * 4)])
            pos = after
            continue
        keep()
        name = match.group(1).decode("ascii").lower()
        value = bytearray(raw[match.end() : min(stop, match.end() + limits.max_value_chars * 4)])
        pos = after
    keep()
    block.body_start = end
    return block


def to_text(value: bytes, limit: int = 16 * 1024) -> str:
    """Bytes of a header as text: UTF-8 when valid, else Latin-1; no control characters."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = value.decode("latin-1")
    text = _CONTROL.sub("\ufffd", text.replace("\r\n", "").replace("\n", ""))
    return text[:limit]


def _decode_bytes(data: bytes, charset: str) -> str:
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "latin-1"
    try:
        return data.decode(charset, errors="replace")
    except (UnicodeError, LookupError, ValueError):  # odd codecs raise odd errors
        return data.decode("latin-1")


def _decode_word(match: re.Match[str]) -> str:
    charset, kind, payload = match.group(1), match.group(2).lower(), match.group(3)
    try:
        if kind == "b":
            data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=False)
        else:
            raw = payload.replace("_", " ").encode("latin-1", errors="replace")
            data = _Q_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    except (binascii.Error, ValueError):
        return match.group(0)
    return _CONTROL.sub("\ufffd", _decode_bytes(data, charset))


def decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words; anything undecodable stays as written."""
    if "=?" not in text:
        return text
    text = _BETWEEN_WORDS.sub(r"\1\2", text)
    return _ENCODED_WORD.sub(_decode_word, text)


def _split_unquoted(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quoted strings and comments."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    depth = 0
    escape = False
    for ch in text:
        if escape:
            current.append(ch)
            escape = False
            continue
        if ch == "\\" and (quoted or depth):
            current.append(ch)
            escape = True
            continue
        if ch == '"' and not depth:
            quoted = not quoted
        elif ch == "(" and not quoted:
            depth += 1
        elif ch == ")" and not quoted and depth:
            depth -= 1
        elif ch == sep and not quoted and not depth:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def strip_comments(text: str) -> str:
    """Remove RFC 5322 comments outside quoted strings."""
    out: list[str] = []
    quoted = False
    depth = 0
    escape = False
    for ch in text:
        if escape:
            escape = False
            if not depth:
                out.append(ch)
            continue
        if ch == "\\" and (quoted or depth):
            escape = True
            if not depth:
                out.append(ch)
            continue
        if ch == '"' and not depth:
            quoted = not quoted
        elif ch == "(" and not quoted:
            depth += 1
            continue
        elif ch == ")" and not quoted and depth:
            depth -= 1
            continue
        if not depth:
            out.append(ch)
    return "".join(out)


def unquote(text: str) -> str:
    """Remove surrounding double quotes and backslash escapes."""
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def parse_params(value: str) -> tuple[str, list[tuple[str, str]]]:
    """Split ``type/subtype; a=b; c="d"`` into the main value and (lower-cased) parameters.

    RFC 2231 continuations are kept as written, as IMAP servers report them.
    """
    pieces = _split_unquoted(value, ";")
    main = strip_comments(pieces[0]).strip().lower()
    params: list[tuple[str, str]] = []
    for piece in pieces[1:]:
        if "=" not in piece:
            continue
        attr, _, val = piece.partition("=")
        attr = strip_comments(attr).strip().lower()
        val = val.strip()
        if not val.startswith('"'):
            val = strip_comments(val).strip()
        if attr and len(params) < 64:
            params.append((attr, unquote(val)))
    return main, params


def param(params: list[tuple[str, str]], name: str) -> str | None:
    """First value of parameter ``name``, or None."""
    for key, val in params:
        if key == name:
            return val
    return None
