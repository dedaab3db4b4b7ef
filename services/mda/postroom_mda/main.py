"""The mda service's declaration for `postroom serve mda`: the `deliver` consumer and reconciler."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from postroom.queue.consumer import StreamConsumer
from postroom.queue.gauges import QueueGauges
from postroom.queue.reconciler import Reconciler
from postroom.queue.streams import QueueClient, connect
from postroom.runtime import ServiceContext
from postroom.service import ServiceSpec
from postroom_mda.delivery import Options
from postroom_mda.service import Deliverer

STREAM = "deliver"
GROUP = "mda"


def start(ctx: ServiceContext) -> Deferred[Any] | None:
    """Start consuming `deliver` and reconciling; SIGTERM hands unfinished entries back."""
    settings = ctx.settings
    assert settings.redis_url is not None
    client = connect(settings.redis_url)
    queue = QueueClient(client, settings.redis_prefix)
    deliverer = Deliverer(ctx.database, queue, Options.from_settings(settings),
                          pool=ctx.thread_pool("redis", 2), reactor=ctx.reactor, log=ctx.log,
                          metrics=ctx.metrics)
    # a little less than the runtime's grace, so the reconciler and pools still stop in time
    consumer = StreamConsumer(queue, STREAM, GROUP, deliverer.handle,
                              concurrency=settings.mda_concurrency,
                              claim_idle=settings.queue_claim_idle,
                              grace=settings.shutdown_grace * 0.8, reactor=ctx.reactor,
                              metrics=ctx.metrics)
    reconciler = Reconciler(ctx.database, queue, settings, reactor=ctx.reactor)
    gauges = QueueGauges(queue, ctx.metrics, (STREAM,), pool=ctx.thread_pool("metrics", 1),
                         reactor=ctx.reactor)
    # stop hooks run newest first: the consumer stops, then the reconciler, then Redis closes
    ctx.on_stop(client.close)
    ctx.on_stop(gauges.stop)
    ctx.on_stop(reconciler.stop)
    ctx.on_stop(consumer.stop)
    consumer.start()
    gauges.start()

    def first_pass_failed(failure: Failure) -> None:
        # Redis or PostgreSQL away at start: the loop retries every reconcile_interval
        ctx.log.warning("first reconcile pass failed", error=failure.getErrorMessage())

    reconciler.start().addErrback(first_pass_failed)
    ctx.log.info("mda started", stream=STREAM, group=GROUP,
                 concurrency=settings.mda_concurrency, consumer=consumer.name)
    return None


SERVICE = ServiceSpec(
    name="mda",
    description="Delivers the `deliver` queue into mailboxes: aliases, quotas, rules, Junk",
    start=start,
    needs_tls=False,
)
