"""/api/v1/dmarc: the domains with DMARC data, a domain's dashboard, its sources and reporters.

Who sees what (postroom_web.dmarc.console): admins every domain with data, ours or a
sender's; a manager only its domains and their subdomains. A domain the caller may not
see is 403 whether or not it has data; one it may see that is neither ours nor has data
is 404.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from postroom.store import dmarcstats
from postroom.store.db import StoreSession
from postroom.store.webaccess import Principal
from postroom_web.dmarc import console
from postroom_web.dmarc.dashboard import (
    SOURCES_LIMIT,
    dashboard_json,
    reporter_row,
    source_row,
)
from postroom_web.dmarc.sources import SourceName
from postroom_web.framework import (
    Access,
    ApiError,
    Ctx,
    Page,
    PageQuery,
    endpoint,
    forbidden,
    not_found,
)

T = TypeVar("T")
Rate = Field(None, ge=0, le=100, description="Percent of the messages, None without any.")
Count = Field(ge=0)


# --- responses

class DmarcDomain(BaseModel):
    domain: str
    local: bool = Field(description="One of our domains (or a subdomain of one).")
    seen: bool = Field(description="Our verdicts on mail from it exist.")
    reported: bool = Field(description="Aggregate reports about it were received.")


class Rates(BaseModel):
    messages: int = Count
    spf_pass: int = Field(ge=0, description="Messages with an aligned SPF pass.")
    dkim_pass: int = Field(ge=0, description="Messages with an aligned DKIM pass.")
    dmarc_pass: int = Field(ge=0, description="Messages passing DMARC.")
    dmarc_fail: int = Count
    spf_rate: float | None = Rate
    dkim_rate: float | None = Rate
    dmarc_rate: float | None = Rate


class Total(Rates):
    origin: Literal["seen", "reported", "both"]
    sources: int | None = Field(None, ge=0, description="Distinct addresses (seen).")
    days: int | None = Field(None, ge=0, description="UTC days with data.")
    reports: int | None = Field(None, ge=0, description="Aggregate reports (reported).")


class RateBucket(Rates):
    bucket: str = Field(description="The hour or day, as the charts label it.")
    start: datetime


class VolumeBucket(BaseModel):
    bucket: str
    start: datetime
    seen: int = Count
    reported: int = Count
    messages: int = Count
    dmarc_pass: int = Count
    dmarc_fail: int = Count


class Source(Rates):
    source_ip: str
    origin: Literal["seen", "reported"]
    ptr: str = Field(description="The reverse name, or \u2014 when not known (yet).")
    confirmed: bool = Field(description="The reverse name resolves back to the address.")
    organisation: str = Field(description="Who sends from it (confirmed names only), or \u2014.")
    header_from: str = Field(description="The From: domains it used, comma-separated.")
    last_seen: datetime | None
    status: Literal["passes", "fails", "mixed"]


class Reporter(Rates):
    org_name: str
    reports: int = Count
    first_begin: datetime | None
    last_end: datetime | None
    disposition_none: int = Count
    disposition_quarantine: int = Count
    disposition_reject: int = Count


class ReadinessOut(BaseModel):
    verdict: Literal["no_data", "not_ready", "ready_for_quarantine", "ready_for_reject"]
    reasons: list[str]
    dns_record: str | None = Field(description="The zone line to publish next; None: nothing.")
    current_record: str | None
    policy: str | None = Field(description="The current record's p=.")
    problem_sources: list[str] = Field(description="Addresses holding the verdict back.")


class DmarcDashboard(BaseModel):
    """A domain's DMARC figures over a range (both origins), and its readiness."""

    domain: str
    start: datetime
    end: datetime
    bucket: Literal["hour", "day"]
    totals: list[Total]
    rates: list[RateBucket]
    volume: list[VolumeBucket]
    sources: list[Source] = Field(description=f"Up to {SOURCES_LIMIT} per origin.")
    failing_sources: list[Source]
    reporters: list[Reporter]
    readiness: ReadinessOut
    names_pending: int = Field(ge=0, description="Addresses whose names were not known in "
                                                 "time (asked again on a later call).")
    notes: list[str]


# --- queries

class RangeQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: datetime | None = Field(None, description="From (default: 7 days before the end); "
                                                     "no zone: UTC.")
    end: datetime | None = Field(None, description="Up to, not included (default: now).")


class SourcesQuery(PageQuery):
    start: datetime | None = Field(None, description="As for the dashboard.")
    end: datetime | None = Field(None, description="As for the dashboard.")
    origin: Literal["seen", "reported"] | None = Field(
        None, description="Only our verdicts (seen) or only the reports' rows (reported).")


