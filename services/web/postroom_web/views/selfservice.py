"""A user's own account (any logged-in account): password, app passwords, two-factor login.

Every change that makes a login stop working (a new password, a revoked app
password, two-factor login on or off) is announced after its transaction commits
(postroom.queue.authevents), so the mail services forget their cached logins at
once; that is why these handlers are ``async``: the store work commits in
``ctx.run`` before the announcement.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from postroom.auth.passwords import check_password_strength
from postroom.auth.totp import totp_qr_svg
from postroom.logs import get_logger
from postroom.queue import authevents
from postroom.store import apppasswords, totp, users, webaccess
from postroom.store.db import StoreSession
from postroom.store.errors import AlreadyExists
from postroom_web import security
from postroom_web.framework import Access, Ctx, Redirect, forbidden, page

log = get_logger("web.account")

PROTOCOL_LABELS = {"imap": "IMAP", "pop3": "POP3", "submission": "SMTP submission",
                   "managesieve": "ManageSieve"}
MAX_FIELD_CHARS = 1024


def _address(ctx: Ctx) -> str:
    """The logged-in account's address (an API token has no account of its own)."""
    if ctx.user.kind != "user":
        raise forbidden("an API token has no account of its own")
    return ctx.user.name


async def _announce(ctx: Ctx, address: str) -> None:
    """Tell every service to forget its cached logins of ``address`` (after the commit).

    Redis away: logged; the caches forget them when their entries expire anyway."""
    if ctx.redis is None:
        return
    try:
        await ctx.in_thread(authevents.publish, ctx.redis, ctx.settings.redis_prefix,
                            address.lower())
    except Exception as exc:  # noqa: BLE001 -- the change is made; the signal only hurries it
        log.warning("credentials change not announced", user=address, error=str(exc)[:200])


def _field(ctx: Ctx, name: str) -> str:
    return ctx.form.get(name, "")[:MAX_FIELD_CHARS]


# --- the account page

@page("GET", "/account", template="account/index.html", access=Access.USER, title="Your account")
def account_page(ctx: Ctx) -> dict[str, Any]:
    address = _address(ctx)
    status = totp.totp_status(ctx.store, address)
    app_passwords = [p for p in apppasswords.list_app_passwords(ctx.store, address)
                     if p.revoked_at is None]
    return {"title": "Your account", "address": address, "totp": status,
            "app_password_count": len(app_passwords), "hostname": ctx.settings.hostname}


# --- password

@page("GET", "/account/password", template="account/password.html", access=Access.USER,
      title="Change password")
def password_page(ctx: Ctx) -> dict[str, Any]:
    return {"title": "Change password", "address": _address(ctx),
            "min_length": ctx.settings.password_min_length}


def _change_password(session: StoreSession, address: str, old: str, new: str,
                     ttl: int) -> tuple[str, str] | None:
    """The new session (secret, csrf) when ``old`` is right and ``new`` is set, else None.

    Setting the password ends every web session of the account, this one too: the
    person who changed it gets a new one at once."""
    info = users.authenticate(session, address, old)
    if info is None:
        return None
    users.set_password(session, address, new)
    return webaccess.create_web_session(session, info.id, ttl)


@page("POST", "/account/password", template="account/password.html", access=Access.USER,
      title="Change password")
