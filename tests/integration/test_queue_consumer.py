"""StreamConsumer against a real Redis and a real reactor: at-least-once, never crashing."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import deferLater

from postroom import logs
from postroom.queue.consumer import QueueEntry, StreamConsumer, consumer_name
from postroom.queue.envelope import Envelope
from postroom.queue.streams import QueueClient, connect
from tests.support.redisdb import PrivateRedis, in_reactor, wait_until

GROUP = "mda"


@pytest.fixture
def log_lines(monkeypatch) -> Callable[[], str]:
    """Point the process's log sink at a buffer; returns a function reading it."""
    stream = io.StringIO()
    monkeypatch.setattr(logs._sink, "stream", stream)
    return stream.getvalue


class Recorder:
    """A handler that records what it saw; its outcome per call is chosen by the test."""

    def __init__(self, outcome: Callable[[QueueEntry], Any] | None = None) -> None:
        self.seen: list[QueueEntry] = []
        self.lock = threading.Lock()
        self.outcome = outcome or (lambda entry: succeed(None))

    def __call__(self, entry: QueueEntry) -> Any:
        with self.lock:
            self.seen.append(entry)
        return self.outcome(entry)

    def queue_ids(self) -> list[str]:
        with self.lock:
            return [e.queue_id for e in self.seen]


@pytest.fixture
def make_consumer(twisted_reactor, queue_client: QueueClient) -> Iterator[Callable[..., Any]]:
    """Build and start consumers (fast timings); every one is stopped after the test."""
    made: list[StreamConsumer] = []

    def make(handler: Any, queue: QueueClient | None = None, **kwargs: Any) -> StreamConsumer:
        options = {"claim_idle": 0.3, "block_ms": 100, "grace": 2.0, **kwargs}
        consumer = StreamConsumer(queue or queue_client, "deliver", GROUP, handler,
                                  reactor=twisted_reactor, **options)
        made.append(consumer)
        in_reactor(consumer.start)
        return consumer

    yield make
    for consumer in made:
        in_reactor(consumer.stop, timeout=15)


def env(queue_id: str, *rids: int) -> Envelope:
    return Envelope(queue_id=queue_id, recipient_ids=rids or (1,), stream="deliver")


def test_handled_entry_is_acknowledged_and_removed(make_consumer, queue_client):
    handler = Recorder()
    make_consumer(handler)
    queue_client.enqueue("deliver", env("Q1", 4, 5))
    wait_until(lambda: handler.queue_ids() == ["Q1"])
    wait_until(lambda: queue_client.length("deliver") == 0)
    assert handler.seen[0].envelope.recipient_ids == (4, 5)
    assert queue_client.pending_count("deliver", GROUP) == 0


def test_handler_runs_on_the_reactor_thread(make_consumer, queue_client):
    threads: list[str] = []
    make_consumer(Recorder(lambda e: threads.append(threading.current_thread().name)))
    queue_client.enqueue("deliver", env("Q1"))
    wait_until(lambda: threads)
    assert threads == ["test-reactor"]


def test_failed_handler_leaves_the_entry_pending_and_it_is_retried(make_consumer, queue_client):
    calls: list[int] = []

    def outcome(entry: QueueEntry) -> Any:
        calls.append(1)
        return fail(RuntimeError("mailbox busy")) if len(calls) == 1 else succeed(None)

    handler = Recorder(outcome)
    make_consumer(handler)
    queue_client.enqueue("deliver", env("Q1"))
    wait_until(lambda: len(calls) == 1)
    assert queue_client.pending_count("deliver", GROUP) == 1
    # claimed again by the consumer itself after claim_idle
    wait_until(lambda: len(calls) == 2)
    assert handler.seen[1].claimed is True
    wait_until(lambda: queue_client.length("deliver") == 0)


def test_handler_raising_synchronously_does_not_stop_the_consumer(make_consumer, queue_client):
    def outcome(entry: QueueEntry) -> Any:
        if entry.queue_id == "QBAD":
            raise ValueError("boom")
        return None

    handler = Recorder(outcome)
    make_consumer(handler, claim_idle=30)
    queue_client.enqueue("deliver", env("QBAD"))
    queue_client.enqueue("deliver", env("QGOOD"))
    wait_until(lambda: "QGOOD" in handler.queue_ids())
    # QGOOD's XACK follows its handler on the ack pool: wait for it, then only QBAD is pending
    wait_until(lambda: queue_client.pending_count("deliver", GROUP) <= 1)
    assert queue_client.pending_count("deliver", GROUP) == 1


