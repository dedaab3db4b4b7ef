"""/api/v1/domains/{domain}/aliases: list, add (loops refused), remove."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from postroom.store import aliases
from postroom.store.addresses import normalise_domain
from postroom_web.framework import Access, ApiError, Ctx, Page, PageQuery, endpoint


class Alias(BaseModel):
    """Mail to ``source`` goes to ``destination`` (``@domain``: every unknown address)."""

    source: str
    destination: str
    created_at: datetime


class AliasQuery(PageQuery):
    search: str | None = Field(None, max_length=254,
                               description="Only aliases whose source or destination "
                                           "contains this.")


class AliasCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=254,
                        description="A local part, an address in the domain, or @domain "
                                    "(a catch-all).")
    destination: str = Field(min_length=3, max_length=254,
                             description="Any address, local or not.")


class AliasDelete(BaseModel):
    model_config = ConfigDict(extra="forbid")

    destination: str | None = Field(None, min_length=1, max_length=254,
                                    description="Only this destination (default: all).")


def alias_source(domain: str, source: str) -> str:
    """The stored source for a form or body: ``info`` -> ``info@domain``, ``@`` or ``*`` ->
    the catch-all ``@domain``; 422 when an address names another domain."""
    text = source.strip()
    if text in ("@", "*", f"@{domain}"):
        return f"@{domain}"
    if "@" not in text:
        return f"{text}@{domain}"
    try:
        theirs = normalise_domain(text.rpartition("@")[2])
    except ValueError:
        raise ApiError(422, f"{text[:254]} is not a valid address") from None
    if theirs != domain:
        raise ApiError(422, f"the alias must be an address in {domain}")
    return text


@endpoint("GET", "/domains/{domain}/aliases", summary="List a domain's aliases",
          tags=["aliases"], query=AliasQuery, response=Page[Alias], access=Access.CONSOLE)
def list_aliases(ctx: Ctx, domain: str, query: AliasQuery) -> Page[Alias]:
    """The domain's aliases by source, then destination."""
    name = ctx.require_manage(domain)
    found, total = aliases.list_aliases_page(ctx.store, domains={name}, offset=query.offset,
                                             limit=query.limit, search=query.search)
    return Page[Alias].of([Alias.model_validate(a, from_attributes=True) for a in found],
                          total, query)


@endpoint("POST", "/domains/{domain}/aliases", summary="Add an alias", tags=["aliases"],
          body=AliasCreate, response=Alias, status=201, access=Access.CONSOLE)
def add_alias(ctx: Ctx, domain: str, body: AliasCreate) -> Alias:
    """Forward the source to the destination; 409 when that pair exists, 422 (with the way
    round) when mail would loop, or for a bad address."""
    name = ctx.require_manage(domain)
    found = aliases.add_alias(ctx.store, alias_source(name, body.source), body.destination,
                              delimiter=ctx.settings.recipient_delimiter)
    ctx.audit("alias added", source=found.source, destination=found.destination)
    return Alias.model_validate(found, from_attributes=True)


@endpoint("DELETE", "/domains/{domain}/aliases/{source}", summary="Remove an alias",
          tags=["aliases"], query=AliasDelete, status=204, access=Access.CONSOLE)
def remove_alias(ctx: Ctx, domain: str, source: str, query: AliasDelete) -> None:
    """Remove the alias (every destination of the source, or ``?destination=`` only); 404
    when none matched."""
    name = ctx.require_manage(domain)
    removed = aliases.remove_alias(ctx.store, alias_source(name, source), query.destination)
    ctx.audit("alias removed", source=alias_source(name, source),
              destination=query.destination, count=removed)
