"""The DMARC pages: /dmarc (the domains the caller may see, a domain and range picker) and
/dmarc/{domain} (the dashboard fragment in the layout). GET forms only: no script needed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from postroom.store.addresses import normalise_domain
from postroom_web.api.dmarc import domains_seen_by, visible_run
from postroom_web.dmarc import console
from postroom_web.framework import Access, Ctx, Redirect, page

# the domain picker lists this many at most (the rest: type the name)
PICKER_LIMIT = 500


def _range_args(ctx: Ctx) -> dict[str, str]:
    """The picker's period for the dashboard's URL: the days only for a custom range."""
    keys = ("range", "from", "to") if ctx.args.get("range") == "custom" else ("range",)
    return {k: ctx.args[k][:20] for k in keys if k in ctx.args}


@page("GET", "/dmarc", template="dmarc/index.html", access=Access.CONSOLE, title="DMARC")
async def dmarc_index(ctx: Ctx) -> dict[str, Any] | Redirect:
    chosen = ctx.args.get("domain", "").strip()
    if chosen:  # the picker's GET form: on to the domain's page with the range kept
        try:
            name = normalise_domain(chosen)
        except ValueError:
            name = ""
        if name:
            query = urlencode(_range_args(ctx))
            return Redirect(f"/dmarc/{quote(name, safe='')}" + (f"?{query}" if query else ""))
    found = await ctx.run(domains_seen_by, ctx.user)
    picked = console.page_range(ctx.args, datetime.now(UTC))
    return {"domains": found[:PICKER_LIMIT], "more": max(0, len(found) - PICKER_LIMIT),
            "range": picked, "ranges": list(console.RANGES), "domain": None,
            "error": "No such domain name." if chosen else None, "title": "DMARC"}


@page("GET", "/dmarc/{domain}", template="dmarc/domain.html", access=Access.CONSOLE,
      title="DMARC")
async def dmarc_domain(ctx: Ctx, domain: str) -> dict[str, Any]:
    picked = console.page_range(ctx.args, datetime.now(UTC))
    figures, local = await visible_run(ctx, console.load, domain, picked.start, picked.end)
    found = await ctx.run(domains_seen_by, ctx.user)
    dashboard = await ctx.app.dmarc.assemble(figures, local=local)
    return {"dashboard": dashboard, "domain": figures.domain, "local": local,
            "domains": found[:PICKER_LIMIT], "more": max(0, len(found) - PICKER_LIMIT),
            "range": picked, "ranges": list(console.RANGES), "error": picked.error,
            "title": f"DMARC for {figures.domain}"}
