"""/api/v1 users of a domain (list, add, change, remove) and its managers (admins only)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from postroom.auth.passwords import check_password_strength
from postroom.config import parse_quota
from postroom.store import users, webaccess
from postroom.store.addresses import login_name
from postroom.store.users import UserInfo
from postroom_web.framework import (
    Access,
    Ctx,
    Page,
    PageQuery,
    endpoint,
    forbidden,
    not_found,
)

# quotas: bytes (a bigint column), or a size such as "2G", or null for none
MAX_QUOTA = 2**62
Quota = int | str | None


class User(BaseModel):
    """A mail account."""

    address: str
    domain: str
    active: bool = Field(description="False: no logins and no delivery.")
    is_admin: bool = Field(description="A global admin of the console and API.")
    quota_bytes: int | None = Field(description="Storage quota in bytes; null: none.")
    used_bytes: int | None = Field(None, description="What its mailboxes hold (lists only).")
    created_at: datetime


class UserQuery(PageQuery):
    search: str | None = Field(None, max_length=254,
                               description="Only accounts whose address contains this.")


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    localpart: str = Field(min_length=1, max_length=64, description="The part before the @.")
    password: str = Field(min_length=1, max_length=1024,
                          description="At least POSTROOM_PASSWORD_MIN_LENGTH characters, not "
                                      "a common password, not the address.")
    quota: int | str | None = Field(None, description="Bytes, or a size such as 500M or 2G; "
                                                      "null: no quota.")
    is_admin: bool = Field(False, description="Make it a global admin (admins only).")


class UserPatch(BaseModel):
    """Only the fields sent change; ``quota: null`` removes the quota."""

    model_config = ConfigDict(extra="forbid")

    password: str | None = Field(None, min_length=1, max_length=1024,
                                 description="A new password (ends its console sessions).")
    quota: int | str | None = Field(None, description="Bytes, or a size such as 2G; null: "
                                                      "no quota.")
    active: bool | None = Field(None, description="false disables logins and delivery.")
    is_admin: bool | None = Field(None, description="Global admin flag (admins only).")


class Manager(BaseModel):
    """An account that manages a domain in the console."""

    address: str
    domain: str


class ManagerAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=3, max_length=254, description="An existing account.")


def quota_bytes(value: Quota) -> int | None:
    """Bytes of a quota given as bytes, a size ("2G") or null; ValueError (422) otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_quota(value)
    if not 0 <= value <= MAX_QUOTA:
        raise ValueError(f"quota must be between 0 and {MAX_QUOTA} bytes")
    return value


def strong_password(ctx: Ctx, password: str, address: str) -> str:
    """The password, or 422 saying why it is refused (the CLI's rule)."""
    check_password_strength(password, min_length=ctx.settings.password_min_length,
                            account=address)
    return password


def account(ctx: Ctx, address: str) -> UserInfo:
    """The account at ``address`` when the caller manages its domain: 403 when it does not
    (whether or not the account exists), 404 when there is none."""
    normal = login_name(address)
    if normal is None:
        raise not_found("no such user")
    ctx.require_manage(normal.rpartition("@")[2])
    found = users.get_user(ctx.store, normal)
    if found is None:
        raise not_found(f"no user {normal}")
    return found


def require_change(ctx: Ctx, address: str) -> None:
    """403 unless the caller may change this account (docs/web.md, "Who may do what")."""
    if not webaccess.may_change_account(ctx.store, ctx.user, address):
        raise forbidden("only administrators may change an administrator's account or the "
                        "account of a manager of other domains")


def _user(info: UserInfo) -> User:
    return User(address=info.address, domain=info.domain, active=info.active,
                is_admin=info.is_admin, quota_bytes=info.quota_bytes, used_bytes=None,
                created_at=info.created_at)


@endpoint("GET", "/domains/{domain}/users", summary="List a domain's users", tags=["users"],
          query=UserQuery, response=Page[User], access=Access.CONSOLE)
def list_users(ctx: Ctx, domain: str, query: UserQuery) -> Page[User]:
    """The domain's accounts by address, with what their mailboxes hold."""
    name = ctx.require_manage(domain)
    found, total = users.list_users_page(ctx.store, domains={name}, offset=query.offset,
                                         limit=query.limit, search=query.search,
                                         with_usage=True)
    return Page[User].of([User.model_validate(u, from_attributes=True) for u in found],
                         total, query)