async def change_password(ctx: Ctx) -> dict[str, Any] | Redirect:
    address = _address(ctx)
    old, new, again = _field(ctx, "old_password"), _field(ctx, "new_password"), \
        _field(ctx, "new_password_again")
    values = {"title": "Change password", "address": address,
              "min_length": ctx.settings.password_min_length}
    if new != again:
        ctx.status = 422
        return {**values, "error": "The two new passwords differ."}
    try:
        check_password_strength(new, min_length=ctx.settings.password_min_length,
                                account=address)
    except ValueError as exc:
        ctx.status = 422
        return {**values, "error": str(exc)}
    logins = ctx.app.logins
    await logins.admit(ctx.request.client, address)
    done = await ctx.run(_change_password, address, old, new,
                         max(1, int(ctx.settings.web_session_ttl)))
    if done is None:
        await logins.failed(ctx.request.client, address)
        ctx.status = 422
        return {**values, "error": "The current password is not right."}
    await _announce(ctx, address)
    log.info("password changed", user=address, peer=ctx.request.client)
    ctx.set_cookie(security.SESSION_COOKIE, done[0],
                   max_age=max(1, int(ctx.settings.web_session_ttl)))
    return Redirect("/account", notice="Password changed. Your other web sessions have ended.")


# --- app passwords

def _app_passwords(session: StoreSession, address: str) -> list[Any]:
    return [p for p in apppasswords.list_app_passwords(session, address) if p.revoked_at is None]


def _app_password_values(ctx: Ctx, address: str, found: list[Any]) -> dict[str, Any]:
    return {"title": "App passwords", "address": address, "app_passwords": found,
            "protocols": PROTOCOL_LABELS}


@page("GET", "/account/app-passwords", template="account/app_passwords.html",
      access=Access.USER, title="App passwords")
def app_passwords_page(ctx: Ctx) -> dict[str, Any]:
    address = _address(ctx)
    status = totp.totp_status(ctx.store, address)
    return {**_app_password_values(ctx, address, _app_passwords(ctx.store, address)),
            "totp_enabled": status.enabled}


def _create_app_password(session: StoreSession, address: str, name: str,
                         protocols: list[str] | None) -> tuple[str, list[Any]]:
    secret = apppasswords.create(session, address, name, protocols)
    return secret, _app_passwords(session, address)


@page("POST", "/account/app-passwords", template="account/app_passwords.html",
      access=Access.USER, title="App passwords")
async def create_app_password(ctx: Ctx) -> dict[str, Any]:
    """Make one; its secret is on this answer only (not a redirect: nothing keeps it)."""
    address = _address(ctx)
    name = _field(ctx, "name").strip()
    chosen = [p for p in PROTOCOL_LABELS if ctx.form.get(f"protocol_{p}") == "on"]
    try:
        secret, found = await ctx.run(_create_app_password, address, name, chosen or None)
    except (AlreadyExists, ValueError) as exc:
        ctx.status = 422
        found = await ctx.run(_app_passwords, address)
        return {**_app_password_values(ctx, address, found), "error": str(exc),
                "name": name[:64]}
    log.info("app password created", user=address, name=name)
    return {**_app_password_values(ctx, address, found), "created_name": name,
            "created_secret": secret}


@page("POST", "/account/app-passwords/revoke", template=None, access=Access.USER,
      title="Revoke an app password")
async def revoke_app_password(ctx: Ctx) -> Redirect:
    address = _address(ctx)
    name = _field(ctx, "name")
    revoked = await ctx.run(apppasswords.revoke, address, name)
    if not revoked:
        return Redirect("/account/app-passwords", notice="There is no such app password.")
    await _announce(ctx, address)
    log.info("app password revoked", user=address, name=name)
    return Redirect("/account/app-passwords",
                    notice=f"App password {name[:64]} revoked: it no longer logs in.")


# --- two-factor login

def _two_factor_values(ctx: Ctx, address: str, status: totp.TotpStatus) -> dict[str, Any]:
    return {"title": "Two-factor login", "address": address, "totp": status}


@page("GET", "/account/two-factor", template="account/two_factor.html", access=Access.USER,
      title="Two-factor login")
def two_factor_page(ctx: Ctx) -> dict[str, Any]:
    address = _address(ctx)
    return _two_factor_values(ctx, address, totp.totp_status(ctx.store, address))


@page("POST", "/account/two-factor/begin", template="account/two_factor.html",
      access=Access.USER, title="Two-factor login")
