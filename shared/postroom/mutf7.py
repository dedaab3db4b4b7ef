"""Modified UTF-7 mailbox names (RFC 3501 section 5.1.3).

One codec for both places the form appears: IMAP's wire (the imap service
decodes what clients send and encodes what it lists) and Maildir++ folder
names, which Dovecot and Courier write in the same form (``.Entw&APw-rfe``),
read by the importers and written by the export. The store keeps Unicode.
"""

from __future__ import annotations

import base64
import binascii


class MailboxNameError(ValueError):
    """A mailbox name that is not valid modified UTF-7."""


def _b64(chunk: str) -> str:
    data = chunk.encode("utf-16-be")
    return base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",")


def encode_mutf7(name: str) -> str:
    """Encode a Unicode mailbox name for the wire."""
    out: list[str] = []
    pending: list[str] = []
    for ch in name:
        if " " <= ch <= "~":
            if pending:
                out.append("&" + _b64("".join(pending)) + "-")
                pending = []
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    if pending:
        out.append("&" + _b64("".join(pending)) + "-")
    return "".join(out)


def decode_mutf7(name: str) -> str:
    """Decode a wire mailbox name; raises MailboxNameError when it is not valid."""
    out: list[str] = []
    pos = 0
    while pos < len(name):
        ch = name[pos]
        if ch != "&":
            if not " " <= ch <= "~":
                raise MailboxNameError("8-bit or control character in mailbox name")
            out.append(ch)
            pos += 1
            continue
        end = name.find("-", pos + 1)
        if end < 0:
            raise MailboxNameError("unterminated &-sequence")
        chunk = name[pos + 1 : end]
        pos = end + 1
        if not chunk:
            out.append("&")
            continue
        if len(chunk) % 4 == 1:
            raise MailboxNameError("bad base64 length")
        try:
            padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
            data = base64.b64decode(padded, validate=True)
            text = data.decode("utf-16-be")
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise MailboxNameError("bad &-sequence") from exc
        if not text or any(" " <= c <= "~" for c in text):
            # RFC 3501: printable ASCII must not be encoded
            raise MailboxNameError("non-canonical &-sequence")
        out.append(text)
    return "".join(out)
