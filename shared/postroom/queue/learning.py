"""The ``learn`` stream: spam/ham learning requests from IMAP to the rspamd learn worker.

The imap service XADDs one entry per message a user moves or copies into
Junk (``spam``) or out of Junk into another folder but Trash (``ham``), after
the store transaction committed and off the command's path (the redis
thread pool): the IMAP command never waits for it. The dmarc service's learn
worker (postroom_dmarc.content.learning) reads the stream in the consumer
group ``learners``, submits each message to rspamd's controller and
acknowledges (XACK + XDEL) once rspamd answered (learned, or already learned:
learning is idempotent); a failed submission is put back with its attempt
count raised, and dropped (logged) past the limit.

Durability: like the other streams, an entry survives restarts of its
consumers (pending entries are claimed again). Unlike `deliver`, nothing in
PostgreSQL re-creates a lost entry: if Redis is down at the move, or loses
its data, that learning request is lost (logged and counted); the message
itself is untouched. Learning is a hint to the classifier, never mail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import redis

STREAM = "learn"
GROUP = "learners"
CLASSES = ("spam", "ham")
JUNK = "Junk"
TRASH = "Trash"
_DIGITS = re.compile(r"[0-9]{1,19}")
MAX_ATTEMPT = 1000


class BadLearnRequest(ValueError):
    """A stream entry that is not a learning request."""


@dataclass(frozen=True)
class LearnRequest:
    """Teach rspamd that the user's message ``message_id`` is ``klass``."""

    user_id: int
    message_id: int
    klass: str
    attempt: int = 0

    def __post_init__(self) -> None:
        if self.klass not in CLASSES:
            raise BadLearnRequest("klass must be spam or ham")
        if self.user_id <= 0 or self.message_id <= 0 or not 0 <= self.attempt <= MAX_ATTEMPT:
            raise BadLearnRequest("ids must be positive and attempt in range")


def learn_class(source: str, dest: str) -> str | None:
    """What moving or copying from ``source`` to ``dest`` teaches: spam, ham or nothing."""
    def junk(name: str) -> bool:
        return name.lower() == JUNK.lower()

    if junk(dest) and not junk(source):
        return "spam"
    if junk(source) and not junk(dest) and dest.lower() != TRASH.lower():
        return "ham"
    return None


def encode(request: LearnRequest) -> dict[str, str]:
    return {"u": str(request.user_id), "m": str(request.message_id), "c": request.klass,
            "a": str(request.attempt)}


def decode(fields: dict[str, str]) -> LearnRequest:
    """The request in a stream entry; BadLearnRequest for anything else."""
    if set(fields) != {"u", "m", "c", "a"}:
        raise BadLearnRequest("unexpected fields")
    if not all(_DIGITS.fullmatch(fields[k]) for k in ("u", "m", "a")):
        raise BadLearnRequest("ids must be decimal")
    return LearnRequest(int(fields["u"]), int(fields["m"]), fields["c"], int(fields["a"]))


def stream_key(prefix: str) -> str:
    return prefix + STREAM


def enqueue(client: redis.Redis, prefix: str, requests: list[LearnRequest]) -> list[str]:
    """XADD each request (blocking; raises redis errors); their entry ids."""
    if not requests:
        return []
    pipe = client.pipeline(transaction=False)
    for request in requests:
        pipe.xadd(stream_key(prefix), encode(request))  # type: ignore[arg-type]
    return [_text(i) for i in pipe.execute()]


def ensure_group(client: redis.Redis, prefix: str) -> None:
    try:
        client.xgroup_create(stream_key(prefix), GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if not str(exc).startswith("BUSYGROUP"):
            raise


def read(client: redis.Redis, prefix: str, consumer: str, count: int, block_ms: int,
         claim_idle_ms: int) -> list[tuple[str, dict[str, str]]]:
    """Entries another consumer left idle ``claim_idle_ms`` (XAUTOCLAIM), else new ones."""
    key = stream_key(prefix)
    try:
        claimed: Any = client.xautoclaim(key, GROUP, consumer, min_idle_time=claim_idle_ms,
                                    start_id="0-0", count=count)
        entries = [(_text(i), _fields(f)) for i, f in claimed[1] if f]
        if entries:
            return entries
        reply: Any = client.xreadgroup(GROUP, consumer, {key: ">"}, count=count,
                                       block=block_ms or None)
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        ensure_group(client, prefix)
        return []
    out: list[tuple[str, dict[str, str]]] = []
    if isinstance(reply, dict):  # RESP3: {key: [entries]}
        batches = [raw[0] if raw else [] for raw in reply.values()]
    else:  # RESP2: [[key, entries]]
        batches = [raw for _key, raw in reply or []]
    for raw in batches:
        out.extend((_text(i), _fields(f)) for i, f in raw if f)
    return out


def ack(client: redis.Redis, prefix: str, entry_id: str) -> None:
    """XACK + XDEL: done with the entry (it held no other state)."""
    pipe = client.pipeline(transaction=True)
    pipe.xack(stream_key(prefix), GROUP, entry_id)
    pipe.xdel(stream_key(prefix), entry_id)
    pipe.execute()


def retry(client: redis.Redis, prefix: str, entry_id: str, request: LearnRequest) -> str:
    """Put the request back with its attempt raised and finish the old entry, atomically."""
    again = LearnRequest(request.user_id, request.message_id, request.klass,
                         request.attempt + 1)
    pipe = client.pipeline(transaction=True)
    pipe.xadd(stream_key(prefix), encode(again))  # type: ignore[arg-type]
    pipe.xack(stream_key(prefix), GROUP, entry_id)
    pipe.xdel(stream_key(prefix), entry_id)
    return _text(pipe.execute()[0])


def length(client: redis.Redis, prefix: str) -> int:
    return int(client.xlen(stream_key(prefix)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: Any) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in dict(raw).items()}
