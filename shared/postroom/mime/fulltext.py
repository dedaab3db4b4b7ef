"""The searchable text of a message: what SEARCH BODY and TEXT match (postroom.store.fts).

Pure: bytes in, text out. Text parts are decoded from base64 or
quoted-printable and from their charset; HTML is reduced to its text with the
standard library's parser (script and style dropped); attachments contribute
their file names; an attached message contributes its header fields and its
parts. Header fields are RFC 2047 decoded. Text is lowercased and every run of
white space is one space, so a needle matches across line breaks and markup.

Bounded: at most ``max_bytes`` (UTF-8) of body text and of header text, at
most :data:`MAX_PARTS` parts; non-text parts are never decoded. The words
for the index are the runs of letters and digits (:func:`words`), the same
rule for the text and for a needle, so the index and the needle cannot
disagree on where a word starts.
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
    """The distinct words (runs of letters and digits) of normalised ``text``, in order.

    Fast: a word never spans white space, so the distinct space-separated tokens
    (in order of first use) hold every word's first use in the same order; the
    regular expression then runs over those only, and the length bound is checked
    once per distinct word, not once per occurrence.
    """
    tokens = dict.fromkeys(text.split())
    found = dict.fromkeys(_WORD.findall(" ".join(tokens)))
    return [w for w in found if len(w) <= MAX_WORD]


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
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            # "replace": lone surrogates (undecodable header bytes) become "?", never reach SQL
            data = text.encode("utf-8", "replace")
            text = data.decode("utf-8")
        if len(data) > self.budget:
            self.truncated = True
            text = data[:self.budget].decode("utf-8", "ignore")
        self.chunks.append(normalise(text))
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
    if "=?" not in raw:  # no encoded word: decode_header gives ``raw`` back unchanged
        return raw
    try:
        return str(make_header(decode_header(raw)))
    except (ValueError, LookupError, UnicodeError, TypeError):
        return raw


def _header_text(message: Message) -> str:
    return " ".join(f"{name}: {_decoded_header(value)}" for name, value in message.items())


def _part_text(part: Message, limit: int, subtype: str) -> tuple[str, bool]:
    """The decoded text of a text part from at most ``limit`` of its bytes; and whether cut.

    ``subtype``: the part's content subtype (``get_content_subtype``), found once by the caller.
    """
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
    if subtype == "html":
        text = html_text(text)
    return text, cut


def _filename(part: Message) -> str:
    try:
        name = part.get_filename()
    except (ValueError, LookupError, UnicodeError, TypeError):
        return ""
    return _decoded_header(name) if name else ""


_FIELD_NAME = re.compile(r"[\041-\071\073-\176]+:")


def _single_part(data: bytes) -> Message | None:
    """The Message ``email.message_from_bytes(data, policy=compat32)`` gives, built without
    the feed parser, for a message of one part whose header is plain; None for any other.

    Plain: ASCII, every line a field (``name:``, ``name`` of the characters the feed
    parser allows) or a continuation of one, CR only in CRLF, no ``From `` line, the
    header ended by an empty line or by the end of the data; and a type that is neither
    multipart nor message, so the parser would have kept the body as it is. The fields
    are then what the parser's ``header_source_parse`` makes of those lines, the
    payload the rest of the data (issue 23: the feed parser was half of APPEND's text
    extraction; tests/unit/test_mime_same_output.py compares both ways).
    """
    text = data.decode("ascii", "surrogateescape")
    size = len(text)
    fields: list[list[str]] = []
    pos = 0
    while pos < size:
        nl = text.find("\n", pos)
        end = size if nl < 0 else nl + 1
        line = text[pos:end]
        pos = end
        if line == "\r\n" or line == "\n":
            break  # the separator: the parser drops it
        if line.count("\r") != (1 if line.endswith("\r\n") else 0):
            return None
        if line[0] in " \t":
            if not fields:
                return None
            fields[-1].append(line)
        elif line.startswith("From ") or _FIELD_NAME.match(line) is None:
            return None
        else:
            fields.append([line])
    if not text.isascii() and not text[:pos].isascii():
        return None
    message = Message(policy=email.policy.compat32)
    for lines in fields:
        message.set_raw(*email.policy.compat32.header_source_parse(lines))
    if message.get_content_maintype() in ("multipart", "message"):
        return None
    message.set_payload(text[pos:])
    return message


def extract_text(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> MessageText:
    """The searchable text of message ``data`` (see the module docstring)."""
    message = _single_part(data)
    if message is None:
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
        # the type once (each get_content_* call scans the header fields again)
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
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
        maintype, _, subtype = ctype.partition("/")
        if maintype == "text":  # text attachments too, as raw bytes were
            if body.budget <= 0:
                body.truncated = True
                continue
            # HTML is mostly markup: read up to 4x the text budget left
            text, cut = _part_text(part, 4 * body.budget, subtype)
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
    except Exception:  # noqa: BLE001 -- mail is never refused or held back for its text
        return UNREADABLE
