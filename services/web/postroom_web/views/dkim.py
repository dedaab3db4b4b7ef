"""The DKIM page: one domain's keys with their records, and buttons for their lifecycle
(generate, activate once the record is published, rotate, retire)."""

from __future__ import annotations

import time
from typing import Any

from postroom.net.dns import Resolver
from postroom.ops.dnscheck import check_key_published
from postroom.store import dkim
from postroom_web.api.dkim import ALGORITHMS, DNS_CHECK_SECONDS, find_key, key_model
from postroom_web.framework import Access, Ctx, Redirect, page
from postroom_web.views.common import FORM_ERRORS, domain_choices, form_error


def _values(ctx: Ctx, domain: str | None) -> dict[str, Any]:
    choices = domain_choices(ctx)
    wanted = domain or ctx.args.get("domain", "").strip() or (choices[0] if choices else "")
    if not wanted:
        return {"domains": [], "domain": None, "keys": [], "title": "DKIM keys"}
    name = ctx.require_manage(wanted)
    keys = [key_model(k) for k in dkim.list_keys(ctx.store, name)]
    return {"domains": choices, "domain": name, "keys": keys, "title": f"DKIM keys of {name}"}


@page("GET", "/dkim", template="dkim.html", access=Access.CONSOLE, title="DKIM keys")
def dkim_page(ctx: Ctx) -> dict[str, Any]:
    return _values(ctx, None)


def _lifecycle(ctx: Ctx, domain: str, work: Any, notice: str,
               event: str) -> dict[str, Any] | Redirect:
    name = ctx.require_manage(domain)
    try:
        work(name)
    except FORM_ERRORS as exc:
        ctx.status = 422
        return {**_values(ctx, name), "error": form_error(exc)}
    ctx.audit(event, domain=name)
    ctx.announce_dkim(name)
    return Redirect(f"/dkim?domain={name}", notice=notice)


@page("POST", "/dkim/{domain}/generate", template="dkim.html", access=Access.CONSOLE)
def generate_form(ctx: Ctx, domain: str) -> dict[str, Any] | Redirect:
    algorithms = ALGORITHMS.get(ctx.form.get("algorithm", "both")) or ALGORITHMS["both"] or []
    selector = ctx.form.get("selector", "").strip()[:63] or None

    def work(name: str) -> None:
        for algorithm in algorithms:
            chosen = selector
            if chosen is not None and len(algorithms) > 1:
                chosen = f"{chosen}-{algorithm.partition('-')[0]}"
            dkim.generate_key(ctx.store, name, algorithm, chosen, keyring=ctx.app.keyring,
                              pending=True)

    return _lifecycle(ctx, domain, work, "New pending key(s): publish their records, then "
                                         "activate them.", "dkim keys generated")


@page("POST", "/dkim/{domain}/rotate", template="dkim.html", access=Access.CONSOLE)
def rotate_form(ctx: Ctx, domain: str) -> dict[str, Any] | Redirect:
    return _lifecycle(ctx, domain,
                      lambda name: dkim.rotate_keys(ctx.store, name, keyring=ctx.app.keyring),
                      "New pending successors: publish their records (keep the old ones), "
                      "then activate them.", "dkim keys rotated")


@page("POST", "/dkim/{domain}/{selector}/retire", template="dkim.html",
      access=Access.CONSOLE)
def retire_form(ctx: Ctx, domain: str, selector: str) -> dict[str, Any] | Redirect:
    return _lifecycle(ctx, domain,
                      lambda name: dkim.retire_key(ctx.store, name, selector),
                      f"Key {selector[:63]} retired: keep its record a week or so, then "
                      "remove it.", "dkim key retired")


@page("POST", "/dkim/{domain}/{selector}/activate", template="dkim.html",
      access=Access.CONSOLE)
async def activate_form(ctx: Ctx, domain: str, selector: str) -> dict[str, Any] | Redirect:
    name = await ctx.require_manage_async(domain)
    error = None
    try:
        key = await ctx.run(find_key, name, selector)
        if ctx.form.get("force") != "on":
            resolver = Resolver.from_settings(ctx.settings).until(
                time.monotonic() + DNS_CHECK_SECONDS)
            finding = await ctx.in_dns_thread(check_key_published, resolver, key)
            if not finding.ok:
                error = (f"{finding.name}: {finding.detail}. Publish the record first, or "
                         "tick 'without checking DNS'.")
        if error is None:
            retired = await ctx.run(dkim.activate_key, name, key.selector)
            ctx.audit("dkim key activated", domain=name, selector=key.selector,
                      forced=ctx.form.get("force") == "on", retired=retired)
            ctx.announce_dkim(name)
    except FORM_ERRORS as exc:
        error = form_error(exc)
    if error is not None:
        ctx.status = 422
        return {**await ctx.with_store(_values, name), "error": error}
    extra = f"; {', '.join(retired)} retired" if retired else ""
    return Redirect(f"/dkim?domain={name}", notice=f"Key {key.selector} is active{extra}.")