def test_garbage_entries_are_dropped_and_the_consumer_goes_on(make_consumer, queue_client,
                                                               log_lines):
    handler = Recorder()
    consumer = make_consumer(handler)
    queue_client.enqueue("deliver", {"hello": "world"})
    queue_client.enqueue("deliver", {"v": "1", "queue_id": "Q1", "rcpt": "x", "stream": "deliver",
                                     "disposition": "inbox", "attempt": "0"})
    queue_client.enqueue("deliver", env("QGOOD"))
    wait_until(lambda: handler.queue_ids() == ["QGOOD"])
    wait_until(lambda: queue_client.length("deliver") == 0)
    assert consumer.dropped == 2
    assert log_lines().count('"event":"bad queue entry dropped"') == 2


def test_entry_of_another_stream_is_dropped(make_consumer, queue_client):
    handler = Recorder()
    consumer = make_consumer(handler)
    fields = {"v": "1", "queue_id": "Q1", "rcpt": "1", "stream": "outbound",
              "disposition": "inbox", "attempt": "0"}
    queue_client.enqueue("deliver", fields)
    wait_until(lambda: consumer.dropped == 1)
    assert handler.seen == []


def test_in_flight_work_is_limited_by_concurrency(make_consumer, queue_client, twisted_reactor):
    running: list[int] = []
    peak: list[int] = [0]

    def outcome(entry: QueueEntry) -> Deferred[None]:
        running.append(1)
        peak[0] = max(peak[0], len(running))
        return deferLater(twisted_reactor, 0.05, running.pop)

    handler = Recorder(outcome)
    make_consumer(handler, concurrency=2)
    for n in range(8):
        queue_client.enqueue("deliver", env(f"Q{n}"))
    wait_until(lambda: len(handler.seen) == 8)
    wait_until(lambda: queue_client.length("deliver") == 0)
    assert peak[0] == 2


def test_entries_finishing_together_are_acknowledged_together(make_consumer, queue_client,
                                                              twisted_reactor, monkeypatch):
    waiting: list[Deferred[None]] = []

    def outcome(entry: QueueEntry) -> Deferred[None]:
        waiting.append(Deferred())
        return waiting[-1]

    handler = Recorder(outcome)
    batches: list[int] = []
    ack_entries = queue_client.ack_entries

    def counted(stream: str, group: str, entries: Any) -> int:
        entries = list(entries)
        batches.append(len(entries))
        return ack_entries(stream, group, entries)

    monkeypatch.setattr(queue_client, "ack_entries", counted)
    make_consumer(handler, concurrency=10)
    for n in range(6):
        queue_client.enqueue("deliver", env(f"Q{n}", 100 + n))
    wait_until(lambda: len(handler.seen) == 6)
    in_reactor(lambda: [d.callback(None) for d in waiting])  # all in one reactor turn
    wait_until(lambda: queue_client.length("deliver") == 0)
    assert queue_client.pending_count("deliver", GROUP) == 0
    assert queue_client.queued("deliver", range(100, 106)) == set()
    # the first went alone; the five that finished while it was in flight, in one call
    assert sum(batches) == 6 and len(batches) < 6


def test_slow_handler_keeps_its_entry_from_other_consumers(make_consumer, queue_client,
                                                           twisted_reactor):
    slow = Recorder(lambda e: deferLater(twisted_reactor, 1.0, lambda: None))
    other = Recorder()
    make_consumer(slow, claim_idle=0.2)
    queue_client.enqueue("deliver", env("Q1"))
    wait_until(lambda: slow.seen)
    make_consumer(other, claim_idle=0.2)
    wait_until(lambda: queue_client.length("deliver") == 0)
    assert other.seen == []


