"""Mail clients that configure themselves: Thunderbird autoconfig, Outlook autodiscover (both
public, as the clients ask before any login) and the logged-in user's Apple profile."""

from __future__ import annotations

from postroom.ops import autoconfig
from postroom_web.framework import Access, Ctx, Raw, page

XML = "application/xml; charset=utf-8"


async def _thunderbird(ctx: Ctx) -> Raw:
    address = autoconfig.plausible_address(ctx.args.get("emailaddress"))
    return Raw(autoconfig.thunderbird_config(ctx.settings.hostname, address), XML)


@page("GET", "/.well-known/autoconfig/mail/config-v1.1.xml", template=None,
      access=Access.PUBLIC, title="Thunderbird autoconfig")
async def autoconfig_well_known(ctx: Ctx) -> Raw:
    return await _thunderbird(ctx)


@page("GET", "/mail/config-v1.1.xml", template=None, access=Access.PUBLIC,
      title="Thunderbird autoconfig (autoconfig.<domain>)")
async def autoconfig_host(ctx: Ctx) -> Raw:
    return await _thunderbird(ctx)


async def _autodiscover(ctx: Ctx) -> Raw:
    try:
        address = autoconfig.autodiscover_address(ctx.body)
    except autoconfig.BadAutodiscover:
        ctx.status = 400
        return Raw(b'<?xml version="1.0" encoding="utf-8"?>\n<Autodiscover xmlns="'
                   + autoconfig.RESPONSE_NS.encode() + b'"><Response><Error><ErrorCode>600'
                   b'</ErrorCode><Message>Invalid Request</Message></Error></Response>'
                   b'</Autodiscover>', XML)
    return Raw(autoconfig.autodiscover_response(ctx.settings.hostname, address), XML)


@page("POST", "/autodiscover/autodiscover.xml", template=None, access=Access.PUBLIC,
      title="Outlook autodiscover", raw_body=True)
async def autodiscover(ctx: Ctx) -> Raw:
    return await _autodiscover(ctx)


@page("POST", "/Autodiscover/Autodiscover.xml", template=None, access=Access.PUBLIC,
      title="Outlook autodiscover", raw_body=True)
async def autodiscover_capitalised(ctx: Ctx) -> Raw:
    return await _autodiscover(ctx)


@page("GET", "/account/mail.mobileconfig", template=None, access=Access.USER,
      title="Apple configuration profile")
async def mobileconfig(ctx: Ctx) -> Raw:
    address = ctx.user.name
    return Raw(autoconfig.mobileconfig(ctx.settings.hostname, address),
               autoconfig.MOBILECONFIG_TYPE, filename="postroom-mail.mobileconfig")
