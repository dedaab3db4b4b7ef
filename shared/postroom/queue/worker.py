"""The wiring every queue-worker service repeats: consumer, reconciler, gauges and their stop order.

A worker service (the mda on `deliver`, the mta relay on `outbound`) makes a
Redis client and a :class:`~postroom.queue.streams.QueueClient`, then calls
:func:`start_stream_worker` with its handler. The stop hooks it registers run
newest first (see :meth:`postroom.runtime.ServiceContext.on_stop`): the
consumer stops taking entries and finishes or hands back what it holds, then
whatever the caller passed in ``stop_after_consumer`` (e.g. the relay's idle
SMTP sessions), then the reconciler and the gauges, and Redis closes last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from postroom.queue.consumer import Handler, StreamConsumer
from postroom.queue.gauges import QueueGauges
from postroom.queue.reconciler import Reconciler
from postroom.queue.redisclient import RedisClient
from postroom.queue.streams import QueueClient

if TYPE_CHECKING:
    from postroom.runtime import ServiceContext

# the consumer's share of the runtime's shutdown grace, so the reconciler and pools still stop
CONSUMER_GRACE_SHARE = 0.8


@dataclass(frozen=True)
class StreamWorker:
    """What :func:`start_stream_worker` started, for the caller's log line and tests."""

    consumer: StreamConsumer
    reconciler: Reconciler
    gauges: QueueGauges


def start_stream_worker(ctx: ServiceContext, client: RedisClient, queue: QueueClient, *,
                        stream: str,
                        group: str, handler: Handler, concurrency: int,
                        stop_after_consumer: Sequence[Callable[[], Any]] = ()) -> StreamWorker:
    """Consume ``stream`` as ``group`` with ``handler``, reconcile the spool, export gauges.

    ``client`` is the Redis client behind ``queue``; it is closed last on stop.
    ``stop_after_consumer`` hooks run, in the order given, once the consumer has stopped.
    """
    settings = ctx.settings
    consumer = StreamConsumer(queue, stream, group, handler, concurrency=concurrency,
                              claim_idle=settings.queue_claim_idle,
                              grace=settings.shutdown_grace * CONSUMER_GRACE_SHARE,
                              reactor=ctx.reactor, metrics=ctx.metrics)
    reconciler = Reconciler(ctx.db, queue, settings, reactor=ctx.reactor)
    gauges = QueueGauges(queue, ctx.metrics, (stream,), pool=ctx.thread_pool("metrics", 1),
                         reactor=ctx.reactor)
    # registered oldest first; they run newest first
    ctx.on_stop(client.close)
    ctx.on_stop(gauges.stop)
    ctx.on_stop(reconciler.stop)
    for hook in reversed(stop_after_consumer):
        ctx.on_stop(hook)
    ctx.on_stop(consumer.stop)
    consumer.start()
    gauges.start()

    def first_pass_failed(failure: Failure) -> None:
        # Redis or PostgreSQL away at start: the loop retries every reconcile_interval
        ctx.log.warning("first reconcile pass failed", error=failure.getErrorMessage())

    reconciler.start().addErrback(first_pass_failed)
    return StreamWorker(consumer, reconciler, gauges)
