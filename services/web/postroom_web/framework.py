"""The declarative layer: ``@endpoint`` and ``@page`` register one decorated function each.

An API endpoint is a function of a :class:`Ctx` and its typed inputs (path
parameters by name, ``query=`` and ``body=`` pydantic models) returning its
response model; a page is a function of a :class:`Ctx` returning the template's
context (or a :class:`Redirect`). The same registration validates requests
(postroom_web.http) and describes them (postroom_web.openapi), so the OpenAPI
document cannot drift from the code. A plain ``def`` handler runs in the `db`
thread pool inside one store transaction (``ctx.session``); an ``async def``
handler runs on the reactor and reaches the store with ``await ctx.run(fn, ...)``.
Business rules live in postroom.store and postroom.ops; handlers stay thin.
"""

from __future__ import annotations

import enum
import inspect
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model
from twisted.internet.defer import Deferred

from postroom.config import Settings
from postroom.logs import get_logger
from postroom.store.addresses import normalise_domain
from postroom.store.domains import is_local_domain
from postroom.store.webaccess import Principal

if TYPE_CHECKING:
    from postroom.queue.redisclient import RedisClient
    from postroom.store.db import Database, StoreSession

audit_log = get_logger("web")

API_PREFIX = "/api/v1"
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# far past any list we keep, and inside PostgreSQL's bigint OFFSET
MAX_OFFSET = 10**9

T = TypeVar("T")


class Access(enum.Enum):
    """Who may call a route; object-level checks (which domain) are the handler's."""

    PUBLIC = "public"      # no login (the login page, the OpenAPI document)
    USER = "user"          # any logged-in account or token
    CONSOLE = "console"    # an admin or a domain manager (then ctx.require_manage(domain))
    ADMIN = "admin"        # global admins and tokens for every domain


# --- errors: one JSON shape for every one of them

