"""The stream entry that tells a worker which spooled recipients to work on: pure encode/decode.

An entry only names work; the message, its recipients and their state are in
PostgreSQL. Decoding is strict because anything may be written to a Redis
stream: a malformed entry raises :class:`BadEnvelope` so the consumer can log
it and acknowledge it away instead of crashing (the recipients it meant, if
any, are still pending in the spool and the reconciler enqueues them again).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

VERSION = "1"
STREAMS = ("deliver", "outbound")
# the spool message's disposition: where the mda files it (Junk on DMARC quarantine)
DISPOSITIONS = ("inbox", "junk")

# the field names, kept short: every entry carries them
F_VERSION = "v"
F_QUEUE_ID = "queue_id"
F_RECIPIENTS = "rcpt"
F_STREAM = "stream"
F_DISPOSITION = "disposition"
F_ATTEMPT = "attempt"
_FIELDS = frozenset((F_VERSION, F_QUEUE_ID, F_RECIPIENTS, F_STREAM, F_DISPOSITION, F_ATTEMPT))

MAX_FIELDS = 32
MAX_RECIPIENTS = 10_000
MAX_ATTEMPT = 1_000_000
# queue ids are ours (made at the first hop), so a narrow grammar costs nothing and keeps
# anything strange out of log lines
_QUEUE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DIGITS = re.compile(r"[0-9]{1,19}")


class BadEnvelope(ValueError):
    """A stream entry that is not a valid envelope; the message says what is wrong."""


@dataclass(frozen=True)
class Envelope:
    """Work for one spooled message: some of its recipients, on one stream."""

    queue_id: str
    recipient_ids: tuple[int, ...]
    stream: str
    disposition: str = "inbox"
    attempt: int = 0

    def __post_init__(self) -> None:
        _validate(self)


def _validate(env: Envelope) -> None:
    if not isinstance(env.queue_id, str) or not _QUEUE_ID.fullmatch(env.queue_id):
        raise BadEnvelope("queue_id is not a valid queue id")
    if not env.recipient_ids:
        raise BadEnvelope("no recipient ids")
    if len(env.recipient_ids) > MAX_RECIPIENTS:
        raise BadEnvelope("too many recipient ids")
    if len(set(env.recipient_ids)) != len(env.recipient_ids):
        raise BadEnvelope("duplicate recipient ids")
    for rid in env.recipient_ids:
        if not isinstance(rid, int) or isinstance(rid, bool) or not 0 < rid < 2**63:
            raise BadEnvelope("recipient ids must be positive 64-bit integers")
    if env.stream not in STREAMS:
        raise BadEnvelope("unknown stream")
    if env.disposition not in DISPOSITIONS:
        raise BadEnvelope("unknown disposition")
    if not isinstance(env.attempt, int) or isinstance(env.attempt, bool) \
            or not 0 <= env.attempt <= MAX_ATTEMPT:
        raise BadEnvelope("attempt out of range")


def encode(env: Envelope) -> dict[str, str]:
    """The XADD field map of an envelope."""
    return {
        F_VERSION: VERSION,
        F_QUEUE_ID: env.queue_id,
        F_RECIPIENTS: ",".join(str(rid) for rid in env.recipient_ids),
        F_STREAM: env.stream,
        F_DISPOSITION: env.disposition,
        F_ATTEMPT: str(env.attempt),
    }


def _text(value: object, name: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            raise BadEnvelope(f"{name} is not ASCII") from None
    if isinstance(value, str):
        return value
    raise BadEnvelope(f"{name} is missing")


def _int(raw: str, name: str) -> int:
    if not _DIGITS.fullmatch(raw):
        raise BadEnvelope(f"{name} is not a decimal number")
    return int(raw)


def decode(fields: Mapping[str, str] | Mapping[bytes, bytes] | None) -> Envelope:
    """An envelope from a stream entry's fields (str or bytes), or raise BadEnvelope."""
    if not fields:
        # XREADGROUP returns no fields for an entry deleted while it was pending
        raise BadEnvelope("entry has no fields")
    if len(fields) > MAX_FIELDS:
        raise BadEnvelope("too many fields")
    values: dict[str, str] = {}
    for key, value in fields.items():
        name = _text(key, "field name")
        # unknown fields are ignored so a newer producer may add optional ones mid-upgrade
        if name in _FIELDS:
            values[name] = _text(value, name)
    missing = _FIELDS - values.keys()
    if missing:
        raise BadEnvelope(f"missing field {sorted(missing)[0]}")
    if values[F_VERSION] != VERSION:
        raise BadEnvelope("unsupported envelope version")
    rcpt = values[F_RECIPIENTS]
    if len(rcpt) > MAX_RECIPIENTS * 20:
        raise BadEnvelope("too many recipient ids")
    return Envelope(
        queue_id=values[F_QUEUE_ID],
        recipient_ids=tuple(_int(part, "recipient id") for part in rcpt.split(",")),
        stream=values[F_STREAM],
        disposition=values[F_DISPOSITION],
        attempt=_int(values[F_ATTEMPT], "attempt"),
    )
