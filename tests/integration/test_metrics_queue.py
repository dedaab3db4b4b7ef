"""Queue metrics against a real Redis: depth and oldest age per stream, pick-up latency."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from twisted.python.threadpool import ThreadPool

from postroom.metrics import Metrics
from postroom.queue.consumer import StreamConsumer
from postroom.queue.envelope import Envelope
from postroom.queue.gauges import QueueGauges, measure
from postroom.queue.streams import QueueClient, connect
from tests.support.redisdb import in_reactor, wait_until


def gauge(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    threads = ThreadPool(minthreads=0, maxthreads=1, name="test-metrics")
    threads.start()
    yield threads
    threads.stop()


def test_measure_reports_depth_and_age_of_the_oldest_entry(queue_client: QueueClient):
    queue_client.enqueue("deliver", Envelope("Q1", (1,), "deliver"))
    queue_client.enqueue("deliver", Envelope("Q2", (2,), "deliver"))
    depth, age = measure(queue_client, "deliver", now=time.time() + 30)
    assert depth == 2
    assert 29 <= age < 60


def test_an_empty_stream_has_depth_and_age_zero(queue_client: QueueClient):
    assert measure(queue_client, "outbound") == (0, 0.0)


def test_gauges_are_set_per_stream_by_a_refresh(queue_client: QueueClient, pool: ThreadPool,
                                                twisted_reactor: Any):
    metrics = Metrics("test", process_metrics=False)
    queue_client.enqueue("outbound", Envelope("Q1", (1,), "outbound"))
    gauges = QueueGauges(queue_client, metrics, ("outbound", "deliver"), pool=pool,
                         reactor=twisted_reactor)
    in_reactor(gauges.refresh)
    assert gauge(metrics, "postroom_queue_depth", queue="outbound") == 1
    assert gauge(metrics, "postroom_queue_depth", queue="deliver") == 0
    oldest = gauge(metrics, "postroom_queue_oldest_seconds", queue="outbound")
    assert oldest is not None and 0 <= oldest < 10


def test_a_refresh_that_cannot_reach_redis_counts_an_error(pool: ThreadPool,
                                                           twisted_reactor: Any):
    # nothing listens on port 1 of loopback: the connection is refused at once
    client: redis.Redis = connect("redis://127.0.0.1:1/0")
    metrics = Metrics("test", process_metrics=False)
    gauges = QueueGauges(QueueClient(client), metrics, ("deliver",), pool=pool,
                         reactor=twisted_reactor)
    in_reactor(gauges.refresh)
    assert gauge(metrics, "postroom_errors_total", kind="queue_gauges") == 1
    assert gauge(metrics, "postroom_queue_depth", queue="deliver") is None


def test_consumer_observes_pick_up_latency_of_new_entries(queue_client: QueueClient,
                                                          twisted_reactor: Any):
    metrics = Metrics("test", process_metrics=False)
    consumer = StreamConsumer(queue_client, "deliver", "test", lambda entry: None,
                              claim_idle=1.0, block_ms=100, grace=2.0, reactor=twisted_reactor,
                              metrics=metrics)
    queue_client.enqueue("deliver", Envelope("Q1", (1,), "deliver"))
    in_reactor(consumer.start)
    try:
        wait_until(lambda: consumer.handled == 1, timeout=10)
    finally:
        in_reactor(consumer.stop, timeout=15)
    count = gauge(metrics, "postroom_queue_latency_seconds_count", queue="deliver")
    assert count == 1
    total = gauge(metrics, "postroom_queue_latency_seconds_sum", queue="deliver")
    assert total is not None and 0 <= total < 10