ERROR_CODES: dict[int, str] = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request", 429: "too_many_requests", 500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An answer other than success: ``{"error": {"code", "message", "details"?}}``."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 details: Sequence[Mapping[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or ERROR_CODES.get(status, "error")
        self.message = message
        self.details = list(details) if details is not None else None

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


def not_found(message: str = "not found") -> ApiError:
    return ApiError(404, message)


def forbidden(message: str = "not allowed") -> ApiError:
    return ApiError(403, message)


def conflict(message: str) -> ApiError:
    return ApiError(409, message)


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. not_found.")
    message: str = Field(description="What went wrong, for people.")
    details: list[dict[str, Any]] | None = Field(
        None, description="Per-field problems of a 422 (loc, msg, type).")


class ErrorBody(BaseModel):
    """Every error response of the API."""

    error: ErrorDetail


# --- pagination: every list

class PageQuery(BaseModel):
    """``?offset=&limit=``; a list endpoint's query model is this or a subclass of it."""

    model_config = ConfigDict(extra="forbid")

    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="Items to skip.")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Items to return.")


class Page(BaseModel, Generic[T]):
    """One page of a list: the items, how many there are in all, and where the page is."""

    items: list[T]
    total: int
    offset: int
    limit: int

    @classmethod
    def of(cls, items: Sequence[Any], total: int, query: PageQuery) -> Page[T]:
        return cls(items=list(items), total=total, offset=query.offset, limit=query.limit)


# --- what a handler gets

@dataclass(frozen=True)
class Redirect:
    """A page handler's answer that sends the browser elsewhere (303 See Other); ``notice``
    is shown once on the next page (``Domain added.``), carried in a short-lived cookie."""

    location: str
    notice: str | None = None


@dataclass(frozen=True)
class Raw:
    """A page handler's answer that is not HTML: a document served as it is (the mail
    clients' autoconfig XML, an Apple configuration profile)."""

    body: bytes
    content_type: str
    filename: str | None = None    # sent as an attachment with this name


@dataclass
class RequestInfo:
    method: str
    path: str
    client: str            # the client's address (X-Forwarded-For only from a trusted proxy)
    secure: bool           # came over TLS (or a trusted proxy's X-Forwarded-Proto: https)
    headers: Mapping[str, str] = field(default_factory=dict)


class Ctx:
    """What a handler sees: who asks, the store session, settings and helpers.

    ``session`` is set only while a plain ``def`` handler runs (in the `db` pool, in
    one transaction that commits when the handler returns and rolls back when it raises).
    """

    def __init__(self, *, principal: Principal | None, settings: Settings,
                 request: RequestInfo, database: Database | None = None,
                 redis: RedisClient | None = None, csrf_token: str | None = None,
                 reactor: Any = None, app: Any = None) -> None:
        self.principal = principal
        self.settings = settings
        self.request = request
        self.database = database
        self.redis = redis
        self.csrf_token = csrf_token
        self.reactor = reactor
        #: the service's shared objects (postroom_web.http.WebApp): logins, metrics, templates
        self.app = app
        #: the presented session cookie's value (for logout), None without one
        self.session_cookie: str | None = None
        self.session: StoreSession | None = None
        #: a page's POST form fields (first value of each)
        self.form: dict[str, str] = {}
        #: the raw query arguments of a page request (first value of each)
        self.args: dict[str, str] = {}
        #: a page's raw request body (only for routes registered with ``raw_body=True``)
        self.body: bytes = b""
        self.cookies_to_set: list[tuple[str, str, dict[str, Any]]] = []
        self.status: int | None = None
        #: domains whose DKIM keys the handler changed: announced once it has succeeded
        #: (every transaction committed), so that the msa forgets its cached keys
        self.dkim_changed: set[str] = set()

    # --- who asks

    @property
    def user(self) -> Principal:
        """The principal; 401 when there is none (only PUBLIC routes can see None)."""
        if self.principal is None:
            raise ApiError(401, "authentication required")
        return self.principal

    def require_admin(self) -> Principal:
        if not self.user.is_admin:
            raise forbidden("only administrators may do this")
        return self.user

    def require_manage(self, domain: str) -> str:
        """The normalised ``domain`` when the principal may manage it.

        403 when it may not (whether or not the domain exists: no one learns of
        others' domains), 404 when it may but there is no such local domain.
        Needs the store session (a plain ``def`` handler).
        """
        name = self._manageable(domain)
        if not is_local_domain(self.store, name):
            raise not_found(f"no domain {name}")
        return name

    async def require_manage_async(self, domain: str) -> str:
        """:meth:`require_manage` for an ``async`` handler (the lookup in the `db` pool)."""
        name = self._manageable(domain)
        if not await self.run(is_local_domain, name):
            raise not_found(f"no domain {name}")
        return name

    def _manageable(self, domain: str) -> str:
        try:
            name = normalise_domain(domain)
        except ValueError:
            raise not_found(f"no domain {domain[:255]}") from None
        if not self.user.can_manage(name):
            raise forbidden(f"you do not manage {name}")
        return name

    def visible_domains(self) -> set[str] | None:
        """The domains a list may show: None for every one (admins), else the managed ones."""
        return None if self.user.is_admin else set(self.user.domains)

    @property
    def store(self) -> StoreSession:
        if self.session is None:
            raise RuntimeError("ctx.session exists only in a plain def handler "
                               "(async handlers use ctx.run)")
        return self.session

    # --- for async handlers

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """``fn(session, *args, **kwargs)`` in one transaction on the `db` pool."""
        assert self.database is not None
        return self.database.run(fn, *args, **kwargs)

    def with_store(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """``fn(ctx, *args)`` with ``ctx.store`` set, in one transaction on the `db` pool: a
        plain handler's helper (a page's context) called from an ``async`` handler."""
        def work(session: StoreSession) -> T:
            self.session = session
            try:
                return fn(self, *args)
            finally:
                self.session = None

        return self.run(work)

    def in_thread(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """``fn(*args)`` in the service's small pool for blocking non-SQL work (Redis)."""
        assert self.app is not None
        result: Deferred[T] = self.app.in_thread(fn, *args)
        return result

    def in_dns_thread(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """``fn(*args)`` in the service's pool for DNS look-ups (bound them with
        ``Resolver.until``)."""
        assert self.app is not None
        result: Deferred[T] = self.app.in_dns_thread(fn, *args)
        return result

    def announce_dkim(self, domain: str) -> None:
        """Say that ``domain``'s DKIM keys changed; the running msa processes are told after
        the handler's transaction commits (postroom.queue.authevents.publish_dkim)."""
        self.dkim_changed.add(domain)

    def audit(self, event: str, **fields: Any) -> None:
        """One log line for a change someone made (``user added``, ``alias removed``), with
        who made it; ``fields`` name what changed, never a secret."""
        audit_log.info(event, principal=self.principal.name if self.principal else None,
                       via=self.principal.kind if self.principal else None, **fields)

    # --- the answer

    def set_cookie(self, name: str, value: str, *, max_age: int | None = None) -> None:
        """A cookie on the response (HttpOnly, SameSite=Strict, Path=/, Secure as configured)."""
        self.cookies_to_set.append((name, value, {"max_age": max_age}))


# --- the registry

Handler = Callable[..., Any]


def _segments(path: str) -> tuple[str, ...]:
    return tuple(path.strip("/").split("/")) if path.strip("/") else ()


@dataclass
class Route:
    """One registered endpoint or page."""

    kind: str                      # "api" or "page"
    method: str
    path: str                      # the full template, e.g. /api/v1/domains/{domain}
    handler: Handler
    access: Access
    summary: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    response: Any = None
    status: int = 200
    template: str | None = None
    path_params: dict[str, Any] = field(default_factory=dict)  # name -> annotation
    path_model: type[BaseModel] | None = None
    is_async: bool = False
    segments: tuple[str, ...] = ()
    errors: tuple[int, ...] = ()
    hidden: bool = False           # left out of the OpenAPI document
    raw_body: bool = False         # a public page reading its body itself (no form, no CSRF)

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        if len(segments) != len(self.segments):
            return None
        found: dict[str, str] = {}
        for want, got in zip(self.segments, segments, strict=True):
            if want.startswith("{") and want.endswith("}"):
                if not got:
                    return None
                found[want[1:-1]] = got
            elif want != got:
                return None
        return found

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    @property
    def changes_state(self) -> bool:
        return self.method not in ("GET", "HEAD", "OPTIONS")


class Registry:
    """Every route of the service, in registration order."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, route: Route) -> Route:
        for other in self.routes:
            if other.method == route.method and other.segments == route.segments:
                raise ValueError(f"{route.method} {route.path} is registered twice")
        self.routes.append(route)
        return route

    def find(self, path: str) -> tuple[list[tuple[Route, dict[str, str]]], bool]:
        """The routes whose template matches ``path`` (any method), and whether any did."""
        segments = _segments(path)
        found = [(r, p) for r in self.routes if (p := r.match(segments)) is not None]
        return found, bool(found)


REGISTRY = Registry()


def _path_params(path: str, handler: Handler) -> dict[str, Any]:
    names = [s[1:-1] for s in _segments(path) if s.startswith("{") and s.endswith("}")]
    hints = typing.get_type_hints(handler)
    params = inspect.signature(handler).parameters
    found: dict[str, Any] = {}
    for name in names:
        if name not in params:
            raise TypeError(f"{handler.__name__}: path parameter {name} is not an argument")
        found[name] = hints.get(name, str)
    return found


def _make_route(kind: str, method: str, path: str, handler: Handler, *, access: Access,
                registry: Registry | None, **options: Any) -> Handler:
    params = _path_params(path, handler)
    path_model = create_model(  # type: ignore[call-overload]
        f"{handler.__name__}_path", **{name: (ann, ...) for name, ann in params.items()}
    ) if params else None
    route = Route(kind=kind, method=method.upper(), path=path, handler=handler, access=access,
                  path_params=params, path_model=path_model,
                  is_async=inspect.iscoroutinefunction(handler),
                  segments=_segments(path), **options)
    (registry or REGISTRY).add(route)
    return handler


def endpoint(method: str, path: str, *, summary: str, access: Access,
             tags: Collection[str] = (), query: type[BaseModel] | None = None,
             body: type[BaseModel] | None = None, response: Any = None, status: int = 200,
             description: str | None = None, errors: Collection[int] = (),
             hidden: bool = False,
             registry: Registry | None = None) -> Callable[[Handler], Handler]:
    """Register a REST endpoint under /api/v1 (``path`` without the prefix).

    The handler is called as ``handler(ctx, <path params by name>, query=<model>,
    body=<model>)`` (``query``/``body`` only when declared) and returns a ``response``
    instance (or what validates as one; None for a 204). ``errors``: further error
    statuses it may answer, for the OpenAPI document (401/403/422/500/503 are always
    declared, 404 with path parameters, 409 for POST/PUT/PATCH/DELETE).
    """
    def register(handler: Handler) -> Handler:
        return _make_route(
            "api", method, API_PREFIX + path, handler, access=access, registry=registry,
            summary=summary, description=description or inspect.getdoc(handler) or "",
            tags=tuple(tags), query=query, body=body, response=response, status=status,
            errors=tuple(errors), hidden=hidden)
    return register


def page(method: str, path: str, *, template: str | None, access: Access,
         title: str = "", raw_body: bool = False,
         registry: Registry | None = None) -> Callable[[Handler], Handler]:
    """Register an HTML page: ``handler(ctx, <path params>)`` returns the template's context
    (a dict), a :class:`Redirect` or a :class:`Raw` document. POSTs are checked for the
    form's ``csrf_token`` and refused when cross-site before the handler runs; ``ctx.form``
    holds the fields. ``raw_body`` (public routes only: a machine's POST, e.g. Outlook's
    autodiscover, which carries no cookie and no form) skips the form and its CSRF token
    and gives the handler ``ctx.body`` instead."""
    if raw_body and access is not Access.PUBLIC:
        raise ValueError("raw_body is only for public routes (no session, nothing to forge)")

    def register(handler: Handler) -> Handler:
        return _make_route("page", method, path, handler, access=access, registry=registry,
                           summary=title, template=template, raw_body=raw_body)
    return register


def response_adapter(route: Route) -> TypeAdapter[Any] | None:
    return TypeAdapter(route.response) if route.response is not None else None