# --- handlers

async def visible_run(ctx: Ctx, fn: Callable[..., T], domain: str, *args: Any) -> T:
    """``fn(session, principal, domain, *args)`` in a ``db`` transaction, its visibility
    checks (postroom_web.dmarc.console) answered as 403 and 404."""
    try:
        return await ctx.run(fn, ctx.user, domain, *args)
    except console.Hidden as exc:
        raise forbidden(f"you may not see the DMARC data of {exc}") from None
    except console.NoData as exc:
        raise not_found(f"no DMARC data for {exc}") from None


def _range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    try:
        return console.api_range(start, end, datetime.now(UTC))
    except dmarcstats.RangeError as exc:
        raise ApiError(422, str(exc), details=[{"loc": ["query", "start"], "msg": str(exc),
                                                "type": "range"}]) from None


def domains_seen_by(session: StoreSession, principal: Principal) -> list[DmarcDomain]:
    """The domains with data ``principal`` may see (ours first, then by name)."""
    return [DmarcDomain(domain=d.domain, local=d.local, seen=d.seen, reported=d.reported)
            for d in dmarcstats.domains_with_data(session, local_only=not principal.is_admin)
            if console.may_see(principal, d.domain)]


@endpoint("GET", "/dmarc/domains", summary="Domains with DMARC data", tags=["dmarc"],
          query=PageQuery, response=Page[DmarcDomain], access=Access.CONSOLE)
async def list_dmarc_domains(ctx: Ctx, query: PageQuery) -> Page[DmarcDomain]:
    """Every domain with verdicts or aggregate reports that the caller may see, ours first,
    then by name: administrators also the sender domains only seen in the From: of mail we
    received; a manager its own domains and their subdomains only."""
    found: list[DmarcDomain] = await ctx.run(domains_seen_by, ctx.user)
    return Page[DmarcDomain].of(found[query.offset:query.offset + query.limit], len(found),
                                query)


@endpoint("GET", "/dmarc/{domain}", summary="A domain's DMARC dashboard", tags=["dmarc"],
          query=RangeQuery, response=DmarcDashboard, access=Access.CONSOLE)
async def get_dmarc_dashboard(ctx: Ctx, domain: str, query: RangeQuery) -> dict[str, Any]:
    """Totals, pass rates and volume per hour (ranges up to two days) or day, sources (with
    reverse names and organisations where known), the top failing sources, what each
    reporting receiver said, and the readiness for p=quarantine / p=reject with the DNS
    record to publish. The range is at most 400 days; default the last 7 days."""
    start, end = _range(query.start, query.end)
    figures, local = await visible_run(ctx, console.load, domain, start, end)
    dashboard = await ctx.app.dmarc.assemble(figures, local=local)
    return dashboard_json(dashboard)


def _source_page(session: StoreSession, principal: Principal, domain: str,
                 query: SourcesQuery, start: datetime, end: datetime,
                 ) -> tuple[list[dmarcstats.SourceCounts], int]:
    seen = console.visible_domain(session, principal, domain)
    return dmarcstats.source_page(session, seen.domain, start, end, origin=query.origin,
                                  offset=query.offset, limit=query.limit)


@endpoint("GET", "/dmarc/{domain}/sources", summary="A domain's sending sources",
          tags=["dmarc"], query=SourcesQuery, response=Page[Source], access=Access.CONSOLE)
async def list_dmarc_sources(ctx: Ctx, domain: str, query: SourcesQuery) -> Page[Source]:
    """Every sending address over the range, the busiest first, one row per origin, with
    its pass rates, status and (where known) reverse name and organisation."""
    start, end = _range(query.start, query.end)
    rows, total = await visible_run(ctx, _source_page, domain, query, start, end)
    names: dict[str, SourceName] = await ctx.app.dmarc.lookup([r.source_ip for r in rows])
    items = [Source.model_validate(source_row(r, names)) for r in rows]
    return Page[Source].of(items, total, query)


@endpoint("GET", "/dmarc/{domain}/reporters", summary="What receivers report about a domain",
          tags=["dmarc"], query=RangeQuery, response=list[Reporter], access=Access.CONSOLE)
async def list_dmarc_reporters(ctx: Ctx, domain: str, query: RangeQuery) -> list[Reporter]:
    """Per reporting organisation (Google, Microsoft, ...): its aggregate reports about the
    domain whose period begins in the range, their messages, aligned SPF / DKIM and DMARC
    pass rates, and what it did with the mail."""
    start, end = _range(query.start, query.end)
    found = await visible_run(ctx, console.load_reporters, domain, start, end)
    return [Reporter.model_validate(reporter_row(r)) for r in found]
