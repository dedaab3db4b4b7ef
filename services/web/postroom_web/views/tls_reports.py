"""The TLS reports pages (/tls, /tls/{domain}) and the doctor page (/doctor/{domain})."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from postroom.store import domains, tlsreports
from postroom_web.api.tls_reports import diagnose
from postroom_web.framework import Access, Ctx, page

DAYS = 30


@page("GET", "/tls", template="tls_index.html", access=Access.CONSOLE, title="TLS")
def tls_index(ctx: Ctx) -> dict[str, Any]:
    found, _ = domains.list_domains_page(ctx.store, offset=0, limit=500,
                                         names=ctx.visible_domains(), search=None)
    return {"domains": found, "title": "TLS reports"}


@page("GET", "/tls/{domain}", template="tls.html", access=Access.CONSOLE, title="TLS")
def tls_page(ctx: Ctx, domain: str) -> dict[str, Any]:
    name = ctx.require_manage(domain)
    since = datetime.now(UTC) - timedelta(days=DAYS)
    return {"domain": name, "days": DAYS,
            "reports": tlsreports.incoming_reports(ctx.store, name, since=since),
            "outbound": tlsreports.outbound_summary(ctx.store, name, since),
            "title": f"TLS reports for {name}"}


@page("GET", "/doctor/{domain}", template="doctor.html", access=Access.CONSOLE, title="Doctor")
async def doctor_page(ctx: Ctx, domain: str) -> dict[str, Any]:
    result = await diagnose(ctx, domain)
    return {**result, "title": f"Doctor: {result['domain']}"}
