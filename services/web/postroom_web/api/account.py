"""/api/v1/account: the caller's own account (a console session; an API token has none):
its app passwords, its vacation reply and filter rules, and a Sieve check, as the account
pages offer them (the Sieve part through the same functions as the pages)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from postroom.queue import authevents
from postroom.sieve import check_script
from postroom.sieve.simple import Rule, SimpleSettings, Vacation
from postroom.store import apppasswords, totp
from postroom_web.framework import Access, ApiError, Ctx, conflict, endpoint, forbidden, not_found
from postroom_web.views import mailfilters

Protocol = Literal["imap", "pop3", "submission", "managesieve"]


def _address(ctx: Ctx) -> str:
    if ctx.user.kind != "user":
        raise forbidden("an API token has no account of its own; log in as the user")
    return ctx.user.name


class Account(BaseModel):
    """The caller's account."""

    address: str
    two_factor: bool = Field(description="Two-factor login is on: mail clients log in with "
                                         "app passwords only.")
    recovery_codes_left: int


class AppPassword(BaseModel):
    """An app password, without its secret."""

    name: str
    protocols: list[str] | None = Field(description="The protocols it logs in to; null: all.")
    created_at: datetime
    last_used_at: datetime | None
    last_used_ip: str | None


class AppPasswordCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$",
                      description="The device or program it is for.")
    protocols: list[Protocol] | None = Field(None, max_length=4,
                                             description="Only these protocols; null: all.")


class AppPasswordCreated(AppPassword):
    secret: str = Field(description="The app password, shown only in this answer.")


class AppPasswordList(BaseModel):
    items: list[AppPassword]


class SieveCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    script: str = Field(max_length=1_000_000, description="A Sieve script (RFC 5228).")


class SieveProblem(BaseModel):
    line: int
    message: str


class SieveCheckResult(BaseModel):
    ok: bool
    problems: list[SieveProblem]


def _shape(info: apppasswords.AppPasswordInfo) -> AppPassword:
    return AppPassword(name=info.name, protocols=list(info.protocols) if info.protocols else None,
                       created_at=info.created_at, last_used_at=info.last_used_at,
                       last_used_ip=info.last_used_ip)


@endpoint("GET", "/account", summary="Your account", tags=["account"], response=Account,
          access=Access.USER)
def get_account(ctx: Ctx) -> Account:
    """The logged-in account: its address and two-factor state (403 for an API token)."""
    address = _address(ctx)
    status = totp.totp_status(ctx.store, address)
    return Account(address=address, two_factor=status.enabled,
                   recovery_codes_left=status.recovery_codes_left)


@endpoint("GET", "/account/app-passwords", summary="Your app passwords", tags=["account"],
          response=AppPasswordList, access=Access.USER)
def list_app_passwords(ctx: Ctx) -> AppPasswordList:
    """The account's live app passwords (never their secrets)."""
    found = apppasswords.list_app_passwords(ctx.store, _address(ctx))
    return AppPasswordList(items=[_shape(i) for i in found if i.revoked_at is None])


@endpoint("POST", "/account/app-passwords", summary="Make an app password", tags=["account"],
          body=AppPasswordCreate, response=AppPasswordCreated, status=201, access=Access.USER)
def create_app_password(ctx: Ctx, body: AppPasswordCreate) -> AppPasswordCreated:
    """A new app password; its secret is in this answer only. 409 when the name is taken."""
    address = _address(ctx)
    secret = apppasswords.create(ctx.store, address, body.name, body.protocols or None)
    found = [i for i in apppasswords.list_app_passwords(ctx.store, address)
             if i.name == body.name.strip() and i.revoked_at is None]
    if not found:
        raise not_found("the app password was not kept")
    return AppPasswordCreated(**_shape(found[0]).model_dump(), secret=secret)


@endpoint("DELETE", "/account/app-passwords/{name}", summary="Revoke an app password",
          tags=["account"], status=204, access=Access.USER)
async def revoke_app_password(ctx: Ctx, name: str) -> None:
    """Revoke it; the mail services forget its cached logins at once. 404 when there is none."""
    address = _address(ctx)
    if not await ctx.run(apppasswords.revoke, address, name[:200]):
        raise not_found("no such app password")
    if ctx.redis is not None:
        try:
            await ctx.in_thread(authevents.publish, ctx.redis, ctx.settings.redis_prefix,
                                address.lower())
        except Exception:  # noqa: BLE001,S110 -- revoked; the caches forget within a minute
            pass


@endpoint("POST", "/account/sieve/check", summary="Check a Sieve script", tags=["account"],
          body=SieveCheck, response=SieveCheckResult, access=Access.USER)
