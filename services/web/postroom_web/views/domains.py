"""The domains page: the domains the caller may see, and (admins) a form to add one."""

from __future__ import annotations

from typing import Any

from postroom.store import domains
from postroom.store.errors import AlreadyExists, InvalidAddress
from postroom_web.framework import Access, Ctx, PageQuery, Redirect, page


@page("GET", "/domains", template="domains.html", access=Access.CONSOLE, title="Domains")
def domains_page(ctx: Ctx) -> dict[str, Any]:
    try:
        query = PageQuery.model_validate({k: v for k, v in ctx.args.items()
                                          if k in ("offset", "limit")})
    except ValueError:
        query = PageQuery.model_validate({})
    found, total = domains.list_domains_page(ctx.store, offset=query.offset, limit=query.limit,
                                             names=ctx.visible_domains(), search=None)
    return {"domains": found, "total": total, "query": query, "title": "Domains"}


@page("POST", "/domains", template="domains.html", access=Access.ADMIN, title="Domains")
def add_domain_form(ctx: Ctx) -> dict[str, Any] | Redirect:
    name = ctx.form.get("name", "").strip()
    try:
        info = domains.add_domain(ctx.store, name,
                                  role_target=ctx.settings.role_address_target or None)
    except (AlreadyExists, InvalidAddress, ValueError) as exc:
        ctx.status = 422
        values = domains_page(ctx)
        return {**values, "error": str(exc), "name": name[:253]}
    return Redirect("/domains", notice=f"Domain {info.name} added.")
