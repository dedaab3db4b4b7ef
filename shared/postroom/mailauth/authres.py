"""Authentication-Results (RFC 8601): build ours, and strip forged ones that claim our authserv-id.

The MTA calls :func:`strip_forged` on every inbound message before it
prepends the header the dmarc service built: RFC 8601 section 5 requires
removing any Authentication-Results field that claims our authserv-id but
came from outside, or a sender could forge "dkim=pass" in our name.
Property values come from the sender (MAIL FROM, From:, HELO), so
:func:`pvalue` quotes them and drops control characters: a CR or LF there
would let a sender inject header fields.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

# RFC 2045 token: printable ASCII except SPACE and tspecials
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_ADDRESS = re.compile(rf"^(?:{_DOT_ATOM})?@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FIELD_NAME = b"authentication-results"


def pvalue(value: str) -> str:
    """A property value as RFC 8601 allows it: a token, an address, or a quoted-string."""
    value = _CONTROL.sub("", value)
    if value and (_TOKEN.match(value) or _ADDRESS.match(value)):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def comment(text: str) -> str:
    """A CFWS comment with parentheses and controls neutralised."""
    cleaned = _CONTROL.sub("", text).replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"({cleaned})"


def resinfo(method: str, result: str, properties: Sequence[tuple[str, str]] = (),
            note: str | None = None) -> str:
    """One ``method=result (note) ptype.property=value ...`` clause."""
    parts = [f"{method}={result}"]
    if note:
        parts.append(comment(note))
    parts += [f"{name}={pvalue(value)}" for name, value in properties if value]
    return " ".join(parts)


def header_value(authserv_id: str, clauses: Sequence[str]) -> str:
    """The field value: the authserv-id, then each clause on its own folded line."""
    if not clauses:
        return f"{authserv_id}; none"
    return authserv_id + ";" + ";".join(f"\r\n\t{c}" for c in clauses)


def header_field(authserv_id: str, clauses: Sequence[str]) -> bytes:
    """The whole field, CRLF-terminated, ready to prepend to a message."""
    return f"Authentication-Results: {header_value(authserv_id, clauses)}\r\n".encode()


def _skip_cfws(text: bytes, pos: int) -> int:
    depth = 0
    while pos < len(text):
        char = text[pos:pos + 1]
        if depth:
            if char == b"\\":
                pos += 1
            elif char == b"(":
                depth += 1
            elif char == b")":
                depth -= 1
        elif char == b"(":
            depth = 1
        elif char not in (b" ", b"\t", b"\r", b"\n"):
            return pos
        pos += 1
    return pos


def authserv_id_of(value: bytes) -> str:
    """The authserv-id an Authentication-Results field value claims (lowercased)."""
    pos = _skip_cfws(value, 0)
    if value[pos:pos + 1] == b'"':
        end = value.find(b'"', pos + 1)
        ident = value[pos + 1:end if end != -1 else len(value)]
    else:
        match = re.match(rb"[^\s;()]*", value[pos:])
        ident = match.group(0) if match else b""
    return ident.decode("ascii", "replace").strip().lower()


def _drop_fields(message: bytes, drop: Callable[[bytes, Callable[[], bytes]], bool]) -> bytes:
    """``message`` without the header fields ``drop(name, value)`` picks, continuations too.

    ``name`` is the field name in lower case; ``value()`` gives its whole value
    (unfolded lines joined), computed only when asked. The body is never touched.
    """
    lines = message.splitlines(keepends=True)
    out: list[bytes] = []
    dropping = False
    for index, line in enumerate(lines):
        if line in (b"\r\n", b"\n"):
            out.extend(lines[index:])  # the body is never touched
            return b"".join(out)
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        name, sep, rest = line.partition(b":")

        def value(index: int = index, rest: bytes = rest) -> bytes:
            whole = rest
            for follow in lines[index + 1:]:
                if follow[:1] not in (b" ", b"\t"):
                    break
                whole += follow
            return whole

        dropping = bool(sep) and drop(name.strip().lower(), value)
        if not dropping:
            out.append(line)
    return b"".join(out)


def strip_forged(message: bytes, authserv_id: str) -> bytes:
    """``message`` without the Authentication-Results fields that claim ``authserv_id``."""
    ours = authserv_id.strip().lower()
    return _drop_fields(message, lambda name, value: name == _FIELD_NAME
                        and authserv_id_of(value()) == ours)


def strip_fields(message: bytes, names: frozenset[bytes]) -> bytes:
    """``message`` without the header fields named in ``names`` (lower case), continuations too.

    Used for fields we add ourselves (X-Spamd-Result, X-Spam-Status...): a
    sender's own copy must not pass for ours.
    """
    if not names:
        return message
    return _drop_fields(message, lambda name, _value: name in names)
