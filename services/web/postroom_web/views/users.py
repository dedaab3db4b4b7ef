"""The users pages: a paginated, searchable list (every visible domain or one), a form to
add one, and one account's page to change its password, quota, state and admin flag."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from postroom.store import users, webaccess
from postroom_web.api.users import account, quota_bytes, require_change, strong_password
from postroom_web.framework import Access, Ctx, Redirect, page
from postroom_web.views.common import (
    FORM_ERRORS,
    chosen_domain,
    domain_choices,
    form_error,
    page_query,
    pager_args,
    search_arg,
)


@page("GET", "/users", template="users.html", access=Access.CONSOLE, title="Users")
def users_page(ctx: Ctx) -> dict[str, Any]:
    choices = domain_choices(ctx)
    domain = chosen_domain(ctx)
    query, search = page_query(ctx), search_arg(ctx)
    visible = {domain} if domain else ctx.visible_domains()
    found, total = users.list_users_page(ctx.store, domains=visible, offset=query.offset,
                                         limit=query.limit, search=search or None,
                                         with_usage=True)
    return {"users": found, "total": total, "query": query, "domains": choices,
            "domain": domain, "search": search, "title": "Users",
            "pager_args": pager_args(domain=domain, search=search)}


@page("POST", "/users", template="users.html", access=Access.CONSOLE, title="Users")
def add_user_form(ctx: Ctx) -> dict[str, Any] | Redirect:
    form = ctx.form
    domain = ctx.require_manage(form.get("domain", ""))
    address = f"{form.get('localpart', '').strip()}@{domain}"
    try:
        is_admin = form.get("is_admin") == "on"
        if is_admin:
            ctx.require_admin()
        users.add_user(ctx.store, address, strong_password(ctx, form.get("password", ""), address),
                       quota_bytes=quota_bytes(form.get("quota", "").strip() or None),
                       is_admin=is_admin)
        ctx.audit("user added", address=address.lower(), admin=is_admin)
    except FORM_ERRORS as exc:
        ctx.status = 422
        return {**users_page(ctx), "error": form_error(exc),
                "localpart": form.get("localpart", "")[:64], "form_domain": domain}
    return Redirect(f"/users/{quote(address.lower(), safe='@')}",
                    notice=f"User {address.lower()} added.")


def _account_values(ctx: Ctx, address: str) -> dict[str, Any]:
    info = account(ctx, address)
    managed = [d for a, d in webaccess.managers(ctx.store) if a == info.address] \
        if ctx.user.is_admin else []
    return {"account": info, "managed": managed, "title": info.address,
            "may_change": webaccess.may_change_account(ctx.store, ctx.user, info.address)}


@page("GET", "/users/{address}", template="user.html", access=Access.CONSOLE, title="User")
def user_page(ctx: Ctx, address: str) -> dict[str, Any]:
    return _account_values(ctx, address)


def _apply(ctx: Ctx, address: str, action: str) -> str:
    """Do what one of the account page's forms asks; the notice to show."""
    form = ctx.form
    if action == "password":
        users.set_password(ctx.store, address,
                           strong_password(ctx, form.get("password", ""), address))
        return "Password changed; the account's console sessions ended."
    if action == "quota":
        users.set_quota(ctx.store, address, quota_bytes(form.get("quota", "").strip() or None))
        return "Quota changed."
    if action in ("enable", "disable"):
        users.set_user_active(ctx.store, address, action == "enable")
        return f"Account {action}d."
    if action in ("admin", "unadmin"):
        ctx.require_admin()
        webaccess.set_admin(ctx.store, address, action == "admin")
        return "Now a global admin." if action == "admin" else "No longer a global admin."
    raise ValueError("unknown action")


@page("POST", "/users/{address}", template="user.html", access=Access.CONSOLE)
def change_user_form(ctx: Ctx, address: str) -> dict[str, Any] | Redirect:
    info = account(ctx, address)
    require_change(ctx, info.address)
    action = ctx.form.get("action", "")
    if action == "remove":
        users.remove_user(ctx.store, info.address)
        ctx.audit("user removed", address=info.address)
        return Redirect(f"/users?domain={info.domain}", notice=f"User {info.address} removed.")
    try:
        notice = _apply(ctx, info.address, action)
        ctx.audit("user changed", address=info.address, fields=[action])
    except FORM_ERRORS as exc:
        ctx.status = 422
        return {**_account_values(ctx, info.address), "error": form_error(exc)}
    return Redirect(f"/users/{quote(info.address, safe='@')}", notice=notice)
