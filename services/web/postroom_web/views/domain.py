"""One domain's page: its numbers, the DNS records to publish with their status in DNS now
(checked on every view, within a time bound), and (admins) its managers."""

from __future__ import annotations

from typing import Any

from postroom.store import domains, webaccess
from postroom_web.api.dns import live_check
from postroom_web.framework import Access, Ctx, Redirect, not_found, page
from postroom_web.views.common import FORM_ERRORS, form_error


async def _domain_values(ctx: Ctx, domain: str) -> dict[str, Any]:
    name = await ctx.require_manage_async(domain)
    found, _ = await ctx.run(domains.list_domains_page, names={name}, offset=0, limit=1,
                             search=None)
    if not found:
        raise not_found(f"no domain {name}")
    report = await live_check(ctx, name)
    managers = await ctx.run(webaccess.managers, name) if ctx.user.is_admin else []
    counts = {s: sum(1 for r in report.records if r.status == s)
              for s in ("published", "missing", "wrong", "unknown")}
    return {"domain": found[0], "report": report, "counts": counts,
            "managers": [a for a, _ in managers], "title": name}


@page("GET", "/domains/{domain}", template="domain.html", access=Access.CONSOLE,
      title="Domain")
async def domain_page(ctx: Ctx, domain: str) -> dict[str, Any]:
    return await _domain_values(ctx, domain)


async def _change(ctx: Ctx, domain: str, work: Any, *args: Any, notice: str,
                  event: str) -> dict[str, Any] | Redirect:
    name = await ctx.require_manage_async(domain)
    try:
        await ctx.run(work, *args)
    except FORM_ERRORS as exc:
        ctx.status = 422
        return {**await _domain_values(ctx, name), "error": form_error(exc)}
    ctx.audit(event, domain=name, address=args[0] if event.startswith("manager") else None)
    return Redirect(f"/domains/{name}", notice=notice)


@page("POST", "/domains/{domain}/managers", template="domain.html", access=Access.ADMIN)
async def add_manager_form(ctx: Ctx, domain: str) -> dict[str, Any] | Redirect:
    address = ctx.form.get("address", "").strip()[:254]
    return await _change(ctx, domain, webaccess.add_manager, address, domain,
                         notice=f"{address} manages {domain}.", event="manager added")


def _remove_manager(session: Any, address: str, domain: str) -> None:
    if not webaccess.remove_manager(session, address, domain):
        raise ValueError(f"{address} does not manage {domain}")


@page("POST", "/domains/{domain}/managers/remove", template="domain.html",
      access=Access.ADMIN)
async def remove_manager_form(ctx: Ctx, domain: str) -> dict[str, Any] | Redirect:
    address = ctx.form.get("address", "").strip()[:254]
    return await _change(ctx, domain, _remove_manager, address, domain,
                         notice=f"{address} no longer manages {domain}.",
                         event="manager removed")


@page("POST", "/domains/{domain}/remove", template="domain.html", access=Access.ADMIN)
async def remove_domain_form(ctx: Ctx, domain: str) -> dict[str, Any] | Redirect:
    result = await _change(ctx, domain, domains.remove_domain, domain, notice="",
                           event="domain removed")
    if isinstance(result, Redirect):
        return Redirect("/domains", notice=f"Domain {domain.lower()} removed.")
    return result
