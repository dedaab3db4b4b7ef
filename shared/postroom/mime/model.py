"""Plain-data results of MIME analysis: limits, envelope, body parts, message metadata."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

# Bump when the stored shape changes, so readers can re-analyze old rows.
META_VERSION = 1


@dataclass(frozen=True)
class Limits:
    """Bounds that keep analysis linear and the stored metadata small."""

    max_depth: int = 20
    max_parts: int = 1000
    max_headers: int = 1000
    max_header_bytes: int = 256 * 1024
    max_value_chars: int = 16 * 1024


@dataclass
class Address:
    """One RFC 3501 address: (name adl mailbox host); groups use NIL host markers."""

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None


@dataclass
class Envelope:
    """The RFC 3501 ENVELOPE fields, raw (undecoded) header text."""

    date: str | None = None
    subject: str | None = None
    from_: list[Address] = field(default_factory=list)
    sender: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    bcc: list[Address] = field(default_factory=list)
    in_reply_to: str | None = None
    message_id: str | None = None


@dataclass
class Part:
    """One body part with byte offsets into the raw message.

    ``header_start <= body_start <= end``; the header slice includes its
    terminating blank line. A multipart has ``children``; a message/rfc822
    part has exactly one child, the encapsulated message's root part, and
    ``envelope`` for it.
    """

    type: str
    subtype: str
    params: list[tuple[str, str]]
    header_start: int
    body_start: int
    end: int
    lines: int
    id: str | None = None
    description: str | None = None
    encoding: str = "7bit"
    md5: str | None = None
    disposition: str | None = None
    disposition_params: list[tuple[str, str]] = field(default_factory=list)
    language: list[str] = field(default_factory=list)
    location: str | None = None
    children: list[Part] = field(default_factory=list)
    envelope: Envelope | None = None

    @property
    def size(self) -> int:
        """Body size in octets, as IMAP reports it."""
        return self.end - self.body_start

    @property
    def is_multipart(self) -> bool:
        return self.type == "multipart"

    @property
    def is_message(self) -> bool:
        return self.type == "message" and self.subtype == "rfc822" and len(self.children) == 1


@dataclass
class HeaderField:
    """A header field kept for SEARCH: lower-cased name, raw and decoded value."""

    name: str
    raw: str
    decoded: str


@dataclass
class MessageMeta:
    """Everything IMAP needs about a message, computed once at delivery."""

    size: int
    lines: int
    envelope: Envelope
    body: Part
    headers: list[HeaderField] = field(default_factory=list)
    sort: dict[str, Any] = field(default_factory=dict)
    degraded: bool = False
    defects: list[str] = field(default_factory=list)
    version: int = META_VERSION

    def header_values(self, name: str, decoded: bool = True) -> list[str]:
        """Values of the kept header field ``name`` (case-insensitive)."""
        key = name.lower()
        return [h.decoded if decoded else h.raw for h in self.headers if h.name == key]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able plain data (store it as JSONB); the same value as ``dataclasses.asdict``.

        Hand-written because it runs once per delivered message: ``asdict``'s
        generic walk (with a deepcopy of every leaf) was half of the mda's
        metadata cost. Leaves here are str/int/bool/None, which need no copy.
        """
        return _plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MessageMeta:
        """Rebuild from ``to_dict`` output (e.g. loaded from JSONB)."""
        return cls(
            size=data["size"],
            lines=data["lines"],
            envelope=_envelope(data["envelope"]),
            body=_part(data["body"]),
            headers=[HeaderField(**h) for h in data.get("headers", [])],
            sort=dict(data.get("sort", {})),
            degraded=bool(data.get("degraded", False)),
            defects=list(data.get("defects", [])),
            version=int(data.get("version", META_VERSION)),
        )


_FIELDS: dict[type, tuple[str, ...]] = {}


def _plain(value: Any) -> Any:
    """``dataclasses.asdict`` for this module's shapes: dataclasses, lists, tuples, dicts."""
    kind = type(value)
    if kind in (str, int, bool, float) or value is None:
        return value
    if kind is list:
        return [_plain(v) for v in value]
    if kind is tuple:
        return tuple(_plain(v) for v in value)
    if kind is dict:
        return {_plain(k): _plain(v) for k, v in value.items()}
    names = _FIELDS.get(kind)
    if names is None:
        if not is_dataclass(value):
            return _leaf(value)
        names = _FIELDS[kind] = tuple(f.name for f in fields(value))
    return {name: _plain(getattr(value, name)) for name in names}


def _leaf(value: Any) -> Any:
    """Anything else is copied as ``asdict`` copies it."""
    return copy.deepcopy(value)


def _addresses(items: list[dict[str, Any]]) -> list[Address]:
    return [Address(**a) for a in items]


def _envelope(data: dict[str, Any]) -> Envelope:
    return Envelope(
        date=data.get("date"),
        subject=data.get("subject"),
        from_=_addresses(data.get("from_", [])),
        sender=_addresses(data.get("sender", [])),
        reply_to=_addresses(data.get("reply_to", [])),
        to=_addresses(data.get("to", [])),
        cc=_addresses(data.get("cc", [])),
        bcc=_addresses(data.get("bcc", [])),
        in_reply_to=data.get("in_reply_to"),
        message_id=data.get("message_id"),
    )


def _pairs(items: list[Any]) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in items]


def _part(data: dict[str, Any]) -> Part:
    env = data.get("envelope")
    return Part(
        type=data["type"],
        subtype=data["subtype"],
        params=_pairs(data.get("params", [])),
        header_start=data["header_start"],
        body_start=data["body_start"],
        end=data["end"],
        lines=data["lines"],
        id=data.get("id"),
        description=data.get("description"),
        encoding=data.get("encoding", "7bit"),
        md5=data.get("md5"),
        disposition=data.get("disposition"),
        disposition_params=_pairs(data.get("disposition_params", [])),
        language=list(data.get("language", [])),
        location=data.get("location"),
        children=[_part(c) for c in data.get("children", [])],
        envelope=_envelope(env) if env is not None else None,
    )