def check_sieve(ctx: Ctx, body: SieveCheck) -> SieveCheckResult:
    """The problems the server finds in a script (line and message), as it checks scripts
    before storing them; nothing is stored."""
    _address(ctx)
    problems = check_script(body.script, max_bytes=ctx.settings.sieve_max_script_bytes)
    return SieveCheckResult(ok=not problems, problems=[
        SieveProblem(line=p.line, message=p.message) for p in problems])


# --- the vacation reply and filter rules (one generated Sieve script, as on the pages)

class VacationSettings(BaseModel):
    """The vacation reply."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    start: date | None = Field(None, description="First day (UTC), inclusive.")
    end: date | None = Field(None, description="Last day (UTC), inclusive.")
    subject: str = Field("", max_length=200, pattern=r"^[^\r\n]*$")
    text: str = Field("", max_length=4000)
    days: int = Field(7, ge=1, le=365, description="Answer each sender once in this many days.")
    addresses: list[str] = Field([], max_length=10,
                                 description="Other addresses of the account to answer for.")


class FilterRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: Literal["from", "to", "subject"]
    contains: str = Field(min_length=1, max_length=200, pattern=r"^[^\r\n\x00]+$")
    action: Literal["fileinto", "addflag", "redirect", "stop"]
    target: str = Field("", max_length=200, pattern=r"^[^\r\n\x00]*$",
                        description="The folder (fileinto) or the address (redirect).")
    stop: bool = False


class MailHandling(BaseModel):
    """The vacation reply and filter rules the account pages edit."""

    model_config = ConfigDict(extra="forbid")

    vacation: VacationSettings
    rules: list[FilterRule] = Field([], max_length=50)
    replace_foreign: bool = Field(
        default=False,
        description="On PUT: replace an active script not written by these settings (else 409).")
    foreign: bool = Field(
        default=False,
        description="On GET: the active script was written by hand; these are not what runs.")


def _handling(current: mailfilters.Current) -> MailHandling:
    v = current.settings.vacation
    return MailHandling(
        vacation=VacationSettings(enabled=v.enabled,
                                  start=date.fromisoformat(v.start) if v.start else None,
                                  end=date.fromisoformat(v.end) if v.end else None,
                                  subject=v.subject, text=v.text, days=v.days,
                                  addresses=list(v.addresses)),
        rules=[FilterRule(field=r.field, contains=r.contains, action=r.action,  # type: ignore[arg-type]
                          target=r.target, stop=r.stop) for r in current.settings.rules],
        foreign=current.foreign)


def _user_id(ctx: Ctx) -> int:
    _address(ctx)
    assert ctx.user.user_id is not None
    return ctx.user.user_id


@endpoint("GET", "/account/mail-handling", summary="Your vacation reply and filter rules",
          tags=["account"], response=MailHandling, access=Access.USER)
def get_mail_handling(ctx: Ctx) -> MailHandling:
    """As the account pages show them; ``foreign`` when the active Sieve script was edited
    by hand (then these settings are not what runs)."""
    return _handling(mailfilters.load(ctx.store, _user_id(ctx)))


@endpoint("PUT", "/account/mail-handling", summary="Set your vacation reply and filter rules",
          tags=["account"], body=MailHandling, response=MailHandling, access=Access.USER,
          errors=(409,))
def put_mail_handling(ctx: Ctx, body: MailHandling) -> MailHandling:
    """Written as the Sieve script postroom-web and made active; 409 when the active script
    was written by hand and ``replace_foreign`` is false, 422 with what is wrong."""
    user_id = _user_id(ctx)
    current = mailfilters.load(ctx.store, user_id)
    if current.foreign and not body.replace_foreign:
        raise conflict("the active Sieve script was written by hand; set replace_foreign")
    v = body.vacation
    settings = SimpleSettings(
        Vacation(enabled=v.enabled, start=v.start.isoformat() if v.start else None,
                 end=v.end.isoformat() if v.end else None, subject=v.subject, text=v.text,
                 days=v.days, addresses=tuple(v.addresses)),
        tuple(Rule(r.field, r.contains, r.action, r.target, r.stop) for r in body.rules))
    problems = mailfilters.save_simple(
        ctx.store, user_id, current, settings, replace_foreign=True,
        max_bytes=ctx.settings.sieve_max_script_bytes,
        max_scripts=ctx.settings.sieve_max_scripts)
    if problems:
        raise ApiError(422, "; ".join(problems)[:1000])
    return _handling(mailfilters.load(ctx.store, user_id))
