"""Queue depth and oldest-entry age per stream, refreshed periodically off the reactor thread.

Each stream holds exactly the entries not yet done (``ack`` deletes), so its
XLEN is the depth and its first entry's id (milliseconds since the epoch, as
Redis makes it) tells the age of the oldest waiting work. Every replica of a
consumer reports the same values; dashboards take ``max by (queue)``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from postroom.interfaces import ReactorThreads, defer_to_pool, twisted_clock
from postroom.logs import get_logger
from postroom.metrics import Metrics, errors_total, queue_depth, queue_oldest_seconds
from postroom.queue.streams import QueueClient

# about a Prometheus scrape interval: fresher values would not be seen
DEFAULT_INTERVAL = 15.0

log = get_logger("queue")


def entry_time(entry_id: str) -> float | None:
    """Unix time at which Redis added the entry ``<ms>-<seq>``; None for a foreign id."""
    try:
        return int(entry_id.partition("-")[0]) / 1000.0
    except ValueError:
        return None


def measure(queue: QueueClient, stream: str, now: float | None = None) -> tuple[int, float]:
    """(depth, age of the oldest entry in seconds) of one stream. Blocks on Redis."""
    key = queue.stream_key(stream)
    pipe = queue.redis.pipeline(transaction=False)
    pipe.xlen(key)
    pipe.xrange(key, "-", "+", count=1)
    depth, first = pipe.execute()
    age = 0.0
    if first:
        raw = first[0][0]
        added = entry_time(raw.decode() if isinstance(raw, bytes) else str(raw))
        if added is not None:
            age = max(0.0, (time.time() if now is None else now) - added)
    return int(depth), age


def depths(queue: QueueClient, streams: Sequence[str]) -> list[tuple[str, int, float]]:
    """(stream, depth, oldest entry's age in seconds) of each stream. Blocks on Redis."""
    return [(stream, *measure(queue, stream)) for stream in streams]


class QueueGauges:
    """Keeps ``postroom_queue_depth`` and ``postroom_queue_oldest_seconds`` current."""

    def __init__(self, queue: QueueClient, metrics: Metrics, streams: Sequence[str], *,
                 pool: ThreadPool, reactor: ReactorThreads,
                 interval: float = DEFAULT_INTERVAL) -> None:
        for stream in streams:
            queue.stream_key(stream)  # unknown names fail here, not in the loop
        self.queue = queue
        self.streams = tuple(streams)
        self.pool = pool
        self.reactor = reactor
        self.interval = interval
        self._depth = queue_depth(metrics)
        self._oldest = queue_oldest_seconds(metrics)
        self._errors = errors_total(metrics)
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = twisted_clock(reactor)
        self._loop_done: Deferred[Any] | None = None

    def start(self) -> None:
        """Refresh now and then every ``interval`` seconds until :meth:`stop`."""
        self._loop_done = self._loop.start(self.interval, now=True)

    def stop(self) -> Deferred[Any] | None:
        if self._loop.running:
            self._loop.stop()
        return self._loop_done

    def refresh(self) -> Deferred[None]:
        """Measure every stream in the pool thread, then set the gauges; never fails."""
        d = defer_to_pool(self.reactor, self.pool, self._measure_all)
        return d.addCallbacks(self._set, self._failed)

    def _measure_all(self) -> list[tuple[str, int, float]]:
        now = time.time()
        return [(stream, *measure(self.queue, stream, now)) for stream in self.streams]

    def _set(self, values: list[tuple[str, int, float]]) -> None:
        for stream, depth, age in values:
            self._depth.labels(queue=stream).set(depth)
            self._oldest.labels(queue=stream).set(age)

    def _failed(self, failure: Failure) -> None:
        # stale gauges are better than a dead loop; the next tick tries again
        self._errors.labels(kind="queue_gauges").inc()
        level = log.warning if failure.check(redis.RedisError) else log.error
        level("queue gauges not refreshed", error=failure.getErrorMessage(),
              error_type=getattr(failure.type, "__name__", None))
