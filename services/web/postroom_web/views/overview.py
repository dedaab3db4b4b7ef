"""The console's first page: queue depth and this service's health."""

from __future__ import annotations

from typing import Any

from postroom.queue.envelope import STREAMS
from postroom.queue.gauges import measure
from postroom.queue.redisclient import RedisError
from postroom.queue.streams import QueueClient
from postroom.store import domains
from postroom_web.framework import Access, Ctx, page


@page("GET", "/", template="overview.html", access=Access.CONSOLE, title="Overview")
def overview(ctx: Ctx) -> dict[str, Any]:
    queues: list[dict[str, Any]] = []
    redis_ok = True
    if ctx.redis is not None:
        client = QueueClient(ctx.redis, ctx.settings.redis_prefix)
        for stream in STREAMS:
            try:
                depth, age = measure(client, stream)
            except (RedisError, OSError):
                redis_ok = False
                break
            queues.append({"name": stream, "depth": depth, "oldest": round(age)})
    _, total = domains.list_domains_page(ctx.store, offset=0, limit=1,
                                         names=ctx.visible_domains(), search=None)
    return {"queues": queues, "redis_ok": redis_ok, "domain_count": total,
            "title": "Overview"}
