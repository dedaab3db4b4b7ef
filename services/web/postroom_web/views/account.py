"""Logging in and out of the console."""

from __future__ import annotations

from typing import Any

from postroom.store import webaccess
from postroom_web import security
from postroom_web.auth import LoginRefused
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
