"""What the store keeps of a message's metadata: the one JSON form of ``MessageMeta`` for jsonb.

Every writer of ``messages.meta`` (the mda, IMAP APPEND, the importer) stores
what this module produces, so a reader never meets two shapes of it.
:func:`metadata_json` is the text form (for statements that send JSON text),
:func:`metadata_dict` the same value as plain data (for the ORM's JSONB
column); ``json.loads(metadata_json(m)) == metadata_dict(m)``.

PostgreSQL's jsonb refuses NUL characters and lone surrogates, which a
message's headers may carry: :func:`jsonb_safe` replaces them and keeps
everything else.
"""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from typing import Any

from postroom.mime.model import MessageMeta


def jsonb_safe(value: Any) -> Any:
    """PostgreSQL jsonb refuses NUL and lone surrogates: replace them, keep everything else."""
    if isinstance(value, str):
        if "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value):
            value = value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
        return value
    if isinstance(value, dict):
        return {str(jsonb_safe(k)): jsonb_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonb_safe(v) for v in value]
    return value


def metadata_dict(meta: MessageMeta) -> dict[str, Any]:
    """The stored metadata as plain data (``to_dict``, made safe for jsonb)."""
    safe: dict[str, Any] = jsonb_safe(meta.to_dict())
    return safe


def metadata_json(meta: MessageMeta) -> str:
    """The stored metadata as JSON text; raises ValueError when it cannot be written.

    Fast: the C encoder writes the lists, strings and numbers itself and asks
    :func:`_dataclass_as_dict` only for the dataclasses, so no dict tree is
    built first (this runs once per delivered message, on the mda's hot path).
    Only mail that carries what jsonb refuses takes the slow, safe walk.
    """
    text = _ENCODER.encode(meta)
    if "\\u0000" in text or not _is_utf8(text):
        text = json.dumps(metadata_dict(meta), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":"))
    return text


_DATACLASS_FIELDS: dict[type, tuple[str, ...]] = {}


def _dataclass_as_dict(value: Any) -> dict[str, Any]:
    """One level of ``MessageMeta.to_dict`` for the JSON encoder (its ``default`` hook).

    The text is the same as ``json.dumps(meta.to_dict())`` without first
    building the whole dict tree in Python.
    """
    names = _DATACLASS_FIELDS.get(type(value))
    if names is None:
        if not is_dataclass(value) or isinstance(value, type):
            to_dict = getattr(value, "to_dict", None)
            if to_dict is not None:
                # not one of the model's dataclasses, but it can say itself as plain data
                return dict(to_dict())
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
        names = _DATACLASS_FIELDS[type(value)] = tuple(f.name for f in fields(value))
    return {name: getattr(value, name) for name in names}


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                            default=_dataclass_as_dict)


def _is_utf8(text: str) -> bool:
    """False when ``text`` holds a lone surrogate (one C-speed pass, no per-character loop)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
