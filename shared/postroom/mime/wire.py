"""IMAP wire syntax for ENVELOPE, BODY and BODYSTRUCTURE, with safe quoting of any text."""

from __future__ import annotations

import base64

from postroom.mime.model import Address, Envelope, MessageMeta, Part

_QUOTABLE_MAX = 1024


def _quotable(text: str) -> bool:
    return len(text) <= _QUOTABLE_MAX and all(" " <= ch <= "~" for ch in text)


def string(text: str, rfc2047: bool = False) -> bytes:
    """An IMAP string: quoted when plain ASCII, else a literal of UTF-8 (or an RFC 2047 word)."""
    text = text.replace("\x00", "\ufffd")
    if _quotable(text):
        return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'
    if rfc2047 and "\r" not in text and "\n" not in text:
        word = "=?utf-8?b?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="
        if _quotable(word):
            return b'"' + word.encode("ascii") + b'"'
    data = text.encode("utf-8", errors="replace")
    return b"{%d}\r\n" % len(data) + data


def nstring(text: str | None, rfc2047: bool = False) -> bytes:
    """NIL or a string."""
    return b"NIL" if text is None else string(text, rfc2047)


def _address(addr: Address, rfc2047: bool) -> bytes:
    fields = (addr.name, addr.adl, addr.mailbox, addr.host)
    return b"(" + b" ".join(nstring(f, rfc2047) for f in fields) + b")"


def _addresses(addrs: list[Address], rfc2047: bool) -> bytes:
    if not addrs:
        return b"NIL"
    return b"(" + b"".join(_address(a, rfc2047) for a in addrs) + b")"


def envelope_bytes(env: Envelope, rfc2047: bool = False) -> bytes:
    """``(date subject from sender reply-to to cc bcc in-reply-to message-id)``."""
    items = [
        nstring(env.date, rfc2047),
        nstring(env.subject, rfc2047),
        _addresses(env.from_, rfc2047),
        _addresses(env.sender, rfc2047),
        _addresses(env.reply_to, rfc2047),
        _addresses(env.to, rfc2047),
        _addresses(env.cc, rfc2047),
        _addresses(env.bcc, rfc2047),
        nstring(env.in_reply_to, rfc2047),
        nstring(env.message_id, rfc2047),
    ]
    return b"(" + b" ".join(items) + b")"


def render_envelope(meta: MessageMeta | Envelope, rfc2047: bool = False) -> bytes:
    """The ENVELOPE of a message (or of an Envelope) in IMAP syntax."""
    env = meta.envelope if isinstance(meta, MessageMeta) else meta
    return envelope_bytes(env, rfc2047)


def _params(params: list[tuple[str, str]], rfc2047: bool) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(string(k) + b" " + string(v, rfc2047) for k, v in params) + b")"


def _extension(part: Part, rfc2047: bool) -> list[bytes]:
    dsp = b"NIL"
    if part.disposition:
        params = _params(part.disposition_params, rfc2047)
        dsp = b"(" + string(part.disposition) + b" " + params + b")"
    if not part.language:
        lang = b"NIL"
    elif len(part.language) == 1:
        lang = string(part.language[0])
    else:
        lang = b"(" + b" ".join(string(x) for x in part.language) + b")"
    return [dsp, lang, nstring(part.location, rfc2047)]


def part_bytes(part: Part, extended: bool, rfc2047: bool = False) -> bytes:
    """One body part (and its children) as BODY or BODYSTRUCTURE syntax."""
    if part.is_multipart and part.children:
        out = b"".join(part_bytes(c, extended, rfc2047) for c in part.children)
        out += b" " + string(part.subtype or "mixed")
        if extended:
            out += b" " + b" ".join([_params(part.params, rfc2047), *_extension(part, rfc2047)])
        return b"(" + out + b")"
    kind = part.type if not part.is_multipart else "text"
    items = [
        string(kind or "text"),
        string(part.subtype or "plain"),
        _params(part.params, rfc2047),
        nstring(part.id, rfc2047),
        nstring(part.description, rfc2047),
        string(part.encoding or "7bit"),
        b"%d" % part.size,
    ]
    if part.is_message and part.envelope is not None:
        items += [envelope_bytes(part.envelope, rfc2047),
                  part_bytes(part.children[0], extended, rfc2047),
                  b"%d" % part.lines]
    elif kind == "text":
        items.append(b"%d" % part.lines)
    if extended:
        items.append(nstring(part.md5, rfc2047))
        items += _extension(part, rfc2047)
    return b"(" + b" ".join(items) + b")"


def render_bodystructure(meta: MessageMeta, extended: bool = True, rfc2047: bool = False) -> bytes:
    """BODYSTRUCTURE (``extended=True``) or BODY (``extended=False``) of a message."""
    return part_bytes(meta.body, extended, rfc2047)
