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

Durability, as for `deliver` (DESIGN, durability): PostgreSQL is the truth.
The COPY/MOVE's transaction records each request in ``learn_requests``
(postroom.store.learning); the entry here only signals it. The worker deletes
the row once rspamd answered and skips an entry whose row is gone (done
already); every reconcile interval it re-signals rows left pending longer
than its grace period (:func:`resignal_batch`), so Redis down at the move, or
losing its data, only delays learning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy.orm import Session

from postroom.store import learning as stored

STREAM = "learn"
GROUP = "learners"
CLASSES = ("spam", "ham")
_DIGITS = re.compile(r"[0-9]{1,19}")
MAX_ATTEMPT = 1000


class BadLearnRequest(ValueError):
    """A stream entry that is not a learning request."""


@dataclass(frozen=True)
class LearnRequest:
    """Teach rspamd that the user's message ``message_id`` is ``klass``.

    ``tracked``: the request has a row in ``learn_requests`` (written with the
    COPY/MOVE, or re-signalled from it); the worker skips it when the row is
    gone (done already) and deletes the row when done. Entries of a release
    before 0012 are untracked and learnt as they come.
    """

    user_id: int
    message_id: int
    klass: str
    attempt: int = 0
    tracked: bool = False

    def __post_init__(self) -> None:
        if self.klass not in CLASSES:
            raise BadLearnRequest("klass must be spam or ham")
        if self.user_id <= 0 or self.message_id <= 0 or not 0 <= self.attempt <= MAX_ATTEMPT:
            raise BadLearnRequest("ids must be positive and attempt in range")


def encode(request: LearnRequest) -> dict[str, str]:
    fields = {"u": str(request.user_id), "m": str(request.message_id), "c": request.klass,
              "a": str(request.attempt)}
    if request.tracked:
        fields["t"] = "1"
    return fields


def decode(fields: dict[str, str]) -> LearnRequest:
    """The request in a stream entry; BadLearnRequest for anything else."""
    if set(fields) - {"t"} != {"u", "m", "c", "a"} or fields.get("t", "1") != "1":
        raise BadLearnRequest("unexpected fields")
    if not all(_DIGITS.fullmatch(fields[k]) for k in ("u", "m", "a")):
        raise BadLearnRequest("ids must be decimal")
    return LearnRequest(int(fields["u"]), int(fields["m"]), fields["c"], int(fields["a"]),
                        tracked="t" in fields)


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
                         request.attempt + 1, request.tracked)
    pipe = client.pipeline(transaction=True)
    pipe.xadd(stream_key(prefix), encode(again))  # type: ignore[arg-type]
    pipe.xack(stream_key(prefix), GROUP, entry_id)
    pipe.xdel(stream_key(prefix), entry_id)
    return _text(pipe.execute()[0])


def resignal_batch(session: Session, client: redis.Redis, prefix: str, now: datetime,
                   stale_before: datetime, limit: int) -> int:
    """Re-signal requests pending since before ``stale_before``, inside the caller's
    transaction (a `db` thread: PostgreSQL and Redis); how many. A failed XADD raises,
    the transaction rolls back, and nothing is marked."""
    rows = stored.due(session, now, stale_before, limit)
    enqueue(client, prefix, [LearnRequest(r.user_id, r.message_id, r.klass,
                                          min(r.attempts, MAX_ATTEMPT), tracked=True)
                             for r in rows])
    return len(rows)


def length(client: redis.Redis, prefix: str) -> int:
    return int(client.xlen(stream_key(prefix)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: Any) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in dict(raw).items()}