def begin_two_factor(ctx: Ctx) -> dict[str, Any]:
    """A new secret for the authenticator app: a QR code and the secret as text."""
    address = _address(ctx)
    secret, uri = totp.begin_totp(ctx.store, address, keyring=ctx.app.logins.keyring)
    status = totp.TotpStatus(enabled=False, pending=True, recovery_codes_left=0)
    grouped = " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))
    return {**_two_factor_values(ctx, address, status), "secret": secret,
            "secret_grouped": grouped, "uri": uri, "qr": Markup(totp_qr_svg(uri))}  # noqa: S704 -- segno's SVG of our URI


@page("POST", "/account/two-factor/enable", template="account/two_factor.html",
      access=Access.USER, title="Two-factor login")
async def enable_two_factor(ctx: Ctx) -> dict[str, Any]:
    address = _address(ctx)
    try:
        codes = await ctx.run(totp.enable_totp, address, _field(ctx, "code").strip(),
                              keyring=ctx.app.logins.keyring)
    except ValueError as exc:  # InvalidCode, or on already
        ctx.status = 422
        status = await ctx.run(totp.totp_status, address)
        return {**_two_factor_values(ctx, address, status), "error": str(exc)}
    await _announce(ctx, address)
    log.info("two-factor login enabled", user=address)
    status = await ctx.run(totp.totp_status, address)
    return {**_two_factor_values(ctx, address, status), "recovery_codes": codes,
            "just_enabled": True}


def _check_both(session: StoreSession, user_id: int, address: str, password: str, code: str,
                keyring: Any) -> bool:
    if users.authenticate(session, address, password) is None:
        return False
    return totp.verify_second_factor(session, user_id, code, keyring=keyring)


def _disable(session: StoreSession, user_id: int, address: str, password: str, code: str,
             keyring: Any) -> bool:
    if not _check_both(session, user_id, address, password, code, keyring):
        return False
    totp.disable_totp(session, address)
    return True


def _regenerate(session: StoreSession, user_id: int, address: str, password: str, code: str,
                keyring: Any) -> list[str] | None:
    if not _check_both(session, user_id, address, password, code, keyring):
        return None
    return totp.regenerate_recovery_codes(session, address)


async def _password_and_code(ctx: Ctx, fn: Any) -> tuple[str, Any]:
    address = _address(ctx)
    logins = ctx.app.logins
    await logins.admit(ctx.request.client, address)
    result = await ctx.run(fn, ctx.user.user_id, address, _field(ctx, "password"),
                           _field(ctx, "code").strip(), logins.keyring)
    if not result:
        await logins.failed(ctx.request.client, address)
    return address, result


@page("POST", "/account/two-factor/disable", template="account/two_factor.html",
      access=Access.USER, title="Two-factor login")
async def disable_two_factor(ctx: Ctx) -> dict[str, Any] | Redirect:
    """Off again, with the password and a current code (or a recovery code)."""
    address, done = await _password_and_code(ctx, _disable)
    if not done:
        ctx.status = 422
        status = await ctx.run(totp.totp_status, address)
        return {**_two_factor_values(ctx, address, status),
                "error": "The password or the code is not right."}
    await _announce(ctx, address)
    log.info("two-factor login disabled", user=address)
    return Redirect("/account/two-factor", notice="Two-factor login is off: the password "
                    "logs in to mail clients again.")


@page("POST", "/account/two-factor/recovery-codes", template="account/two_factor.html",
      access=Access.USER, title="Two-factor login")
async def regenerate_recovery_codes(ctx: Ctx) -> dict[str, Any]:
    address, codes = await _password_and_code(ctx, _regenerate)
    status = await ctx.run(totp.totp_status, address)
    if not codes:
        ctx.status = 422
        return {**_two_factor_values(ctx, address, status),
                "error": "The password or the code is not right."}
    log.info("recovery codes replaced", user=address)
    return {**_two_factor_values(ctx, address, status), "recovery_codes": codes}

