"""/api/v1/domains/{domain}/dkim: a domain's DKIM keys and their lifecycle (generate,
activate once the record is published, rotate, retire). Private keys never leave."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from postroom.mailauth.dnsrecords import dkim_record, dkim_txt
from postroom.net.dns import Resolver
from postroom.ops.dnscheck import check_key_published
from postroom.store import dkim
from postroom.store.dkim import DkimKeyInfo
from postroom_web.framework import Access, ApiError, Ctx, Page, PageQuery, endpoint, not_found

ALGORITHMS = {"rsa": ["rsa-sha256"], "ed25519": ["ed25519-sha256"],
              "both": ["rsa-sha256", "ed25519-sha256"], "all": None}
SELECTOR = r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$"
# the DNS look-up before an activation, at most (the request's own limit is 30 s)
DNS_CHECK_SECONDS = 10.0


class DkimKey(BaseModel):
    """A DKIM key: its public part and DNS record, never its private key."""

    domain: str
    selector: str
    algorithm: str
    state: Literal["pending", "active", "retired"] = Field(
        description="pending: waits for its DNS record, does not sign; active: signs; "
                    "retired: no longer signs.")
    replaces: str | None = Field(description="The selector of the key it replaces (rotation).")
    encrypted: bool = Field(description="The private key is sealed with "
                                        "POSTROOM_SECRET_KEY_FILE's key.")
    created_at: datetime
    retired_at: datetime | None
    record_name: str = Field(description="Where its TXT record is published.")
    record_value: str = Field(description="The TXT record's text.")
    zone_line: str = Field(description="The record in zone-file syntax.")


class DkimGenerate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["rsa", "ed25519", "both"] = Field(
        "both", description="RSA-2048, ed25519 (RFC 8463), or one of each.")
    selector: str | None = Field(None, pattern=SELECTOR,
                                 description="Default: from the date and the key type.")


class DkimRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["rsa", "ed25519", "all"] = Field(
        "all", description="Rotate only the active keys of this type.")


class ActivateQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: bool = Field(False, description="Activate without looking the record up in DNS.")


class Activation(BaseModel):
    key: DkimKey
    retired: list[str] = Field(description="Selectors retired by it (the key it replaces).")


def key_model(key: DkimKeyInfo) -> DkimKey:
    plain = {"domain": key.domain, "selector": key.selector, "algorithm": key.algorithm,
             "public_key_b64": key.public_key_b64}
    return DkimKey(domain=key.domain, selector=key.selector, algorithm=key.algorithm,
                   state=key.state, replaces=key.replaces, encrypted=key.encrypted,  # type: ignore[arg-type]
                   created_at=key.created_at, retired_at=key.retired_at,
                   record_name=f"{key.selector}._domainkey.{key.domain}",
                   record_value=dkim_txt(plain), zone_line=dkim_record(plain))


def find_key(session: Any, domain: str, selector: str) -> DkimKeyInfo:
    for key in dkim.list_keys(session, domain):
        if key.selector == selector.strip().lower():
            return key
    raise not_found(f"no DKIM selector {selector[:63]} for {domain}")


@endpoint("GET", "/domains/{domain}/dkim", summary="List a domain's DKIM keys", tags=["dkim"],
          query=PageQuery, response=Page[DkimKey], access=Access.CONSOLE)
def list_keys(ctx: Ctx, domain: str, query: PageQuery) -> Page[DkimKey]:
    """Every key of the domain, oldest first."""
    name = ctx.require_manage(domain)
    found = dkim.list_keys(ctx.store, name)
    page = found[query.offset:query.offset + query.limit]
    return Page[DkimKey].of([key_model(k) for k in page], len(found), query)


@endpoint("POST", "/domains/{domain}/dkim", summary="Generate DKIM keys", tags=["dkim"],
          body=DkimGenerate, response=list[DkimKey], status=201, access=Access.CONSOLE)
def generate_keys(ctx: Ctx, domain: str, body: DkimGenerate) -> list[DkimKey]:
    """New pending keys (publish their records, then activate them); 409 when the selector
    is taken. A selector given with ``both`` gets -rsa and -ed25519 appended."""
    name = ctx.require_manage(domain)
    algorithms = ALGORITHMS[body.algorithm] or []
    created = []
    for algorithm in algorithms:
        selector = body.selector
        if selector is not None and len(algorithms) > 1:
            selector = f"{selector}-{algorithm.partition('-')[0]}"
        created.append(dkim.generate_key(ctx.store, name, algorithm, selector,
                                         keyring=ctx.app.keyring, pending=True))
    ctx.audit("dkim keys generated", domain=name, selectors=[k.selector for k in created])
    ctx.announce_dkim(name)
    return [key_model(k) for k in created]


@endpoint("POST", "/domains/{domain}/dkim/rotate", summary="Rotate DKIM keys", tags=["dkim"],
          body=DkimRotate, response=list[DkimKey], status=201, access=Access.CONSOLE)
def rotate_keys(ctx: Ctx, domain: str, body: DkimRotate) -> list[DkimKey]:
    """A pending successor for each active key; the old ones sign until the new ones are
    activated. 404 without an active key, 409 when one already has a pending successor."""
    name = ctx.require_manage(domain)
    created = {k.selector for k in dkim.rotate_keys(ctx.store, name, keyring=ctx.app.keyring,
                                                    algorithms=ALGORITHMS[body.algorithm])}
    ctx.audit("dkim keys rotated", domain=name, selectors=sorted(created))
    ctx.announce_dkim(name)
    # listed again: the list says which key each replaces
    return [key_model(k) for k in dkim.list_keys(ctx.store, name) if k.selector in created]


@endpoint("POST", "/domains/{domain}/dkim/{selector}/retire", summary="Retire a DKIM key",
          tags=["dkim"], response=DkimKey, access=Access.CONSOLE)
def retire_key(ctx: Ctx, domain: str, selector: str) -> DkimKey:
    """Stop signing with the key; keep its record published a week or so, then remove it."""
    name = ctx.require_manage(domain)
    key = find_key(ctx.store, name, selector)
    dkim.retire_key(ctx.store, name, key.selector)
    ctx.audit("dkim key retired", domain=name, selector=key.selector)
    ctx.announce_dkim(name)
    return key_model(find_key(ctx.store, name, key.selector))


@endpoint("POST", "/domains/{domain}/dkim/{selector}/activate", summary="Activate a DKIM key",
          tags=["dkim"], query=ActivateQuery, response=Activation, errors=(409,),
          access=Access.CONSOLE)
async def activate_key(ctx: Ctx, domain: str, selector: str,
                       query: ActivateQuery) -> Activation:
    """Make the key sign, after checking that DNS serves its record (``?force=true``
    skips that); the key it replaces is retired. 409 when the record is not published."""
    name = await ctx.require_manage_async(domain)
    key = await ctx.run(find_key, name, selector)
    if not query.force:
        resolver = Resolver.from_settings(ctx.settings).until(
            time.monotonic() + DNS_CHECK_SECONDS)
        finding = await ctx.in_dns_thread(check_key_published, resolver, key)
        if not finding.ok:
            raise ApiError(409, f"{finding.name}: {finding.detail}; publish the record "
                                "first (or activate with force)")
    retired = await ctx.run(dkim.activate_key, name, key.selector)
    ctx.audit("dkim key activated", domain=name, selector=key.selector, forced=query.force,
              retired=retired)
    ctx.announce_dkim(name)
    current = await ctx.run(find_key, name, key.selector)
    return Activation(key=key_model(current), retired=retired)
