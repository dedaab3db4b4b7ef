"""The RFC5322.From author domains of a message, with the malformed cases named.

RFC 7489 section 6.6.1 leaves messages without exactly one From field to
local policy. Ours (documented in docs/dmarc-api.md): no From field,
several From fields, or a From field without any address domain is
``malformed`` and, by default, rejected (RFC 5322 section 3.6 requires
exactly one From); one From field with several addresses is evaluated for
every distinct domain and the strictest outcome applies (RFC 7489 6.6.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.utils import getaddresses

_MAX_HEADER_BYTES = 256 * 1024
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_DOMAIN = re.compile(r"[^\s@<>()\[\]]+")


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


def author_domains(message: bytes) -> AuthorDomains:
    froms = [value for name, value in header_fields(message) if name == "from"]
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
    for _display, address in getaddresses([value]):
        local, at, domain = address.rpartition("@")
        domain = domain.strip().rstrip(".").lower()
        if at and local and domain and "." in domain and _DOMAIN.fullmatch(domain):
            if domain not in domains:
                domains.append(domain)
    if not domains:
        return AuthorDomains((), "no address in From")
    return AuthorDomains(tuple(domains), None)
