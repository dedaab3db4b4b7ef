"""/api/v1/domains: list (paginated; a manager sees only theirs), add (admins), change the
MTA-STS mode (managers)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from postroom.mailauth.mtasts import policy_id
from postroom.store import domains
from postroom.store.mtasts import set_mode
from postroom_web.framework import Access, Ctx, Page, PageQuery, endpoint, not_found


class Domain(BaseModel):
    """A local domain."""

    name: str = Field(description="The domain, lowercase (IDNs as A-labels).")
    created_at: datetime
    users: int = Field(description="Accounts in the domain.")
    aliases: int = Field(description="Aliases in the domain.")


class DomainQuery(PageQuery):
    search: str | None = Field(None, max_length=254,
                               description="Only domains whose name contains this.")


class DomainCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=253, description="The domain to add.")


@endpoint("GET", "/domains", summary="List domains", tags=["domains"], query=DomainQuery,
          response=Page[Domain], access=Access.CONSOLE)
def list_domains(ctx: Ctx, query: DomainQuery) -> Page[Domain]:
    """Every local domain by name (administrators), or the domains the caller manages."""
    found, total = domains.list_domains_page(ctx.store, offset=query.offset, limit=query.limit,
                                             names=ctx.visible_domains(), search=query.search)
    return Page[Domain].of([Domain.model_validate(d, from_attributes=True) for d in found],
                           total, query)


@endpoint("POST", "/domains", summary="Add a domain", tags=["domains"], body=DomainCreate,
          response=Domain, status=201, access=Access.ADMIN)
def add_domain(ctx: Ctx, body: DomainCreate) -> Domain:
    """Add a local domain; 409 when it exists already. With POSTROOM_ROLE_ADDRESS_TARGET set,
    its postmaster@ and abuse@ aliases are made at once."""
    info = domains.add_domain(ctx.store, body.name,
                              role_target=ctx.settings.role_address_target or None)
    return Domain.model_validate(info, from_attributes=True)


@endpoint("GET", "/domains/{domain}", summary="One domain", tags=["domains"],
          response=Domain, access=Access.CONSOLE)
def get_domain(ctx: Ctx, domain: str) -> Domain:
    """The domain with its numbers of users and aliases; 403 when the caller does not manage
    it, 404 when there is no such domain."""
    name = ctx.require_manage(domain)
    found, _ = domains.list_domains_page(ctx.store, names={name}, offset=0, limit=1,
                                         search=None)
    if not found:
        raise not_found(f"no domain {name}")
    return Domain.model_validate(found[0], from_attributes=True)


@endpoint("DELETE", "/domains/{domain}", summary="Remove a domain", tags=["domains"],
          status=204, access=Access.ADMIN)
def remove_domain(ctx: Ctx, domain: str) -> None:
    """Remove the domain with its aliases, DKIM keys, managers and tokens; 409 while it
    still has users."""
    name = ctx.require_manage(domain)
    domains.remove_domain(ctx.store, name)


class DomainChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mta_sts_mode: Literal["none", "testing", "enforce"] = Field(
        description="The MTA-STS policy served at https://mta-sts.DOMAIN/.well-known/"
                    "mta-sts.txt (none: no policy).")


class DomainPolicy(BaseModel):
    """A domain's MTA-STS mode and the id to publish in its _mta-sts TXT record."""

    name: str
    mta_sts_mode: str
    mta_sts_id: str = Field(description="The id= of the _mta-sts TXT record: publish "
                                        "`v=STSv1; id=<this>` after every change.")


@endpoint("PATCH", "/domains/{domain}", summary="Change a domain's MTA-STS mode",
          tags=["domains"], body=DomainChange, response=DomainPolicy, access=Access.CONSOLE)
def change_domain(ctx: Ctx, domain: str, body: DomainChange) -> DomainPolicy:
    """Set the MTA-STS mode (every change, even to the same mode, makes a new policy id, as
    `postroom domain mta-sts` does)."""
    name = ctx.require_manage(domain)
    sts = set_mode(ctx.store, name, body.mta_sts_mode)
    return DomainPolicy(name=sts.domain, mta_sts_mode=sts.mode,
                        mta_sts_id=policy_id(sts.stamp, sts.mode, [ctx.settings.hostname]))
