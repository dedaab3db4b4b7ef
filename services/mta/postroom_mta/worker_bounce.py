"""The bounce sweeper: makes the DSN for recipients failed elsewhere (the mda) or left failed.

The relay commits a failure and its DSN together, so what this finds is
mostly the mda's permanent failures (no such user, quota grace over, expiry
on the `deliver` stream), whose bounce the relay owes. It runs every
``interval`` seconds; ``worker_store.spool_failure_dsn`` locks with SKIP
LOCKED, so several mta replicas may sweep at once without doubling a DSN.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from postroom.interfaces import ReactorThreads, global_reactor, twisted_clock
from postroom.logs import Logger, get_logger
from postroom.queue.reconciler import enqueue_after_commit
from postroom.queue.streams import QueueClient
from postroom.store.db import Database
from postroom_mta.worker_store import Policy, failed_queue_ids, spool_failure_dsn

BATCH = 100


class BounceSweeper:
    """Periodically turns committed ``failed`` recipients into DSNs."""

    def __init__(self, database: Database, queue: QueueClient, policy: Policy, *, interval: float,
                 redis_pool: ThreadPool, reactor: ReactorThreads | None = None,
                 log: Logger | None = None) -> None:
        if reactor is None:
            reactor = global_reactor()
        self.database = database
        self.queue = queue
        self.policy = policy
        self.interval = interval
        self.redis_pool = redis_pool
        self.reactor = reactor
        self.log = log or get_logger("relay")
        self._loop: LoopingCall | None = None
        self._running = False
        self._watchers: list[Deferred[None]] = []

    def start(self) -> None:
        """Sweep now and then every ``interval``."""
        self._loop = LoopingCall(self._tick)
        self._loop.clock = twisted_clock(self.reactor)
        self._loop.start(self.interval, now=True)

    def stop(self) -> Deferred[Any]:
        """Stop the loop; fires when a sweep in progress has finished."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if not self._running:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._watchers.append(done)
        return done

    def _tick(self) -> Deferred[Any]:
        if self._running:
            return succeed(None)
        self._running = True

        def over(result: Any) -> None:
            self._running = False
            watchers, self._watchers = self._watchers, []
            for watcher in watchers:
                watcher.callback(None)
            if isinstance(result, Failure):
                # database away: the next tick tries again
                self.log.warning("bounce sweep failed", error=result.getErrorMessage())

        return Deferred.fromCoroutine(self.sweep()).addBoth(over)

    async def sweep(self) -> int:
        """One pass over messages with failed recipients; how many DSNs were queued."""
        made = 0
        queue_ids: list[str] = await self.database.run(failed_queue_ids, BATCH)
        for queue_id in queue_ids:
            envelope = await self.database.run(spool_failure_dsn, queue_id,
                                               datetime.now(UTC), self.policy)
            if envelope is not None:
                made += 1
                await enqueue_after_commit(self.queue, self.redis_pool, envelope,
                                           reactor=self.reactor)
        return made
