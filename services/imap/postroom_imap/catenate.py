"""CATENATE (RFC 4469): IMAP URLs of this user's messages, and the message they assemble."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from postroom.mime import filter_header_fields, section_range
from postroom_imap.policy import FetchRow, Refusal
from postroom_imap.render import metadata
from postroom_imap.spool import SpooledLiteral
from postroom_imap.syntax_fetch import parse_section
from postroom_imap.syntax_lexer import SyntaxProblem
from postroom_imap.syntax_types import CatText, CatUrl, Section

MAX_URL = 2048


class BadUrl(Refusal):
    """RFC 4469 5: a URL that does not name a message (or part) this user can read."""

    code = "BADURL"
    text = "URL does not name a message here"

    def __init__(self, url: str) -> None:
        super().__init__(self.text)
        # url-resp-text is the bare URL, any TEXT-CHAR but "]" (RFC 4469 section 5 and its
        # verified erratum 4046: not quoted); the peer's other bytes are left out
        shown = "".join(c for c in url[:200] if " " <= c <= "~" and c != "]") or "/"
        self.code = f"BADURL {shown}"


class CatTooBig(Refusal):
    code = "TOOBIG"
    text = "the assembled message is too large"


@dataclass(frozen=True)
class MessageUrl:
    """``/mailbox;UIDVALIDITY=n/;UID=n/;SECTION=s`` (RFC 5092, the forms RFC 4469 uses)."""

    mailbox: str
    uidvalidity: int | None
    uid: int
    section: Section | None


def _number(text: str) -> int:
    if not text.isdigit() or len(text) > 10 or int(text) == 0:
        raise ValueError(text)
    return int(text)


def parse_url(url: str) -> MessageUrl:
    """A path-absolute IMAP URL of a message; ValueError for anything else.

    Absolute ``imap://`` URLs (another server, URLAUTH) and ``;PARTIAL=`` are
    not taken. Linear string operations only: the URL is the peer's.
    """
    if len(url) > MAX_URL or not url.startswith("/"):
        raise ValueError("not a path-absolute IMAP URL")
    lower = url.lower()
    at = lower.find("/;uid=")
    if at < 0:
        raise ValueError("no UID")
    box, rest = url[1:at], url[at + len("/;uid="):]
    uidvalidity = None
    marker = box.lower().find(";uidvalidity=")
    if marker >= 0:
        uidvalidity = _number(box[marker + len(";uidvalidity="):])
        box = box[:marker]
    if not box:
        raise ValueError("no mailbox")
    section = None
    uid_text, sep, tail = rest.partition("/")
    if sep:
        if not tail.lower().startswith(";section="):
            raise ValueError("unsupported URL part")
        spec = unquote(tail[len(";section="):], errors="strict")
        try:
            section = parse_section(spec, binary=False)
        except SyntaxProblem as exc:
            raise ValueError(str(exc)) from None
    return MessageUrl(unquote(box, errors="strict"), uidvalidity, _number(uid_text), section)


def section_bytes(row: FetchRow, section: Section | None) -> bytes:
    """What BODY.PEEK[section] of ``row`` holds (the whole message without a section)."""
    blob = row.blob or b""
    if section is None or (not section.path and not section.text):
        return blob
    text = section.text.split(".")[0] if section.text.startswith("HEADER") else section.text
    span = section_range(metadata(row), section.path, text)
    if span is None:
        return b""
    data = blob[span[0]:span[1]]
    if section.text.startswith("HEADER.FIELDS"):
        data = filter_header_fields(data, section.fields,
                                    exclude=section.text == "HEADER.FIELDS.NOT")
    return data


# (mailbox name, uidvalidity or None, uid) -> the stored row with blob and analysis, or None
Lookup = Callable[[str, int | None, int], FetchRow | None]


def assemble(parts: Sequence[CatText | CatUrl], lookup: Lookup, max_size: int) -> bytes:
    """The message the parts make; BadUrl or CatTooBig (before holding more than max_size)."""
    out = bytearray()
    for part in parts:
        if isinstance(part, CatText):
            data = part.data.read() if isinstance(part.data, SpooledLiteral) else part.data
        else:
            try:
                url = parse_url(part.url)
            except (ValueError, UnicodeDecodeError):
                raise BadUrl(part.url) from None
            row = lookup(url.mailbox, url.uidvalidity, url.uid)
            if row is None:
                raise BadUrl(part.url)
            data = section_bytes(row, url.section)
        if len(out) + len(data) > max_size:
            raise CatTooBig()
        out += data
    return bytes(out)
