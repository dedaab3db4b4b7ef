"""Redis Streams with consumer groups for the `deliver` and `outbound` queues, and retry wake-ups.

Every call here blocks on the network: call it from a consumer's own thread or
a thread pool, never from the reactor thread.

Keys, all under the configured prefix (``postroom:`` by default):

* ``<prefix>deliver`` and ``<prefix>outbound``: the streams, one consumer group
  each (the competing replicas of the service that works that stream).
* ``<prefix>queued:<stream>``: a hash of recipient id -> the id of its latest
  entry, kept with the stream by the enqueue and ack scripts, so the reconciler
  re-enqueues only what Redis lost and never piles duplicates onto a backlog.
* ``<prefix>wake:<stream>``: a sorted set of queue ids scored by when a retry
  falls due. It only wakes workers early; the truth of the next attempt time is
  ``spool_recipients.next_attempt_at`` in PostgreSQL.

Trimming: XADD is never given MAXLEN, because a length (or approximate) trim
drops the oldest entries whether or not a consumer has read or acknowledged
them, which would lose work whenever the queue is backed up. Instead
:meth:`QueueClient.ack` acknowledges and deletes (XACK + XDEL in one MULTI), so
a stream holds exactly the entries not yet done. That is sound because each
stream has one consumer group: a stream is a work queue here, not a log.

Groups are created at id ``0`` (not ``$``) so that entries added before the
group exists (after a FLUSHALL the reconciler may XADD before a consumer
re-creates its group) are still read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis

from postroom.queue.envelope import STREAMS, Envelope, encode

MAX_BLOCK_MS = 5000

# `ZRANGE ... BYSCORE` then `ZREM` of exactly those members, atomically, so two workers
# polling the same set never both take one wake-up
_POP_DUE = """
local items = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
if #items > 0 then redis.call('ZREM', KEYS[1], unpack(items)) end
return items
"""

# XADD the entry and point each of its recipient ids at it in the queued hash;
# ARGV: n, n field/value strings, then the recipient ids
_ENQUEUE = """
local n = tonumber(ARGV[1])
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2, n + 1))
for i = n + 2, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], id) end
return id
"""

# XACK + XDEL one entry, and forget its recipients unless a newer entry took them over;
# ARGV: group, entry id, recipient ids
_ACK = """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[2] then redis.call('HDEL', KEYS[2], ARGV[i]) end
end
return acked
"""

# _ACK for several entries in one call; ARGV: group, then per entry: its id, the number n
# of its recipient ids, and those n ids
_ACK_MANY = """
local acked = 0
local i = 2
while i <= #ARGV do
  local id = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], id)
  redis.call('XDEL', KEYS[1], id)
  for j = i + 2, i + 1 + n do
    if redis.call('HGET', KEYS[2], ARGV[j]) == id then redis.call('HDEL', KEYS[2], ARGV[j]) end
  end
  i = i + 2 + n
end
return acked
"""

Entry = tuple[str, dict[str, str]]


def connect(url: str) -> redis.Redis:
    """A Redis client fit for QueueClient: text replies, timeouts longer than a blocking read."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        # a blocking XREADGROUP waits up to MAX_BLOCK_MS; the socket must wait longer
        socket_timeout=MAX_BLOCK_MS / 1000 + 5,
        health_check_interval=30,
    )


def _max_block_ms(client: redis.Redis) -> int:
    """The longest safe XREADGROUP block: under MAX_BLOCK_MS and the client's socket timeout."""
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    if not timeout:
        return MAX_BLOCK_MS
    # a reply must arrive before the socket gives up, with a second to spare
    return max(100, min(MAX_BLOCK_MS, int(float(timeout) * 1000) - 1000))


def is_missing_group(exc: redis.ResponseError) -> bool:
    """True when Redis lost the stream or group (FLUSHALL, restart without persistence)."""
    text = str(exc)
    # UNBLOCKED: the key was deleted while we were blocked in XREADGROUP
    return text.startswith("NOGROUP") or text.startswith("UNBLOCKED")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _entries(raw: Iterable[Any]) -> list[Entry]:
    result: list[Entry] = []
    for entry_id, fields in raw:
        # fields is None / empty for an entry deleted while pending: the caller drops it
        result.append((_text(entry_id),
                       {_text(k): _text(v) for k, v in (fields or {}).items()}))
    return result


