"""The console's first page: domains, the queue, deliveries and rejects per hour, health."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup

from postroom.store import domains
from postroom_web.api.metrics import HOURS, HourFigure, MetricsSummary, gather_summary
from postroom_web.dmarc.charts import Series, stacked_bar_chart
from postroom_web.framework import Access, Ctx, page

OUTCOMES = ("delivered", "deferred", "failed", "bounced")
# reject reasons with a colour of their own in charts.css; any other is "reject-other"
_REJECT_KEYS = {"dmarc": "reject-dmarc", "content:attachments": "reject-attachments",
                "content:clamd": "reject-clamd", "content:rspamd": "reject-rspamd"}


def hourly_table(figures: list[HourFigure], since: datetime, reasons: list[str]
                 ) -> list[tuple[datetime, list[int]]]:
    """Every hour from ``since`` (empty ones too) with a count per reason, in ``reasons``'
    order."""
    counts = {(f.hour, f.reason): f.count for f in figures}
    hours = [since + timedelta(hours=i) for i in range(HOURS)]
    return [(h, [counts.get((h, r), 0) for r in reasons]) for h in hours]


def hourly_chart(title: str, rows: list[tuple[datetime, list[int]]], reasons: list[str],
                 keys: list[str]) -> Markup:
    labels = [h.strftime("%H:00") for h, _ in rows]
    series = [Series(name=reason, key=key, values=[float(v[i]) for _, v in rows])
              for i, (reason, key) in enumerate(zip(reasons, keys, strict=True))]
    return stacked_bar_chart(title, labels, series)


def reject_reasons(figures: list[HourFigure]) -> list[str]:
    found = sorted({f.reason for f in figures})
    return found or ["dmarc"]


def queue_rows(summary: MetricsSummary) -> list[dict[str, Any]]:
    """Per stream: due now (Redis; None unknown) beside the spool's pending and deferred."""
    due = {s.stream: s for s in summary.streams or []}
    spooled = {b.stream: b for b in summary.backlog}
    rows = []
    for stream in sorted(set(due) | set(spooled)):
        d, b = due.get(stream), spooled.get(stream)
        rows.append({"stream": stream, "due": d.depth if d else None,
                     "due_oldest": d.oldest_seconds if d else None,
                     "pending": b.pending if b else 0, "deferred": b.deferred if b else 0,
                     "failed": b.failed if b else 0,
                     "oldest": b.oldest_seconds if b else None})
    return rows


@page("GET", "/", template="overview.html", access=Access.CONSOLE, title="Overview")
async def overview(ctx: Ctx) -> dict[str, Any]:
    _, total = await ctx.run(domains.list_domains_page, names=ctx.visible_domains(),
                             offset=0, limit=1, search=None)
    summary = await gather_summary(ctx)
    checks = await ctx.app.health.run() if ctx.app.health is not None else {}
    deliveries = hourly_table(summary.deliveries, summary.since, list(OUTCOMES))
    values: dict[str, Any] = {
        "summary": summary, "domain_count": total, "queues": queue_rows(summary),
        "web_checks": sorted(checks),
        "web_failing": sorted(name for name, entry in checks.items() if not entry["ok"]),
        "outcomes": OUTCOMES, "deliveries": deliveries,
        "deliveries_chart": hourly_chart("Delivery attempts per hour (UTC), by result",
                                         deliveries, list(OUTCOMES), list(OUTCOMES)),
        "services_configured": bool(ctx.settings.web_services), "title": "Overview"}
    if summary.rejects is not None:
        reasons = reject_reasons(summary.rejects)
        rows = hourly_table(summary.rejects, summary.since, reasons)
        values.update(reasons=reasons, rejects=rows, rejects_chart=hourly_chart(
            "Messages refused after DATA per hour (UTC), by reason", rows, reasons,
            [_REJECT_KEYS.get(r, "reject-other") for r in reasons]))
    return values
