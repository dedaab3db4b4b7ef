"""The aliases page: a paginated, searchable list (every visible domain or one), a form to
add one (loops refused with the way round), and a remove button per alias."""

from __future__ import annotations

from typing import Any

from postroom.store import aliases
from postroom_web.api.aliases import alias_source
from postroom_web.framework import Access, ApiError, Ctx, Redirect, page
from postroom_web.views.common import (
    FORM_ERRORS,
    chosen_domain,
    domain_choices,
    form_error,
    page_query,
    pager_args,
    search_arg,
)


@page("GET", "/aliases", template="aliases.html", access=Access.CONSOLE, title="Aliases")
def aliases_page(ctx: Ctx) -> dict[str, Any]:
    choices = domain_choices(ctx)
    domain = chosen_domain(ctx)
    query, search = page_query(ctx), search_arg(ctx)
    visible = {domain} if domain else ctx.visible_domains()
    found, total = aliases.list_aliases_page(ctx.store, domains=visible, offset=query.offset,
                                             limit=query.limit, search=search or None)
    return {"aliases": found, "total": total, "query": query, "domains": choices,
            "domain": domain, "search": search, "title": "Aliases",
            "pager_args": pager_args(domain=domain, search=search)}


@page("POST", "/aliases", template="aliases.html", access=Access.CONSOLE, title="Aliases")
def add_alias_form(ctx: Ctx) -> dict[str, Any] | Redirect:
    form = ctx.form
    domain = ctx.require_manage(form.get("domain", ""))
    try:
        added = aliases.add_alias(ctx.store, alias_source(domain, form.get("source", "")),
                                  form.get("destination", ""),
                                  delimiter=ctx.settings.recipient_delimiter)
        ctx.audit("alias added", source=added.source, destination=added.destination)
    except (*FORM_ERRORS, ApiError) as exc:
        if isinstance(exc, ApiError) and exc.status != 422:
            raise
        ctx.status = 422
        return {**aliases_page(ctx), "error": form_error(exc),
                "source": form.get("source", "")[:254], "form_domain": domain,
                "destination": form.get("destination", "")[:254]}
    return Redirect(f"/aliases?domain={domain}",
                    notice=f"Alias {added.source} → {added.destination} added.")


@page("POST", "/aliases/remove", template="aliases.html", access=Access.CONSOLE)
def remove_alias_form(ctx: Ctx) -> Redirect:
    source = ctx.form.get("source", "")
    domain = ctx.require_manage(source.rpartition("@")[2])
    destination = ctx.form.get("destination") or None
    removed = aliases.remove_alias(ctx.store, alias_source(domain, source), destination)
    ctx.audit("alias removed", source=alias_source(domain, source), destination=destination,
              count=removed)
    return Redirect(f"/aliases?domain={domain}",
                    notice=f"Alias {source} → {destination or 'all'} removed.")
