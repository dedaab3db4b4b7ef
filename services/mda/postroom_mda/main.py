"""The mda service's declaration for `postroom serve mda`: the `deliver` consumer and reconciler."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from postroom.queue.streams import QueueClient, connect
from postroom.queue.worker import start_stream_worker
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
    deliverer = Deliverer(ctx.db, queue, Options.from_settings(settings, ctx.metrics),
                          pool=ctx.thread_pool("redis", 2), reactor=ctx.reactor, log=ctx.log,
                          metrics=ctx.metrics, group_max=settings.mda_group_commit)
    worker = start_stream_worker(ctx, client, queue, stream=STREAM, group=GROUP,
                                 handler=deliverer.handle,
                                 concurrency=settings.mda_concurrency)
    ctx.log.info("mda started", stream=STREAM, group=GROUP,
                 concurrency=settings.mda_concurrency, consumer=worker.consumer.name)
    return None


SERVICE = ServiceSpec(
    name="mda",
    description="Delivers the `deliver` queue into mailboxes: aliases, quotas, rules, Junk",
    start=start,
    needs_tls=False,
)