@endpoint("POST", "/domains/{domain}/users", summary="Add a user", tags=["users"],
          body=UserCreate, response=User, status=201, access=Access.CONSOLE)
def add_user(ctx: Ctx, domain: str, body: UserCreate) -> User:
    """Add an account with the default mailboxes; 409 when the address is taken, 422 for a
    weak password (with the reason) or a bad address."""
    name = ctx.require_manage(domain)
    if body.is_admin:
        ctx.require_admin()
    address = f"{body.localpart}@{name}"
    info = users.add_user(ctx.store, address, strong_password(ctx, body.password, address),
                          quota_bytes=quota_bytes(body.quota), is_admin=body.is_admin)
    ctx.audit("user added", address=info.address, admin=info.is_admin)
    return _user(info)


@endpoint("GET", "/users/{address}", summary="One user", tags=["users"], response=User,
          access=Access.CONSOLE)
def get_user(ctx: Ctx, address: str) -> User:
    """The account; 403 when the caller does not manage its domain, 404 when there is none."""
    return _user(account(ctx, address))


@endpoint("PATCH", "/users/{address}", summary="Change a user", tags=["users"],
          body=UserPatch, response=User, access=Access.CONSOLE)
def change_user(ctx: Ctx, address: str, body: UserPatch) -> User:
    """Change the password, quota, state or admin flag. A new password or disabling ends the
    account's console sessions. Only admins set ``is_admin`` or change an admin's account."""
    info = account(ctx, address)
    require_change(ctx, info.address)
    sent = body.model_fields_set
    if "is_admin" in sent and body.is_admin is not None:
        ctx.require_admin()
        webaccess.set_admin(ctx.store, info.address, body.is_admin)
    if "password" in sent and body.password is not None:
        users.set_password(ctx.store, info.address,
                           strong_password(ctx, body.password, info.address))
    if "quota" in sent:
        users.set_quota(ctx.store, info.address, quota_bytes(body.quota))
    if "active" in sent and body.active is not None:
        users.set_user_active(ctx.store, info.address, body.active)
    ctx.audit("user changed", address=info.address, fields=sorted(sent))
    ctx.store.flush()
    ctx.store.expire_all()
    return _user(account(ctx, info.address))


@endpoint("DELETE", "/users/{address}", summary="Remove a user", tags=["users"], status=204,
          access=Access.CONSOLE)
def remove_user(ctx: Ctx, address: str) -> None:
    """Remove the account with its mailboxes."""
    info = account(ctx, address)
    require_change(ctx, info.address)
    users.remove_user(ctx.store, info.address)
    ctx.audit("user removed", address=info.address)


@endpoint("GET", "/domains/{domain}/managers", summary="List a domain's managers",
          tags=["managers"], query=PageQuery, response=Page[Manager], access=Access.ADMIN)
def list_managers(ctx: Ctx, domain: str, query: PageQuery) -> Page[Manager]:
    """The accounts that manage the domain (a short list), by address."""
    name = ctx.require_manage(domain)
    found = webaccess.managers(ctx.store, name)
    page = found[query.offset:query.offset + query.limit]
    return Page[Manager].of([Manager(address=a, domain=d) for a, d in page], len(found), query)


@endpoint("POST", "/domains/{domain}/managers", summary="Add a domain manager",
          tags=["managers"], body=ManagerAdd, response=Manager, status=201,
          access=Access.ADMIN)
def add_manager(ctx: Ctx, domain: str, body: ManagerAdd) -> Manager:
    """Let an existing account (of any domain) manage this one; adding it again changes
    nothing. 404 for an unknown account."""
    name = ctx.require_manage(domain)
    webaccess.add_manager(ctx.store, body.address, name)
    ctx.audit("manager added", address=body.address[:254], domain=name)
    return Manager(address=login_name(body.address) or body.address.lower(), domain=name)


@endpoint("DELETE", "/domains/{domain}/managers/{address}", summary="Remove a domain manager",
          tags=["managers"], status=204, access=Access.ADMIN)
def remove_manager(ctx: Ctx, domain: str, address: str) -> None:
    """The account no longer manages the domain; 404 when it did not."""
    name = ctx.require_manage(domain)
    if not webaccess.remove_manager(ctx.store, address, name):
        raise not_found(f"{address[:254]} does not manage {name}")
    ctx.audit("manager removed", address=address[:254], domain=name)
