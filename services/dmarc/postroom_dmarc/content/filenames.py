"""Attachment and archive member names decoded the way mail clients show them, and their tricks.

A part's name comes from ``Content-Disposition: filename`` or, failing that,
``Content-Type: name``, each possibly split into RFC 2231 continuations
(``filename*0*=utf-8''%E2%80%AE...; filename*1=...``) with a charset, or
written as RFC 2047 encoded words (``"=?utf-8?B?...?="``), which RFC 2231
forbids but every client decodes. Zip member names are UTF-8 when the
general purpose flag's bit 11 is set, else CP437 (what Python's zipfile does),
unless an Info-ZIP Unicode Path extra field (0x7075) gives the UTF-8 name.

:func:`inspect_name` turns any of those into a :class:`FileName`: the name as
shown, the name Windows acts on (invisible and bidi characters dropped,
trailing dots and spaces stripped, last path component only), its extensions
and the tricks found (bidi controls such as U+202E RIGHT-TO-LEFT OVERRIDE
that make ``invoice\u202efdp.exe`` show as ``invoiceexe.pdf``, zero-width and
other invisible characters, look-alike dots, runs of padding spaces, control
characters). Everything is linear in the name's length; names are cut at
:data:`MAX_NAME` characters first.
"""

from __future__ import annotations

import binascii
import codecs
import struct
import unicodedata
import zipfile
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from postroom.mime.headers import decode_words, unquote

MAX_NAME = 1024  # characters kept of any name (a longer one is cut, and that is a trick too)

BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"
                          "\u061c")
# shown as nothing (or as a blank) by clients, yet part of the name Windows acts on
INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e"
                      "\u115f\u1160\u3164\uffa0\u034f\u17b4\u17b5")
LOOKALIKE_DOTS = frozenset("\u2024\uff0e\u3002\ufe52\u0701\u0702\u2e33\ua4f8")
PADDING_RUN = 8  # this many spaces (or blanks) in a row hide an extension off the screen


@dataclass(frozen=True)
class FileName:
    """A decoded name: as shown, as acted on, its extensions and what is odd about it."""

    shown: str  # normalised (NFC), control characters made visible; for reasons and logs
    effective: str  # what Windows acts on: lower case, basename, no invisibles, no trailing dots
    extensions: tuple[str, ...]  # lower-case suffixes of ``effective``, last one last
    tricks: tuple[str, ...] = field(default=())

    @property
    def extension(self) -> str:
        return self.extensions[-1] if self.extensions else ""


def _escape_controls(text: str) -> str:
    return "".join(ch if unicodedata.category(ch) not in ("Cc", "Cf") and ch not in INVISIBLE
                   else f"<U+{ord(ch):04X}>" for ch in text)


def inspect_name(raw: str) -> FileName:
    """The :class:`FileName` of an already decoded name (a part's or an archive member's)."""
    tricks: list[str] = []
    if len(raw) > MAX_NAME:
        tricks.append("very long name")
        raw = raw[:MAX_NAME]
    name = unicodedata.normalize("NFC", raw)
    if any(ch in BIDI_CONTROLS for ch in name):
        tricks.append("bidi control characters")
    if any(ch in INVISIBLE for ch in name):
        tricks.append("invisible characters")
    if any(ch in LOOKALIKE_DOTS for ch in name):
        tricks.append("look-alike dot")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        tricks.append("control characters")
    # the last path component, whichever separator the archiver or client used
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if base != name:
        tricks.append("path in name")
    kept = "".join(ch for ch in base if ch not in BIDI_CONTROLS and ch not in INVISIBLE
                   and unicodedata.category(ch) not in ("Cc", "Cf"))
    if " " * PADDING_RUN in kept or "\u3000" * 2 in kept:
        tricks.append("padding before the extension")
    # Windows drops trailing dots and spaces: "setup.exe. " runs as setup.exe; a look-alike
    # dot is shown as a dot but is not one, so it never starts an extension
    effective = kept.rstrip(". \t").casefold()
    pieces = effective.split(".")
    extensions = tuple(p.strip() for p in pieces[1:] if p.strip()) if len(pieces) > 1 else ()
    return FileName(shown=_escape_controls(name), effective=effective,
                    extensions=extensions[-4:], tricks=tuple(tricks))


# --- MIME parameters (RFC 2231, RFC 2047)


def _rfc2231_value(value: str, extended: bool, charset: str) -> bytes | str:
    if not extended:
        return value
    return unquote_to_bytes(value)


def _decode_charset(data: bytes, charset: str) -> str:
    try:
        codecs.lookup(charset or "utf-8")
    except LookupError:
        charset = "latin-1"
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except (UnicodeError, LookupError, ValueError):
        return data.decode("latin-1")


def param_value(params: list[tuple[str, str]], name: str) -> str | None:
    """Parameter ``name`` of a parsed header (postroom.mime keeps RFC 2231 pieces as written).

    ``name*=charset'lang'%xx``, ``name*0*=...; name*1=...`` (in any order,
    at most 64 pieces) and plain ``name=`` are all understood; RFC 2047
    encoded words in a plain value are decoded as clients do. None when absent.
    """
    plain: str | None = None
    single: str | None = None
    pieces: dict[int, tuple[str, bool]] = {}
    for key, value in params:
        if key == name:
            if plain is None:
                plain = value
        elif key == name + "*":
            if single is None:
                single = value
        elif key.startswith(name + "*"):
            rest = key[len(name) + 1:]
            extended = rest.endswith("*")
            number = rest[:-1] if extended else rest
            if number.isdigit() and len(number) <= 3 and int(number) not in pieces:
                pieces[int(number)] = (value, extended)
    if single is not None:
        return _extended(single)
    if pieces:
        charset = ""
        chunks: list[bytes] = []
        for index in range(len(pieces)):
            if index not in pieces:
                break  # a gap ends the value (RFC 2231 section 3)
            value, extended = pieces[index]
            if index == 0 and extended and value.count("'") >= 2:
                charset, _, value = value.split("'", 2)
                charset = charset.strip()
            chunks.append(unquote_to_bytes(value) if extended
                          else value.encode("utf-8", "surrogateescape"))
        return _decode_charset(b"".join(chunks), charset or "utf-8")
    if plain is not None:
        return decode_words(unquote(plain))
    return None


def _extended(value: str) -> str:
    charset = ""
    if value.count("'") >= 2:
        charset, _, value = value.split("'", 2)
    return _decode_charset(unquote_to_bytes(value), charset.strip() or "utf-8")


def part_filename(disposition_params: list[tuple[str, str]],
                  type_params: list[tuple[str, str]]) -> str | None:
    """A MIME part's file name: Content-Disposition's filename, else Content-Type's name."""
    for params, name in ((disposition_params, "filename"), (type_params, "name")):
        value = param_value(params, name)
        if value:
            return value
    return None


# --- zip member names


_UNICODE_PATH = 0x7075


def zip_member_name(info: zipfile.ZipInfo) -> str:
    """The name an unzip tool shows: the Unicode Path extra field's when valid, else zipfile's.

    zipfile already decodes by bit 11 of the flags (UTF-8) or else as CP437.
    """
    extra = info.extra or b""
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + size]
        pos += 4 + size
        if tag == _UNICODE_PATH and len(body) >= 5 and body[0] == 1:
            crc = struct.unpack_from("<I", body, 1)[0]
            raw = info.orig_filename.encode("cp437" if not info.flag_bits & 0x800 else "utf-8",
                                            "replace")
            if crc == binascii.crc32(raw):
                try:
                    return body[5:].decode("utf-8")
                except UnicodeDecodeError:
                    pass
    return info.filename