class QueueClient:
    """The queue operations Postroom uses, on one redis-py client and key prefix."""

    def __init__(self, client: redis.Redis, prefix: str = "postroom:") -> None:
        self.redis = client
        self.prefix = prefix
        self._pop_due = client.register_script(_POP_DUE)
        self._enqueue = client.register_script(_ENQUEUE)
        self._ack = client.register_script(_ACK)
        self._ack_many = client.register_script(_ACK_MANY)
        self.max_block_ms = _max_block_ms(client)

    # --- names

    def stream_key(self, stream: str) -> str:
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}")
        return self.prefix + stream

    def queued_key(self, stream: str) -> str:
        return self.prefix + "queued:" + self.stream_key(stream)[len(self.prefix):]

    def wake_key(self, stream: str) -> str:
        return self.prefix + "wake:" + self.stream_key(stream)[len(self.prefix):]

    # --- producing

    def enqueue(self, stream: str, entry: Envelope | Mapping[str, str]) -> str:
        """XADD an entry (an Envelope, or raw fields) and return its stream id.

        For an Envelope, each recipient id is also recorded in the stream's
        ``queued`` hash (atomically, in one script) so the reconciler can tell a
        recipient still waiting in the stream from one Redis lost.
        """
        key = self.stream_key(stream)
        if not isinstance(entry, Envelope):
            return _text(self.redis.xadd(key, dict(entry)))  # type: ignore[arg-type]
        if entry.stream != stream:
            raise ValueError(f"envelope for {entry.stream!r} enqueued on {stream!r}")
        flat = [part for pair in encode(entry).items() for part in pair]
        entry_id = self._enqueue(keys=[key, self.queued_key(stream)],
                                 args=[len(flat), *flat, *entry.recipient_ids])
        return _text(entry_id)

    def enqueue_many(self, entries: Sequence[Envelope]) -> list[str | Exception]:
        """:meth:`enqueue` for several Envelopes in one round trip (a pipeline, not a
        MULTI: each XADD stands alone); each entry's id, or the Redis error it got.

        EVALSHA straight into the pipeline: redis-py's own script support would ask
        SCRIPT EXISTS first, a round trip per pipeline. Entries refused with NOSCRIPT
        (Redis restarted empty) ran nothing and go again once the script is loaded. A
        connection error fails every entry alike (the caller cannot tell which reached
        Redis; the reconciler enqueues any that did not).
        """
        if len(entries) <= 1:
            try:
                return [self.enqueue(e.stream, e) for e in entries]
            except redis.RedisError as error:
                return [error]
        results, _ = self.enqueue_many_with(entries, lambda _pipe: None)
        return results

    def enqueue_many_with(self, entries: Sequence[Envelope],
                          also: Callable[[Any], object]) -> tuple[list[str | Exception],
                                                                   list[Any]]:
        """:meth:`enqueue_many`, with more commands in the same round trip: ``also`` queues
        them on the (non-transactional) pipeline after the XADDs. Each entry's outcome as
        :meth:`enqueue_many` gives it, then each added command's result or error (a
        connection error: every one of them that error). Entries refused with NOSCRIPT go
        again once the script is loaded; the added commands are not sent twice."""
        results, extra = self._pipelined(entries, also)
        again = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
        if again:
            try:
                self.redis.script_load(_ENQUEUE)
            except redis.RedisError as error:
                return [error if i in again else r for i, r in enumerate(results)], extra
            retried, _ = self._pipelined([entries[i] for i in again])
            for i, result in zip(again, retried, strict=True):
                results[i] = result
        return results, extra

    def _pipelined(self, entries: Sequence[Envelope], also: Callable[[Any], object] | None = None
                   ) -> tuple[list[str | Exception], list[Any]]:
        pipe = self.redis.pipeline(transaction=False)
        for entry in entries:
            flat = [part for pair in encode(entry).items() for part in pair]
            pipe.evalsha(self._enqueue.sha, 2, self.stream_key(entry.stream),
                         self.queued_key(entry.stream), len(flat), *flat,
                         *entry.recipient_ids)
        if also is not None:
            also(pipe)
        count = len(pipe)
        try:
            results = pipe.execute(raise_on_error=False)
        except redis.RedisError as error:
            return [error for _ in entries], [error] * (count - len(entries))
        return ([r if isinstance(r, Exception) else _text(r) for r in results[:len(entries)]],
                list(results[len(entries):]))

    def queued(self, stream: str, recipient_ids: Iterable[int]) -> set[int]:
        """Those of ``recipient_ids`` whose latest entry is still in the stream (unacknowledged).

        The reconciler leaves these alone: they wait for a consumer, or for a
        claim if their consumer died. After FLUSHALL none are.
        """
        rids = list(recipient_ids)
        if not rids:
            return set()
        key = self.stream_key(stream)
        entry_ids = self.redis.hmget(self.queued_key(stream), [str(r) for r in rids])
        known = [(rid, _text(eid)) for rid, eid in zip(rids, entry_ids, strict=True) if eid]
        if not known:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for _rid, eid in known:
            pipe.xrange(key, eid, eid, count=1)
        found = pipe.execute()
        return {rid for (rid, _eid), hit in zip(known, found, strict=True) if hit}

    def ping(self) -> bool:
        """True when Redis answers; front doors check it before accepting mail (451 if not)."""
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    # --- consuming

    def ensure_group(self, stream: str, group: str) -> bool:
        """Create the stream's consumer group (and the stream) unless it exists; True if created."""
        try:
            self.redis.xgroup_create(self.stream_key(stream), group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if str(exc).startswith("BUSYGROUP"):
                return False
            raise
        return True

    def read(self, stream: str, group: str, consumer: str, count: int,
             block_ms: int = MAX_BLOCK_MS) -> list[Entry]:
        """New entries for this consumer (XREADGROUP ``>``), waiting up to ``block_ms``.

        If Redis lost the group (FLUSHALL, restart) it is re-created and the
        result is empty; the caller simply reads again.
        """
        block_ms = max(0, min(int(block_ms), self.max_block_ms))
        try:
            # block=None would mean "do not block"; 0 would mean "forever": keep it bounded
            reply = self.redis.xreadgroup(group, consumer, {self.stream_key(stream): ">"},
                                          count=max(1, count), block=block_ms or None)
        except redis.ResponseError as exc:
            if not is_missing_group(exc):
                raise
            self.ensure_group(stream, group)
            return []
        if not reply:
            return []
        if isinstance(reply, dict):
            # RESP3 (protocol=3) replies {key: [entries]}
            return [e for raw in reply.values() for e in _entries(raw[0] if raw else [])]
        # RESP2: [[key, entries]]
        return [e for _key, raw in reply for e in _entries(raw)]

    def ack(self, stream: str, group: str, ids: Iterable[str],
            recipient_ids: Iterable[int] = ()) -> int:
        """Acknowledge and delete entries (see the module docstring); the number acknowledged.

        ``recipient_ids`` (of a single entry) are removed from the ``queued``
        hash where it still points at that entry.
        """
        ids = list(ids)
        rids = list(recipient_ids)
        if not ids:
            return 0
        if rids and len(ids) != 1:
            raise ValueError("recipient_ids go with exactly one entry id")
        key = self.stream_key(stream)
        if rids:
            return int(self._ack(keys=[key, self.queued_key(stream)],
                                 args=[group, ids[0], *rids]))
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(key, group, *ids)
        pipe.xdel(key, *ids)
        acked, _deleted = pipe.execute()
        return int(acked)

    def ack_entries(self, stream: str, group: str,
                    entries: Iterable[tuple[str, Iterable[int]]]) -> int:
        """:meth:`ack` of several entries, each with its recipient ids, in one round trip.

        Atomic like :meth:`ack` (one script); the number acknowledged.
        """
        args: list[Any] = [group]
        for entry_id, recipient_ids in entries:
            rids = list(recipient_ids)
            args += [entry_id, len(rids), *rids]
        if len(args) == 1:
            return 0
        key = self.stream_key(stream)
        return int(self._ack_many(keys=[key, self.queued_key(stream)], args=args))

    def claim_stale(self, stream: str, group: str, consumer: str, min_idle_ms: int,
                    count: int) -> list[Entry]:
        """Take over up to ``count`` entries idle ``min_idle_ms`` in any consumer (XAUTOCLAIM).

        Entries deleted while pending are dropped from the pending list by Redis
        and not returned.
        """
        key = self.stream_key(stream)
        claimed: list[Entry] = []
        start = "0-0"
        try:
            while len(claimed) < count:
                reply = self.redis.xautoclaim(key, group, consumer, min_idle_time=int(min_idle_ms),
                                              start_id=start, count=count - len(claimed))
                start = _text(reply[0])
                claimed.extend(e for e in _entries(reply[1]) if e[1])
                if start == "0-0":
                    break
        except redis.ResponseError as exc:
            if not is_missing_group(exc):
                raise
            self.ensure_group(stream, group)
        return claimed

    def touch(self, stream: str, group: str, consumer: str, ids: Iterable[str | bytes]) -> int:
        """Reset the idle time of entries this consumer is still working on; how many it holds.

        A handler that runs longer than the claim threshold (a slow remote MX)
        would otherwise have its entry claimed and worked twice at once.
        """
        wanted: list[str | bytes] = list(ids)
        if not wanted:
            return 0
        try:
            # JUSTID: no payload back and the delivery counter is left alone
            held = self.redis.xclaim(self.stream_key(stream), group, consumer, min_idle_time=0,
                                     message_ids=wanted,  # type: ignore[arg-type]
                                     justid=True)
        except redis.ResponseError as exc:
            if not is_missing_group(exc):
                raise
            return 0
        return len(held)

    def pending_count(self, stream: str, group: str) -> int:
        """Entries delivered to some consumer of the group and not yet acknowledged."""
        try:
            summary = self.redis.xpending(self.stream_key(stream), group)
        except redis.ResponseError as exc:
            if is_missing_group(exc):
                return 0
            raise
        return int(summary["pending"] if isinstance(summary, dict) else summary[0])

    def length(self, stream: str) -> int:
        """Entries in the stream (pending or unread; acknowledged ones are deleted)."""
        return int(self.redis.xlen(self.stream_key(stream)))

    def prune_consumers(self, stream: str, group: str, idle_ms: int) -> list[str]:
        """Forget consumers (dead processes) idle for ``idle_ms`` with nothing pending."""
        key = self.stream_key(stream)
        try:
            consumers = self.redis.xinfo_consumers(key, group)
        except redis.ResponseError as exc:
            if is_missing_group(exc):
                return []
            raise
        removed = []
        for info in consumers:
            name = _text(info["name"])
            if int(info["pending"]) == 0 and int(info["idle"]) >= idle_ms:
                # a live consumer removed by mistake is re-created by its next XREADGROUP;
                # with nothing pending nothing can be lost
                self.redis.xgroup_delconsumer(key, group, name)
                removed.append(name)
        return removed

    # --- retry wake-ups

    def wake_at(self, stream: str, member: str, when: float) -> None:
        """Ask for a wake-up for ``member`` (a queue id) at ``when`` (Unix time); earliest wins."""
        # LT: a second, later request never postpones an earlier one
        self.redis.zadd(self.wake_key(stream), {member: float(when)}, lt=True)

    def due_wakeups(self, stream: str, now: float | None = None, limit: int = 100) -> list[str]:
        """Remove and return up to ``limit`` members whose wake-up time is at or before ``now``."""
        now = time.time() if now is None else now
        items = self._pop_due(keys=[self.wake_key(stream)], args=[repr(float(now)), int(limit)])
        return [_text(item) for item in items or []]

    def next_wakeup(self, stream: str) -> float | None:
        """The earliest wake-up time in the set, or None when it is empty."""
        first = self.redis.zrange(self.wake_key(stream), 0, 0, withscores=True)
        return float(first[0][1]) if first else None
