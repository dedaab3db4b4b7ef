"""The POP3 wire format as pure functions of bytes: commands, dot-stuffing, TOP, SASL PLAIN."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

CRLF = b"\r\n"
TERMINATOR = b".\r\n"
# RFC 2449 section 4: a command line is at most 255 octets (we count without the CRLF)
MAX_COMMAND_LENGTH = 255
# a SASL continuation carries base64 of user, authzid and password; allow long passwords
MAX_SASL_LINE_LENGTH = 2048
# message numbers are at most this many digits (the drop never holds 10**10 messages)
_MAX_NUMBER_DIGITS = 10

_KEYWORD = re.compile(rb"^[A-Za-z][A-Za-z0-9]{2,3}$")
_NUMBER = re.compile(rb"^[0-9]+$")
_BARE_NEWLINE = re.compile(rb"\r\n|\r|\n")


class CommandSyntaxError(ValueError):
    """The line is not ``KEYWORD [args]``; the message is safe to show the client."""


@dataclass(frozen=True)
class Command:
    """One parsed command line: the upper-case keyword and the raw argument text."""

    keyword: str
    argument: bytes

    def words(self) -> list[bytes]:
        return self.argument.split()


def parse_command(line: bytes) -> Command:
    """Split a command line (without CRLF) into keyword and argument (RFC 1939 section 3)."""
    keyword, _, argument = line.partition(b" ")
    if not _KEYWORD.match(keyword):
        raise CommandSyntaxError("unknown command")
    return Command(keyword.decode("ascii").upper(), argument)


def parse_number(text: bytes) -> int | None:
    """A message number or count: decimal digits only, or None (no sign, no spaces)."""
    if not _NUMBER.match(text) or len(text.lstrip(b"0")) > _MAX_NUMBER_DIGITS:
        return None
    return int(text)


def to_crlf(data: bytes) -> bytes:
    """``data`` with every line ending (CRLF, bare CR, bare LF) made CRLF."""
    return _BARE_NEWLINE.sub(CRLF, data)


class DotStuffer:
    """Dot-stuffs a CRLF message fed in chunks of any size (RFC 1939 section 3).

    A ``.`` is doubled when it starts a line, wherever the chunk boundaries
    fall: whether the next chunk starts a line is carried over, so a line that
    begins exactly at a chunk boundary is stuffed like any other.
    """

    def __init__(self) -> None:
        self._at_line_start = True

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        out = chunk.replace(b"\n.", b"\n..")
        if self._at_line_start and chunk.startswith(b"."):
            out = b"." + out
        self._at_line_start = chunk.endswith(b"\n")
        return out

    def finish(self) -> bytes:
        """The end of the multi-line response: a CRLF if the message lacked one, then ``.``."""
        if not self._at_line_start:
            return CRLF + TERMINATOR
        return TERMINATOR


def dot_stuff(data: bytes) -> bytes:
    """The whole multi-line body of ``data`` (CRLF lines), terminator included."""
    stuffer = DotStuffer()
    return stuffer.feed(data) + stuffer.finish()


def top(message: bytes, lines: int) -> bytes:
    """The header, the blank line and the first ``lines`` body lines of a CRLF message."""
    if message.startswith(CRLF):
        header_end = 0
    else:
        found = message.find(b"\r\n\r\n")
        if found < 0:
            return message  # no body at all: the header is everything there is
        header_end = found + 2
    body_start = header_end + 2
    position = body_start
    for _ in range(lines):
        found = message.find(CRLF, position)
        if found < 0:
            return message
        position = found + 2
    return message[:position]


class SaslError(ValueError):
    """A SASL response the server refuses; the message is safe to show the client."""


def decode_sasl_plain(response: bytes) -> tuple[str, str, str]:
    """(authzid, authcid, password) from a base64 PLAIN response (RFC 4616).

    ``=`` is an empty response (RFC 5034 section 4). Malformed base64, a wrong
    number of NUL-separated fields, an empty user or invalid UTF-8 raise SaslError.
    """
    text = response.strip()
    if text == b"=":
        raw = b""
    else:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise SaslError("invalid base64 in SASL response") from None
    parts = raw.split(b"\0")
    if len(parts) != 3:
        raise SaslError("malformed PLAIN response")
    try:
        authzid, authcid, password = (part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        raise SaslError("PLAIN response is not UTF-8") from None
    if not authcid or not password:
        raise SaslError("malformed PLAIN response")
    return authzid, authcid, password
