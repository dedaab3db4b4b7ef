"""Queue ids: short, unique, time-sortable (Crockford base32 of milliseconds + randomness)."""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TIME_CHARS = 10  # 50 bits of milliseconds: good until the year 37648
_RANDOM_CHARS = 6  # 30 random bits: a collision needs ~32k ids in one millisecond
QUEUE_ID_LENGTH = _TIME_CHARS + _RANDOM_CHARS


def _b32(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_queue_id(now: float | None = None) -> str:
    """A 16-character id such as ``01JDX3K9QZ7M2F4H``; later ids sort after earlier ones."""
    millis = int((time.time() if now is None else now) * 1000)
    return _b32(millis, _TIME_CHARS) + _b32(secrets.randbits(5 * _RANDOM_CHARS), _RANDOM_CHARS)


def is_queue_id(text: str) -> bool:
    """True when ``text`` has the shape of a queue id (for CLI and log lookups)."""
    return len(text) == QUEUE_ID_LENGTH and all(c in _ALPHABET for c in text)
