"""The console's first page: domains, queue depths and this service's health checks."""

from __future__ import annotations

from typing import Any

from postroom.queue.envelope import STREAMS
from postroom.queue.gauges import measure
from postroom.queue.redisclient import RedisClient, RedisError
from postroom.queue.streams import QueueClient
from postroom.store import domains
from postroom_web.framework import Access, Ctx, page


def queue_depths(client: RedisClient | None, prefix: str) -> list[dict[str, Any]] | None:
    """Depth and oldest entry's age of each stream; None when Redis cannot be asked. Blocks."""
    if client is None:
        return None
    queue = QueueClient(client, prefix)
    found = []
    for stream in STREAMS:
        try:
            depth, age = measure(queue, stream)
        except (RedisError, OSError):
            return None
        found.append({"name": stream, "depth": depth, "oldest": round(age)})
    return found


@page("GET", "/", template="overview.html", access=Access.CONSOLE, title="Overview")
async def overview(ctx: Ctx) -> dict[str, Any]:
    _, total = await ctx.run(domains.list_domains_page, names=ctx.visible_domains(),
                             offset=0, limit=1, search=None)
    queues = await ctx.in_thread(queue_depths, ctx.redis, ctx.settings.redis_prefix)
    checks = await ctx.app.health.run() if ctx.app.health is not None else {}
    return {"queues": queues or [], "redis_ok": queues is not None, "domain_count": total,
            "checks": sorted(checks.items()), "title": "Overview"}
