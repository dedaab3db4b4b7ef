"""/api/v1/domains/{domain}/dns: the records a domain should publish (what `postroom dns`
prints) and, under /dns/check, whether DNS serves them now."""

from __future__ import annotations

import functools
import time
from typing import Literal

from pydantic import BaseModel, Field

from postroom.net.dns import Resolver
from postroom.ops.dnscheck import RecordCheck, check_records, domain_records
from postroom.store import dkim, mtasts
from postroom_web.framework import Access, Ctx, endpoint

# the whole live check, at most (each lookup also within POSTROOM_DNS_TIMEOUT)
DNS_CHECK_SECONDS = 10.0


class DnsRecord(BaseModel):
    """One record to publish, and (checked) what DNS serves there."""

    kind: Literal["MX", "SPF", "DKIM", "DMARC", "MTA-STS", "MTA-STS-HOST", "TLS-RPT"]
    name: str = Field(description="The owner name.")
    type: Literal["MX", "TXT", "CNAME"]
    value: str = Field(description="The expected value (a TXT record's text; the zone data "
                                   "of MX and CNAME).")
    zone_line: str = Field(description="The record in zone-file syntax, to paste.")
    selector: str | None = Field(None, description="DKIM: the key's selector.")
    state: Literal["active", "pending"] | None = Field(
        None, description="DKIM: the key's state (a pending key does not sign yet).")
    status: Literal["published", "missing", "wrong", "unknown"] | None = Field(
        None, description="published (and right), missing, wrong (something else is "
                          "there), unknown (no answer in time); null: not checked.")
    detail: str = Field("", description="What the check found, for people.")
    found: list[str] = Field(default_factory=list, description="What DNS serves there.")


class DnsReport(BaseModel):
    domain: str
    hostname: str = Field(description="The host the MX and MTA-STS records name "
                                      "(POSTROOM_HOSTNAME).")
    checked: bool
    records: list[DnsRecord]


def report(domain: str, hostname: str, checks: list[RecordCheck], checked: bool) -> DnsReport:
    return DnsReport(domain=domain, hostname=hostname, checked=checked, records=[
        DnsRecord(kind=c.record.kind, name=c.record.name, type=c.record.type,  # type: ignore[arg-type]
                  value=c.record.value, zone_line=c.record.zone_line,
                  selector=c.record.selector, state=c.record.state,  # type: ignore[arg-type]
                  status=c.status,  # type: ignore[arg-type]
                  detail=c.detail, found=list(c.found)) for c in checks])


@endpoint("GET", "/domains/{domain}/dns", summary="The DNS records to publish", tags=["dns"],
          response=DnsReport, access=Access.CONSOLE)
def domain_dns(ctx: Ctx, domain: str) -> DnsReport:
    """MX, SPF, DKIM (active and pending keys), DMARC, MTA-STS and TLS-RPT, as `postroom
    dns` prints them; not looked up (see /dns/check)."""
    name = ctx.require_manage(domain)
    keys = dkim.list_keys(ctx.store, name)
    hostname = ctx.settings.hostname
    sts = mtasts.get_setting(ctx.store, name)
    return report(name, hostname, domain_records(name, hostname, keys, mta_sts=sts), False)


async def live_check(ctx: Ctx, name: str) -> DnsReport:
    """The records of ``name`` (the caller checked who asks) each looked up now, within
    DNS_CHECK_SECONDS in all; nothing is changed (pending keys are activated apart)."""
    keys = await ctx.run(dkim.list_keys, name)
    sts = await ctx.run(mtasts.get_setting, name)
    hostname = ctx.settings.hostname
    resolver = Resolver.from_settings(ctx.settings).until(time.monotonic() + DNS_CHECK_SECONDS)
    checks = await ctx.in_dns_thread(functools.partial(check_records, mta_sts=sts),
                                     resolver, name, hostname, keys)
    return report(name, hostname, checks, True)


@endpoint("GET", "/domains/{domain}/dns/check", summary="Check the DNS records",
          tags=["dns"], response=DnsReport, access=Access.CONSOLE)
async def check_domain_dns(ctx: Ctx, domain: str) -> DnsReport:
    """Each record of /dns looked up now through POSTROOM_DNS_SERVERS: published, missing,
    wrong, or unknown (no answer within 10 seconds in all)."""
    name = await ctx.require_manage_async(domain)
    return await live_check(ctx, name)
