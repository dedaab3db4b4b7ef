"""Logging in and out of the console."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from postroom.store import webaccess
from postroom_web import security
from postroom_web.auth import PENDING_SECONDS, LoginRefused
from postroom_web.framework import Access, Ctx, Redirect, page


@page("GET", "/login", template="login.html", access=Access.PUBLIC, title="Log in")
async def login_form(ctx: Ctx) -> dict[str, Any] | Redirect:
    next_path = security.local_path(ctx.args.get("next"))
    if ctx.principal is not None:
        return Redirect(next_path)
    return {"next": next_path, "login_csrf": ctx.app.login_csrf(ctx), "address": ""}


@page("POST", "/login", template="login.html", access=Access.PUBLIC, title="Log in")
async def login(ctx: Ctx) -> dict[str, Any] | Redirect:
    """The address and password through the same limiter and password store as IMAP and SMTP."""
    address = ctx.form.get("address", "")
    next_path = security.local_path(ctx.form.get("next"))
    try:
        done = await ctx.app.logins.login(address, ctx.form.get("password", ""),
                                          ctx.request.client)
    except LoginRefused as refused:
        ctx.status = refused.status
        return {"next": next_path, "login_csrf": ctx.app.login_csrf(ctx),
                "address": address[:320], "error": refused.message}
    if done.pending:
        # no session yet: only the second step's form can use this cookie
        ctx.set_cookie(security.PENDING_COOKIE, done.cookie_secret, max_age=PENDING_SECONDS)
        return Redirect("/login/code?next=" + quote(next_path, safe="/"))
    ctx.set_cookie(security.SESSION_COOKIE, done.cookie_secret,
                   max_age=max(1, int(ctx.settings.web_session_ttl)))
    ctx.set_cookie(security.LOGIN_CSRF_COOKIE, "", max_age=0)
    return Redirect(next_path)


def _pending_token(ctx: Ctx) -> str | None:
    return _cookie(ctx, security.PENDING_COOKIE)


def _cookie(ctx: Ctx, name: str) -> str | None:
    found = None
    for part in ctx.request.headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            found = value
    return found


@page("GET", "/login/code", template="login_code.html", access=Access.PUBLIC,
      title="Two-factor login")
async def second_factor_form(ctx: Ctx) -> dict[str, Any] | Redirect:
    next_path = security.local_path(ctx.args.get("next"))
    address = ctx.app.logins.pending_address(_pending_token(ctx))
    if address is None:
        return Redirect("/login")
    return {"next": next_path, "login_csrf": ctx.app.login_csrf(ctx), "address": address}


@page("POST", "/login/code", template="login_code.html", access=Access.PUBLIC,
      title="Two-factor login")
async def second_factor(ctx: Ctx) -> dict[str, Any] | Redirect:
    """A TOTP or recovery code for a login whose password was right; the session only now."""
    next_path = security.local_path(ctx.form.get("next"))
    token = _pending_token(ctx)
    try:
        done = await ctx.app.logins.second_factor(token, ctx.form.get("code", ""),
                                                  ctx.request.client)
    except LoginRefused as refused:
        address = ctx.app.logins.pending_address(token)
        if address is None:
            ctx.set_cookie(security.PENDING_COOKIE, "", max_age=0)
            return Redirect("/login", notice=refused.message)
        ctx.status = refused.status
        return {"next": next_path, "login_csrf": ctx.app.login_csrf(ctx), "address": address,
                "error": refused.message}
    ctx.set_cookie(security.PENDING_COOKIE, "", max_age=0)
    ctx.set_cookie(security.SESSION_COOKIE, done.cookie_secret,
                   max_age=max(1, int(ctx.settings.web_session_ttl)))
    ctx.set_cookie(security.LOGIN_CSRF_COOKIE, "", max_age=0)
    return Redirect(next_path)


@page("POST", "/logout", template=None, access=Access.USER, title="Log out")
def logout(ctx: Ctx) -> Redirect:
    if ctx.session_cookie:
        webaccess.delete_web_session(ctx.store, ctx.session_cookie)
    ctx.set_cookie(security.SESSION_COOKIE, "", max_age=0)
    return Redirect("/login")
