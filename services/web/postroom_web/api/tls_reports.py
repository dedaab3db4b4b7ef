"""/api/v1/tls-reports/{domain} (TLS reports, RFC 8460) and /api/v1/domains/{domain}/doctor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from postroom.net.dns import Resolver
from postroom.ops import doctor
from postroom.store import dkim, domains, tlsreports
from postroom.store.db import StoreSession
from postroom_web.framework import Access, Ctx, PageQuery, endpoint, forbidden, not_found

# the console's doctor waits at most this long per HTTPS fetch and TCP connect
DOCTOR_TIMEOUT = 3.0


class TLSReport(BaseModel):
    """A TLS report another sender sent about the domain (its policies for the domain only)."""

    org_name: str
    report_id: str
    begin_at: datetime
    end_at: datetime
    received_at: datetime
    successful: int = Field(description="Sessions that negotiated TLS under the policy.")
    failed: int = Field(description="Sessions that failed.")
    policies: list[dict[str, Any]] = Field(
        description="The report's `policies` entries for this domain, as RFC 8460 names them.")


class TLSReports(BaseModel):
    domain: str
    days: int
    reports: list[TLSReport]
    outbound: dict[str, Any] = Field(
        description="Our own sessions to this domain in the period: `successful` and "
                    "`failures` by RFC 8460 result type.")


class TLSQuery(PageQuery):
    days: int = Field(30, ge=1, le=400, description="Reports ending in the last DAYS days.")


@endpoint("GET", "/tls-reports/{domain}", summary="TLS reports about a domain",
          tags=["tls"], query=TLSQuery, response=TLSReports, access=Access.CONSOLE)
def tls_reports(ctx: Ctx, domain: str, query: TLSQuery) -> TLSReports:
    """The TLS reports (RFC 8460) other senders sent about the domain, newest first, and our
    own outbound TLS results for it (read from the report mailbox by the dmarc service)."""
    name = ctx.require_manage(domain)
    since = datetime.now(UTC) - timedelta(days=query.days)
    rows = tlsreports.incoming_reports(ctx.store, name, since=since, limit=query.limit)
    return TLSReports(domain=name, days=query.days,
                      reports=[TLSReport.model_validate(r, from_attributes=True) for r in rows],
                      outbound=tlsreports.outbound_summary(ctx.store, name, since))


class DoctorCheck(BaseModel):
    name: str
    status: str = Field(description="pass, warn or fail")
    detail: str
    fix: str


class DoctorAnswer(BaseModel):
    domain: str
    summary: dict[str, int]
    checks: list[DoctorCheck]


def _keys_of(session: StoreSession, name: str) -> list[Any] | None:
    """The domain's DKIM keys, or None when it is not one of ours."""
    if not domains.is_local_domain(session, name):
        return None
    return dkim.list_keys(session, name)


async def diagnose(ctx: Ctx, domain: str) -> dict[str, Any]:
    """`postroom doctor DOMAIN` for the console: the same checks, shorter timeouts."""
    name = domain.lower().rstrip(".")
    if not ctx.user.can_manage(name):
        raise forbidden(f"you do not manage {name}")
    keys = await ctx.run(_keys_of, name)
    if keys is None:
        raise not_found(f"no domain {name}")
    facts = doctor.facts_from_settings(ctx.settings, name, keys)
    resolver = Resolver.from_settings(ctx.settings)
    checks = await ctx.in_thread(doctor.run_checks, resolver,
                                 doctor.NetProbes(timeout=DOCTOR_TIMEOUT), facts)
    return doctor.as_json(name, checks)


@endpoint("GET", "/domains/{domain}/doctor", summary="Deliverability checks of a domain",
          tags=["domains"], response=DoctorAnswer, access=Access.CONSOLE)
async def domain_doctor(ctx: Ctx, domain: str) -> DoctorAnswer:
    """What `postroom doctor DOMAIN --json` prints: each check (pass, warn, fail) with its fix."""
    return DoctorAnswer.model_validate(await diagnose(ctx, domain))
