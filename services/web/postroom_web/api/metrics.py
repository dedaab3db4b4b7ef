"""/api/v1/metrics/summary: the queue's depth and age, deliveries and rejects per hour for
the last 24 hours, and the services' health, for the overview page and for scripts.

Per-hour figures come from PostgreSQL (postroom.store.mailstats), so they are the whole
installation's with any number of replicas; SMTP-time refusals are counters in each
process, read from the services' /metrics (postroom.ops.probe) as totals since each
started. Nothing here waits long: Redis and the services have short timeouts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from postroom.ops import probe
from postroom.queue.envelope import STREAMS
from postroom.queue.gauges import depths
from postroom.queue.redisclient import RedisClient, RedisError
from postroom.queue.streams import QueueClient
from postroom.store import mailstats
from postroom_web.framework import Access, Ctx, endpoint

HOURS = 24


class StreamDepth(BaseModel):
    stream: str
    depth: int = Field(description="Entries waiting on the Redis stream (due work).")
    oldest_seconds: int = Field(description="Age of the oldest of them.")


class Backlog(BaseModel):
    stream: str
    pending: int = Field(description="Recipients not yet delivered (queued or deferred).")
    deferred: int = Field(description="Of them, tried at least once and waiting for a retry.")
    failed: int = Field(description="Failed, their bounce not yet sent.")
    oldest_seconds: int | None = Field(description="Age of the oldest pending one's message.")


class HourFigure(BaseModel):
    hour: datetime = Field(description="The UTC hour's start.")
    reason: str = Field(description="Deliveries: the attempt's result (delivered, deferred, "
                        "failed, bounced). Rejects: dmarc or content:<check>.")
    count: int


class ServiceHealth(BaseModel):
    name: str
    state: Literal["up", "down", "unknown"] = Field(description=(
        "up: /healthz answered 200; down: it answered otherwise, or nothing listens; "
        "unknown: no answer within the probe's timeout."))
    detail: str | None = None
    failing: list[str] = Field(default_factory=list, description="Its failing checks.")


class MetricsSummary(BaseModel):
    """The overview's figures. A domain manager's deliveries and backlog count only mail
    concerning its domains; rejects (which name no recipient) are for administrators."""

    generated_at: datetime
    since: datetime = Field(description="The first hour of the per-hour figures.")
    streams: list[StreamDepth] | None = Field(description="null: Redis did not answer.")
    backlog: list[Backlog]
    deliveries: list[HourFigure]
    rejects: list[HourFigure] | None = Field(
        description="Refused after DATA (DMARC policy, content checks); null for managers.")
    smtp_rejects: dict[str, float] | None = Field(description=(
        "postroom_messages_total rejected_* outcomes of the services that answered, added "
        "up, since each process started (unknown recipient, relay, sending limits...); "
        "null for managers."))
    services: list[ServiceHealth]


def stream_depths(client: RedisClient | None, prefix: str) -> list[StreamDepth] | None:
    """Each stream's depth and oldest entry's age; None when Redis cannot be asked. Blocks."""
    if client is None:
        return None
    try:
        found = depths(QueueClient(client, prefix), STREAMS)
    except (RedisError, OSError):
        return None
    return [StreamDepth(stream=s, depth=d, oldest_seconds=round(a)) for s, d, a in found]


def _figures(session: Any, since: datetime, domains: set[str] | None, admin: bool
             ) -> tuple[list[Any], list[Any], list[Any] | None]:
    backlog = mailstats.spool_backlog(session, domains)
    outcomes = mailstats.outcomes_per_hour(session, since, domains)
    rejects = mailstats.rejects_per_hour(session, since) if admin else None
    return backlog, outcomes, rejects


async def gather_summary(ctx: Ctx) -> MetricsSummary:
    """Every figure of the summary (an async handler's: store, Redis and probes)."""
    now = datetime.now(UTC)
    since = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    admin = ctx.user.is_admin
    backlog, outcomes, rejects = await ctx.run(_figures, since, ctx.visible_domains(), admin)
    streams = await ctx.in_thread(stream_depths, ctx.redis, ctx.settings.redis_prefix)
    states = await ctx.in_thread(lambda: probe.probe_services(
        ctx.settings.web_services, token=ctx.settings.internal_token, metrics=admin))
    return MetricsSummary(
        generated_at=now, since=since, streams=streams,
        backlog=[Backlog(stream=b.stream, pending=b.pending, deferred=b.deferred,
                         failed=b.failed,
                         oldest_seconds=round((now - b.oldest).total_seconds())
                         if b.oldest else None) for b in backlog],
        deliveries=[HourFigure.model_validate(h, from_attributes=True) for h in outcomes],
        rejects=None if rejects is None else [HourFigure.model_validate(h, from_attributes=True)
                                              for h in rejects],
        smtp_rejects=probe.sum_rejects(states) if admin else None,
        services=[ServiceHealth(name=s.name, state=s.state,  # type: ignore[arg-type]
                                detail=s.detail, failing=list(s.failing)) for s in states])


@endpoint("GET", "/metrics/summary", summary="The mail figures of the overview",
          tags=["metrics"], response=MetricsSummary, access=Access.CONSOLE)
async def metrics_summary(ctx: Ctx) -> MetricsSummary:
    """Queue depth and age per stream (Redis) and the spool's backlog (PostgreSQL),
    deliveries and rejects per hour by reason for the last 24 hours, SMTP-time rejects
    since each service started, and each service's health (POSTROOM_WEB_SERVICES)."""
    return await gather_summary(ctx)
