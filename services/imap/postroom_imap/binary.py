"""BINARY (RFC 3516): a part's body with its Content-Transfer-Encoding undone."""

from __future__ import annotations

import binascii

from postroom.mime import MessageMeta
from postroom.mime.sections import find_part
from postroom_imap.policy import Refusal

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_JUNK = bytes(b for b in range(256) if b not in _B64_ALPHABET)
_IDENTITY = ("", "7bit", "8bit", "binary")


class UnknownCte(Refusal):
    """RFC 3516 4.3: the server cannot decode the part's transfer encoding."""

    code = "UNKNOWN-CTE"
    text = "cannot decode this part's Content-Transfer-Encoding"


def decode_base64(data: bytes) -> bytes:
    """Base64 as mail writers send it: line breaks and stray characters ignored, padding lax.

    A linear pass with no regex (the body is the peer's); what follows a ``=``
    pad is ignored, and a dangling sixth bit group is dropped.
    """
    pad = data.find(b"=")
    if pad >= 0:
        data = data[:pad]
    clean = data.translate(None, _B64_JUNK)
    clean = clean[: len(clean) - len(clean) % 4 if len(clean) % 4 == 1 else len(clean)]
    clean += b"=" * (-len(clean) % 4)
    return binascii.a2b_base64(clean)


def decode_cte(data: bytes, encoding: str) -> bytes:
    """``data`` decoded from ``encoding``; UnknownCte for what is not defined by RFC 2045."""
    name = encoding.strip().lower()
    if name in _IDENTITY:
        return data
    if name == "base64":
        return decode_base64(data)
    if name == "quoted-printable":
        return binascii.a2b_qp(data)
    raise UnknownCte()


def binary_section(blob: bytes, meta: MessageMeta | None, path: tuple[int, ...]) -> bytes:
    """BINARY[path]: the whole message for ``()``, else the part's body decoded.

    A section that does not exist is empty (as BODY[] answers); a multipart or
    message part is sent as it is (only leaf parts carry an encoding to undo).
    """
    if not path:
        return blob
    assert meta is not None
    part = find_part(meta, path)
    if part is None:
        return b""
    body = blob[part.body_start:part.end]
    if part.is_multipart or part.is_message:
        return body
    return decode_cte(body, part.encoding)
