"""Pure parsers of the outbound SMTP client: server replies, EHLO keywords, message traits.

Nothing here does I/O; every function is a function of bytes or strings, so it
can be tested (and fuzzed) alone. The wire-level :class:`ReplyParser` is fed one
line at a time by the protocol and raises :class:`MalformedReply` for anything
that is not an RFC 5321 section 4.2 reply, which the protocol turns into a
temporary failure of the attempt (never a crash).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from postroom.smtp.replies import Reply

# A reply of more lines than this is hostile or broken (a real EHLO has ~20).
MAX_REPLY_LINES = 128

_CODE_RE = re.compile(rb"[2-5][0-5][0-9]")
# RFC 3463: class.subject.detail; the class must repeat the reply's first digit.
_ENHANCED_RE = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: +|$)")
_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
# Control characters in reply text would end up in logs and DSNs; they carry nothing.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_HEADER_END_RE = re.compile(rb"\n\r?\n")


class MalformedReply(ValueError):
    """A server line that is not part of a well-formed SMTP reply."""


class ReplyParser:
    """Assembles lines (without their line ending) into :class:`Reply` objects."""

    def __init__(self, max_lines: int = MAX_REPLY_LINES) -> None:
        self.max_lines = max_lines
        self._code: int | None = None
        self._texts: list[str] = []

    @property
    def pending(self) -> bool:
        """True in the middle of a multi-line reply."""
        return self._code is not None

    def reset(self) -> None:
        self._code = None
        self._texts = []

    def feed(self, line: bytes) -> Reply | None:
        """Take one line; return the Reply it completes, or None while a multi-line one goes on."""
        if not _CODE_RE.match(line) or (len(line) > 3 and line[3:4] not in (b" ", b"-")):
            self.reset()
            raise MalformedReply(f"not a reply line: {line[:60]!r}")
        code = int(line[:3])
        if self._code is not None and code != self._code:
            self.reset()
            raise MalformedReply("reply code changed inside a multi-line reply")
        self._code = code
        self._texts.append(_CONTROL_RE.sub("", line[4:].decode("utf-8", "replace")))
        if len(self._texts) > self.max_lines:
            self.reset()
            raise MalformedReply("reply has too many lines")
        if line[3:4] == b"-":
            return None
        texts, self._texts, self._code = self._texts, [], None
        return make_reply(code, texts)


def make_reply(code: int, texts: list[str]) -> Reply:
    """A Reply with the enhanced status code (RFC 2034) taken off each line when present."""
    match = _ENHANCED_RE.match(texts[0]) if texts else None
    if match is None or int(match.group(1)) != code // 100:
        return Reply(code, None, tuple(texts))
    enhanced = ".".join(match.groups())
    prefix = re.compile(re.escape(enhanced) + r"(?: +|$)")
    return Reply(code, enhanced, tuple(prefix.sub("", text, count=1) for text in texts))


def describe(reply: Reply) -> str:
    """The reply as one line for results, logs and DSNs: ``550 5.1.1 No such user``."""
    text = " ".join(part for part in reply.lines if part)
    return " ".join(part for part in (str(reply.code), reply.enhanced, text) if part)


@dataclass(frozen=True)
class Extensions:
    """What a server's EHLO reply offers: keyword (upper case) -> its parameters."""

    greeting: str = ""
    keywords: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def has(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    @property
    def size_limit(self) -> int | None:
        """The SIZE limit in octets; None when SIZE is absent, has no limit (0) or is garbage."""
        params = self.keywords.get("SIZE")
        if not params or not params[0].isdigit():
            return None
        return int(params[0]) or None


def parse_ehlo(reply: Reply) -> Extensions:
    """RFC 5321 section 4.1.1.1: the first line greets, each further line is keyword [params].

    Lines that are not a valid ehlo-keyword (e.g. the old ``AUTH=LOGIN`` form) are skipped.
    """
    lines = reply.lines
    keywords: dict[str, tuple[str, ...]] = {}
    for line in lines[1:]:
        words = line.split()
        if words and _KEYWORD_RE.fullmatch(words[0]):
            keywords[words[0].upper()] = tuple(words[1:])
    return Extensions(greeting=lines[0] if lines else "", keywords=keywords)


@dataclass(frozen=True)
class MessageTraits:
    """What the client must know about a message before MAIL FROM."""

    size: int
    eight_bit: bool
    utf8_headers: bool


def scan_message(chunks: Iterable[bytes]) -> MessageTraits:
    """Size, any octet above 127, and non-ASCII in the header section (RFC 6532 headers)."""
    size = 0
    eight_bit = utf8_headers = False
    in_headers = True
    tail = b""
    for chunk in chunks:
        if in_headers:
            if size == 0 and chunk[:1] in (b"\n", b"\r") and chunk.lstrip(b"\r")[:1] == b"\n":
                in_headers = False  # the message starts with the blank line: no headers
            else:
                window = tail + chunk
                end = _HEADER_END_RE.search(window)
                head = window if end is None else window[:end.start()]
                utf8_headers = utf8_headers or not head.isascii()
                in_headers = end is None
                tail = window[-2:]
        eight_bit = eight_bit or not chunk.isascii()
        size += len(chunk)
    return MessageTraits(size=size, eight_bit=eight_bit, utf8_headers=utf8_headers)


def valid_path_address(address: str) -> bool:
    """True when ``address`` can go inside ``<...>`` without breaking the command line.

    This is a guard against command injection (CR, LF, NUL, angle brackets,
    whitespace outside quotes), not a full RFC 5321 grammar: the receiving
    server judges the rest and answers per recipient.
    """
    if len(address) > 512 or any(ch in address for ch in "<>\r\n\x00"):
        return False
    if _CONTROL_RE.search(address) or "\t" in address:
        return False
    if " " in address and not address.startswith('"'):
        return False
    return address == "" or "@" in address or address.lower() == "postmaster"


def encode_xtext(text: str) -> str:
    """RFC 3461 section 4 xtext for ASCII text (ENVID, ORCPT)."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in text)


def encode_utf8_addr_xtext(text: str) -> str:
    """RFC 6533 section 3: utf-8-addr-xtext, non-ASCII and specials as ``\\x{HEX}``."""
    return "".join(
        c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in text)