def test_stop_waits_for_in_flight_handlers_then_acks(make_consumer, queue_client,
                                                     twisted_reactor):
    handler = Recorder(lambda e: deferLater(twisted_reactor, 0.3, lambda: None))
    consumer = make_consumer(handler)
    queue_client.enqueue("deliver", env("Q1"))
    wait_until(lambda: handler.seen)
    in_reactor(consumer.stop)
    assert consumer.in_flight == 0
    assert queue_client.length("deliver") == 0


def test_stop_after_grace_leaves_unfinished_work_pending(make_consumer, queue_client):
    handler = Recorder(lambda e: Deferred())  # never finishes
    consumer = make_consumer(handler, grace=0.2)
    queue_client.enqueue("deliver", env("Q1"))
    wait_until(lambda: handler.seen)
    in_reactor(consumer.stop)
    assert consumer.in_flight == 1
    assert queue_client.pending_count("deliver", GROUP) == 1


def test_consumer_names_are_unique_per_process():
    first, second = consumer_name(), consumer_name()
    assert first != second
    assert f"-{os.getpid()}-" in first


CHILD = r"""
import sys
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from postroom import logs
from postroom.queue.consumer import StreamConsumer
from postroom.queue.streams import QueueClient, connect

url, prefix = sys.argv[1], sys.argv[2]

def handle(entry):
    print("HANDLING " + entry.queue_id, flush=True)
    return Deferred()  # mid-work forever, until SIGKILL

consumer = StreamConsumer(QueueClient(connect(url), prefix), "deliver", "mda", handle,
                          claim_idle=60, block_ms=100)
reactor.callWhenRunning(consumer.start)
reactor.run()
"""


def test_entry_of_a_consumer_killed_mid_work_is_processed_by_another(
        make_consumer, queue_client, redis_url, redis_prefix):
    child = subprocess.Popen([sys.executable, "-c", CHILD, redis_url, redis_prefix],
                             stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        queue_client.ensure_group("deliver", GROUP)
        queue_client.enqueue("deliver", env("QKILL", 9))
        for line in child.stdout:  # type: ignore[union-attr]
            if line.startswith("HANDLING QKILL"):
                break
        else:
            pytest.fail("child consumer never handled the entry")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        child.stdout.close()  # type: ignore[union-attr]
    assert queue_client.pending_count("deliver", GROUP) == 1
    survivor = Recorder()
    make_consumer(survivor, claim_idle=0.3)
    wait_until(lambda: survivor.queue_ids() == ["QKILL"])
    assert survivor.seen[0].claimed is True
    wait_until(lambda: queue_client.length("deliver") == 0)


@pytest.fixture
def restartable_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_consumer_survives_a_redis_restart_and_recreates_its_group(make_consumer,
                                                                   restartable_redis):
    client = connect(restartable_redis.url)
    try:
        queue = QueueClient(client, "postroom:")
        handler = Recorder()
        make_consumer(handler, queue=queue)
        queue.enqueue("deliver", env("QBEFORE"))
        wait_until(lambda: handler.queue_ids() == ["QBEFORE"])
        restartable_redis.stop()
        time.sleep(0.3)  # the reader hits connection errors and backs off
        restartable_redis.start()
        # the new Redis is empty: no stream, no group; the consumer must re-create both
        queue.enqueue("deliver", env("QAFTER"))
        wait_until(lambda: handler.queue_ids() == ["QBEFORE", "QAFTER"])
    finally:
        client.close()


def test_consumer_recovers_from_flushall(make_consumer, private_redis):
    client = connect(private_redis)
    try:
        queue = QueueClient(client, "postroom:")
        handler = Recorder()
        make_consumer(handler, queue=queue)
        queue.enqueue("deliver", env("Q1"))
        wait_until(lambda: handler.queue_ids() == ["Q1"])
        client.flushall()
        queue.enqueue("deliver", env("Q2"))
        wait_until(lambda: handler.queue_ids() == ["Q1", "Q2"])
    finally:
        client.close()


def test_redis_unreachable_is_logged_not_fatal(make_consumer, log_lines):
    from tests.support.ports import free_port

    client = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2,
                         retry=Retry(NoBackoff(), 0))
    consumer = make_consumer(Recorder(), queue=QueueClient(client, "postroom:"))
    wait_until(lambda: '"event":"queue redis error"' in log_lines())
    assert consumer._thread is not None and consumer._thread.is_alive()
