"""The RFC5322.From author domains of a message, with the malformed cases named.

RFC 7489 section 6.6.1 leaves messages without exactly one From field to
local policy. Ours (documented in docs/dmarc-api.md): no From field,
several From fields, or a From field without any address domain is
``malformed`` and, by default, rejected (RFC 5322 section 3.6 requires
exactly one From); one From field with several addresses is evaluated for
every distinct domain and the strictest outcome applies (RFC 7489 6.6.1).

Per check the header is read once for its From fields alone (:func:`from_values`:
the other fields' values are not decoded), and the usual shapes of a From value
(``a@b.example``, ``<a@b.example>``, ``Name <a@b.example>``, ``"Name, Q" <a@b.example>``)
are read by one fixed, possessive pattern (:func:`addresses`; no backtracking, at most
``_FAST_MAX`` characters); anything else goes to ``email.utils.getaddresses``, which
gives the same addresses for the usual shapes (tests/unit/test_dmarc_fromheader.py
compares the two) at several times the cost (issue 23).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.utils import getaddresses

_MAX_HEADER_BYTES = 256 * 1024
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_DOMAIN = re.compile(r"[^\s@<>()\[\]]+")

# The common shapes of a From value, read without the email package. Possessive
# quantifiers over classes that exclude their separators: one pass, no backtracking.
_ATOM = r"[A-Za-z0-9_+-]++"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*+"
_COMMON_FROM = re.compile(
    rf"(?:(?:{_ATOM}(?: {_ATOM})*+|\"[A-Za-z0-9 _+,.'-]*+\") ?+)?+"  # a display name
    rf"<({_DOT_ATOM}@{_DOT_ATOM})>"
    rf"|({_DOT_ATOM}@{_DOT_ATOM})")
_FAST_MAX = 998  # a line's length (RFC 5322 2.1.1); longer values take the full parser


@dataclass(frozen=True)
class AuthorDomains:
    """The distinct author domains, or why there are none usable."""

    domains: tuple[str, ...]
    problem: str | None  # "no From field", "several From fields", "no address in From"


def header_fields(message: bytes) -> list[tuple[str, str]]:
    """(lowercased name, unfolded value) of each header field, in order."""
    end = _HEADER_END.search(message, 0, _MAX_HEADER_BYTES)
    head = message[: end.start()] if end else message[:_MAX_HEADER_BYTES]
    fields: list[tuple[str, str]] = []
    lines = head.split(b"\n")
    # as re.split(rb"\r?\n"): the one CR before each LF goes with it
    lines[:-1] = [line[:-1] if line[-1:] == b"\r" else line for line in lines[:-1]]
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            last_name, last_value = fields[-1]
            fields[-1] = (last_name, last_value + " " + line.strip().decode("utf-8", "replace"))
            continue
        raw_name, sep, raw_value = line.partition(b":")
        if sep:
            fields.append((raw_name.strip().lower().decode("ascii", "replace"),
                           raw_value.strip().decode("utf-8", "replace")))
    return fields


def from_values(message: bytes) -> list[str]:
    """The unfolded values of the From fields, in order: those of :func:`header_fields`
    named ``from``, read in the same pass but with no other field's value decoded."""
    end = _HEADER_END.search(message, 0, _MAX_HEADER_BYTES)
    head = message[: end.start()] if end else message[:_MAX_HEADER_BYTES]
    values: list[str] = []
    in_field = in_from = False
    # as header_fields: a line starting with a space or tab continues the last field (once
    # there is one); strip() drops the CR before each LF as its split does
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and in_field:
            if in_from:
                values[-1] += " " + line.strip().decode("utf-8", "replace")
            continue
        raw_name, sep, raw_value = line.partition(b":")
        if sep:
            in_field = True
            in_from = raw_name.strip().lower() == b"from"
            if in_from:
                values.append(raw_value.strip().decode("utf-8", "replace"))
    return values


def addresses(value: str) -> list[str]:
    """The addresses of a From value, as ``email.utils.getaddresses([value])`` gives them."""
    if len(value) <= _FAST_MAX:
        match = _COMMON_FROM.fullmatch(value)
        if match is not None:
            return [match.group(1) or match.group(2)]
    return [address for _display, address in getaddresses([value])]


def author_domains(message: bytes) -> AuthorDomains:
    froms = from_values(message)
    if not froms:
        return AuthorDomains((), "no From field")
    if len(froms) > 1:
        return AuthorDomains((), "several From fields")
    value = froms[0]
    # without "=?" there is no encoded-word, and decoding would give the text back unchanged
    if "=?" in value:
        try:
            value = str(make_header(decode_header(value)))
        except (ValueError, LookupError):
            pass  # undecodable encoded-words: parse the raw text
    domains: list[str] = []
    for address in addresses(value):
        local, at, domain = address.rpartition("@")
        domain = domain.strip().rstrip(".").lower()
        if at and local and domain and "." in domain and _DOMAIN.fullmatch(domain):
            if domain not in domains:
                domains.append(domain)
    if not domains:
        return AuthorDomains((), "no address in From")
    return AuthorDomains(tuple(domains), None)
