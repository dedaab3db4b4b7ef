"""Helpers the account pages share: the page and search arguments, the caller's domains."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from pydantic import ValidationError

from postroom.store import domains
from postroom.store.errors import StoreError
from postroom_web.framework import ApiError, Ctx, PageQuery

# the domains a page's domain menu offers at most (more: type the domain in ?domain=)
MAX_DOMAIN_CHOICES = 500
# what a failed form shows; everything else (403, 404, the store down) is an error page
FORM_ERRORS = (StoreError, ValueError)


def page_query(ctx: Ctx) -> PageQuery:
    """``?offset=&limit=`` of a page, the defaults when they are not valid."""
    try:
        return PageQuery.model_validate({k: v for k, v in ctx.args.items()
                                         if k in ("offset", "limit")})
    except ValidationError:
        return PageQuery.model_validate({})


def search_arg(ctx: Ctx) -> str:
    return ctx.args.get("search", "").strip()[:254]


def domain_choices(ctx: Ctx) -> list[str]:
    """The domains the caller may see, by name, for a page's domain menu."""
    found, _ = domains.list_domains_page(ctx.store, names=ctx.visible_domains(), offset=0,
                                         limit=MAX_DOMAIN_CHOICES, search=None)
    return [d.name for d in found]


def chosen_domain(ctx: Ctx) -> str | None:
    """``?domain=`` when given (403/404 unless the caller manages it), else None (all)."""
    wanted = ctx.args.get("domain", "").strip()
    return ctx.require_manage(wanted) if wanted else None


def pager_args(**values: Any) -> str:
    """The arguments a pager's links keep (``&domain=...&search=...``), empty ones left out."""
    kept = {k: v for k, v in values.items() if v}
    return "&" + urlencode(kept) if kept else ""


def form_error(exc: Exception) -> str:
    """The message of a refused form (store and validation errors say it for people)."""
    if isinstance(exc, ApiError):
        return exc.message
    return str(exc)
