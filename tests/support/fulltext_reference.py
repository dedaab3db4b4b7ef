"""The searchable text extraction as it was before issue 23's speed-ups: the reference.

tests/unit/test_mime_same_output.py checks that postroom.mime.fulltext stores
exactly what this did (the same text, the same words) over every message file
of the test suite and generated hostile MIME. Not used by the product; do not
"improve" it.
"""
from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message
from html.parser import HTMLParser

#: default bound on the indexed text of one message (POSTROOM_FTS_MAX_BYTES)
DEFAULT_MAX_BYTES = 1 << 20
#: parts looked at in one message (a hostile message may have many thousands)
MAX_PARTS = 500
#: a longer run of letters is no word a person searches for (PostgreSQL drops >2047)
MAX_WORD = 100

_WORD = re.compile(r"[^\W_]+")
_SKIP_TAGS = frozenset({"script", "style", "head", "title"})


@dataclass(frozen=True)
class MessageText:
    """Lowercased, space-normalised text: header fields, and body (parts and file names)."""

    head: str
    body: str
    #: some text was left out (``max_bytes`` or :data:`MAX_PARTS` reached)
    truncated: bool = False


def normalise(text: str) -> str:
    """Lowercase, with each run of white space made one space (the form stored and searched)."""
    return " ".join(text.replace("\x00", " ").lower().split())


def words(text: str) -> list[str]:
    """The distinct words (runs of letters and digits) of normalised ``text``, in order."""
    return list(dict.fromkeys(w for w in _WORD.findall(text) if len(w) <= MAX_WORD))


class _Collector:
    """Chunks of text up to a byte budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.chunks: list[str] = []
        self.truncated = False

    def add(self, text: str) -> None:
        if not text or self.budget <= 0:
            self.truncated = self.truncated or bool(text)
            return
        # "replace": lone surrogates (undecodable header bytes) become "?", never reach SQL
        data = text.encode("utf-8", "replace")
        if len(data) > self.budget:
            self.truncated = True
        self.chunks.append(normalise(data[:self.budget].decode("utf-8", "ignore")))
        self.budget -= len(data)

    def text(self) -> str:
        return " ".join(c for c in self.chunks if c)


class _HTMLText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif tag == "img":
            self.parts.extend(v for k, v in attrs if k == "alt" and v)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_text(html: str) -> str:
    """The text a reader sees of ``html`` (tags, script and style dropped)."""
    parser = _HTMLText()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):  # a malformed declaration: keep what was read
        pass
    return " ".join(parser.parts)


def _decoded_header(value: object) -> str:
    raw = str(value)
    try:
        return str(make_header(decode_header(raw)))
    except (ValueError, LookupError, UnicodeError, TypeError):
        return raw


def _header_text(message: Message) -> str:
    return " ".join(f"{name}: {_decoded_header(value)}" for name, value in message.items())


def _part_text(part: Message, limit: int) -> tuple[str, bool]:
    """The decoded text of a text part from at most ``limit`` of its bytes; and whether cut."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return "", False
    # bounded before the charset codec and the HTML parser see it (a 35 MB part is legal)
    cut = len(payload) > limit
    payload = payload[:limit]
    charset = part.get_content_charset() or "us-ascii"
    try:
        text = payload.decode(charset, "replace")
    except LookupError:  # an unknown charset: what is ASCII of it still reads
        text = payload.decode("utf-8", "replace")
    if part.get_content_subtype() == "html":
        text = html_text(text)
    return text, cut


def _filename(part: Message) -> str:
    try:
        name = part.get_filename()
    except (ValueError, LookupError, UnicodeError, TypeError):
        return ""
    return _decoded_header(name) if name else ""


def extract_text(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> MessageText:
    """The searchable text of message ``data`` (see the module docstring)."""
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    head = _Collector(max_bytes)
    head.add(_header_text(message))
    body = _Collector(max_bytes)
    stack: list[Message] = [message]
    seen = 0
    while stack:
        part = stack.pop()
        seen += 1
        if seen > MAX_PARTS:
            body.truncated = True
            break
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list):
                for sub in inner:
                    if isinstance(sub, Message):
                        body.add(_header_text(sub))  # an attached message's header fields
                        stack.append(sub)
            continue
        if part.is_multipart():
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend(reversed([c for c in children if isinstance(c, Message)]))
            continue
        name = _filename(part)
        if name:
            body.add(name)
        if part.get_content_maintype() == "text":  # text attachments too, as raw bytes were
            if body.budget <= 0:
                body.truncated = True
                continue
            # HTML is mostly markup: read up to 4x the text budget left
            text, cut = _part_text(part, 4 * body.budget)
            body.add(text)
            body.truncated = body.truncated or cut
    return MessageText(head=head.text(), body=body.text(),
                       truncated=head.truncated or body.truncated)


#: what a message whose MIME cannot be read is indexed as: nothing, searched by its raw bytes
UNREADABLE = MessageText(head="", body="", truncated=True)


def text_or_unreadable(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> MessageText:
    """:func:`extract_text`, or :data:`UNREADABLE` when hostile MIME breaks the parser."""
    try:
        return extract_text(data, max_bytes)
    except Exception:
        return UNREADABLE
