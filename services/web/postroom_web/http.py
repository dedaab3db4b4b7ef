"""The request pipeline on twisted.web: route, limit, authenticate, check, validate, run, answer.

Every request goes through :meth:`WebApp.handle` in this order: static files;
the client's request rate (429, postroom_web.ratelimit); the route (404, 405);
the body limit (413); who asks (401, or the login page); the route's access
level (403); CSRF and cross-site checks for what changes state (403);
validation of path, query and body (422); the handler (in the `db`
pool unless it is ``async``); the answer with the security headers. Whatever
goes wrong is one JSON error (API) or an error page, never a traceback: an
unexpected exception is logged with its traceback as one JSON line and answered
500. One log line and the metrics per request, naming the route template, never
the credentials.
"""

from __future__ import annotations

import json
import secrets
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from jinja2 import Environment
from pydantic import BaseModel, TypeAdapter, ValidationError
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.protocols import policies
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import resource, server

from postroom.config import Network, Settings
from postroom.health import Health
from postroom.interfaces import ReactorThreads, defer_to_pool, twisted_clock
from postroom.logs import get_logger
from postroom.metrics import Histogram, Metrics, errors_total
from postroom.net.connlimit import PerAddressLimit
from postroom.queue import authevents
from postroom.secretbox import Keyring
from postroom.store import errors as store_errors
from postroom.store.db import UNAVAILABLE, Database
from postroom_web import security, wellknown
from postroom_web.auth import Identity, Logins, bearer_token, identify
from postroom_web.framework import (
    API_PREFIX,
    Access,
    ApiError,
    Ctx,
    Raw,
    Redirect,
    Registry,
    RequestInfo,
    Route,
)
from postroom_web.ratelimit import RequestRate, retry_after
from postroom_web.templating import StaticFile

log = get_logger("web")

# a handler that has not answered by then gets 503 (its thread finishes on its own)
REQUEST_TIMEOUT = 30.0
# a connection idle this long is closed (slow clients hold no more than this)
IDLE_TIMEOUT = 60.0
STATIC_CACHE = b"public, max-age=31536000, immutable"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def requests_total(m: Metrics) -> Any:
    return m.counter("web_requests", "Web and API requests, by route template, method and "
                     "status.", ["route", "method", "status"])


def request_seconds(m: Metrics) -> Histogram:
    return m.histogram("web_request_seconds", "Seconds from a web or API request's arrival to "
                       "its answer, by route template and method.", ["route", "method"],
                       buckets=REQUEST_BUCKETS)


class WebRequest(server.Request):
    """A request whose body is read up to a limit and dropped beyond it (answered 413)."""

    max_body = 1 << 20
    too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self.too_large = True
            if self.content is not None:
                self.content.seek(0)
                self.content.truncate()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # twisted.web parses urlencoded and multipart bodies into args itself. A body we
        # dropped must not be parsed, and multipart is never parsed (no form of ours sends
        # it; the stdlib parser is not one to feed hostile bytes): its fields are absent,
        # so the CSRF check refuses the form and an API call gets 415
        kind = self.requestHeaders.getRawHeaders(b"content-type", [b""])[0].lower()
        if self.too_large or kind.startswith(b"multipart/"):
            self.requestHeaders.removeHeader(b"content-type")
        super().requestReceived(command, path, version)


class WebSite(server.Site):
    """The site: our request class, no tracebacks, no access log of its own (we log)."""

    def __init__(self, app: WebApp) -> None:
        root = WebResource(app)
        super().__init__(root, timeout=IDLE_TIMEOUT)  # type: ignore[arg-type]
        self.displayTracebacks = False
        self.noisy = False
        max_body = app.settings.web_max_body

        class Request(WebRequest):
            pass

        Request.max_body = max_body
        self.requestFactory = Request

    def log(self, request: Any) -> None:
        pass


class PerClientLimit(policies.WrappingFactory):
    """The site behind the per-client connection limit every listener has
    (POSTROOM_MAX_CONNECTIONS_PER_IP; a client is an IPv4 address or an IPv6 /64)."""

    def __init__(self, site: WebSite, limit: int, metrics: Metrics,
                 exempt: Sequence[Network] = ()) -> None:
        super().__init__(site)
        self.limit = PerAddressLimit(limit)
        self.metrics = metrics
        # the trusted reverse proxies: all clients come through them
        self.exempt = tuple(exempt)
        self._clients: dict[int, str] = {}

    def buildProtocol(self, addr: Any) -> Any:
        host = getattr(addr, "host", "") or ""
        if security.trusted(host, self.exempt):
            return super().buildProtocol(addr)
        if not self.limit.acquire(host):
            errors_total(self.metrics).labels(kind="too_many_connections").inc()
            log.warning("connection refused", reason="too many connections", peer=host)
            return None
        wrapper = super().buildProtocol(addr)
        self._clients[id(wrapper)] = host
        return wrapper

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        host = self._clients.pop(id(p), None)
        if host is not None:
            self.limit.release(host)


class WebResource(resource.Resource):
    isLeaf = True

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.app = app

    def render(self, request: Any) -> Any:
        Deferred.fromCoroutine(self.app.handle(request)).addErrback(self.app.crashed, request)
        return server.NOT_DONE_YET


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str
    headers: list[tuple[bytes, bytes]]


def _first_values(args: Mapping[bytes, list[bytes]]) -> dict[str, str]:
    return {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
            for k, v in args.items() if v}


def _header(request: Any, name: str) -> str | None:
    value = request.getHeader(name)
    if value is None:
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


class WebApp:
    """The service's shared state and the request pipeline."""

    #: the DMARC pages' source-name cache and DNS threads (postroom_web.dmarc.console), set
    #: by the service at start; one per process
    dmarc: Any = None

    def __init__(self, *, settings: Settings, database: Database, registry: Registry,
                 templates: Environment, static: dict[str, StaticFile], metrics: Metrics,
                 reactor: ReactorThreads, logins: Logins | None = None,
                 redis: Any = None, pool: ThreadPool | None = None,
                 health: Health | None = None, keyring: Keyring | None = None,
                 dns_pool: ThreadPool | None = None) -> None:
        self.settings = settings
        self.database = database
        self.registry = registry
        self.templates = templates
        self.static = static
        self.metrics = metrics
        self.reactor = reactor
        self.logins = logins
        self.redis = redis
        self.pool = pool
        #: this process's /healthz checks (database, Redis, listeners), for the overview
        self.health = health
        #: seals the DKIM private keys the console generates (POSTROOM_SECRET_KEY_FILE)
        self.keyring = keyring
        #: DNS look-ups (the DNS pages' checks, up to seconds each): apart from Redis calls
        self.dns_pool = dns_pool
        self._adapters: dict[int, TypeAdapter[Any]] = {}
        #: requests per client (POSTROOM_WEB_RATE, postroom_web.ratelimit); None: no limit
        self.rate: RequestRate | None = RequestRate(
            settings.web_rate, settings.web_rate_burst) if settings.web_rate > 0 else None
        requests_total(metrics)
        request_seconds(metrics)

    def in_thread(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Blocking non-SQL work (Redis) off the reactor, in the service's small pool."""
        if self.pool is None:
            return defer.maybeDeferred(fn, *args)
        return defer_to_pool(self.reactor, self.pool, fn, *args)

    def in_dns_thread(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Blocking DNS look-ups off the reactor, in their own pool (slow answers there never
        hold up the login limiter's Redis calls)."""
        if self.dns_pool is None:
            return self.in_thread(fn, *args)
        return defer_to_pool(self.reactor, self.dns_pool, fn, *args)

    # --- the pipeline

    async def handle(self, request: Any) -> None:
        started = time.monotonic()
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))
        label, method = "unmatched", request.method.decode("ascii", "replace")
        principal_name = None
        try:
            answer, label, principal_name = await self._answer(request, method)
        except Exception as exc:  # never a traceback to the client: logged, answered 500
            log.exception("request failed", exc, method=method, route=label)
            answer = self._error(ApiError(500, "internal error"), api=True)
        if not finished[0]:
            self._write(request, answer)
        elapsed = time.monotonic() - started
        # a method a client makes up is "other": label values stay bounded (docs/metrics.md)
        known = method if method in _METHODS else "other"
        requests_total(self.metrics).labels(route=label, method=known,
                                            status=str(answer.status)).inc()
        request_seconds(self.metrics).labels(route=label, method=known).observe(elapsed)
        log.info("request", method=method[:16], route=label, status=answer.status,
                 ms=round(elapsed * 1000, 1), principal=principal_name,
                 client=self._client(request))

    def crashed(self, failure: Failure, request: Any) -> None:
        log.error("request pipeline failed", traceback=failure.getTraceback().rstrip())
        try:
            self._write(request, self._error(ApiError(500, "internal error"), api=True))
        except Exception:  # noqa: BLE001,S110 -- the connection is gone; nothing to answer
            pass

    def _client(self, request: Any) -> str:
        peer = getattr(request.getClientAddress(), "host", "") or ""
        return security.client_address(peer, _header(request, "x-forwarded-for"),
                                       self.settings.web_proxy_trusted)

    def secure(self, request: Any) -> bool:
        """Whether ``request`` came over HTTPS (ours, or a trusted proxy's)."""
        return self._secure(request)

    def _secure(self, request: Any) -> bool:
        if request.isSecure():
            return True
        peer = getattr(request.getClientAddress(), "host", "") or ""
        return security.forwarded_secure(peer, _header(request, "x-forwarded-proto"),
                                         self.settings.web_proxy_trusted)

    async def _answer(self, request: Any, method: str) -> tuple[Answer, str, str | None]:
        raw_path = request.path.decode("latin-1")
        if raw_path.startswith("/static/") and method in ("GET", "HEAD"):
            return self._static(raw_path[len("/static/"):]), "/static/{file}", None
        if self.rate is not None:
            wait = self.rate.allow(self._client(request))
            if wait:
                # before any work for it: no session look-up, no database, no handler
                errors_total(self.metrics).labels(kind="too_many_requests").inc()
                is_api = raw_path == API_PREFIX or raw_path.startswith(API_PREFIX + "/")
                answer = self._error(ApiError(429, "too many requests from your address; "
                                                   "try again later"), api=is_api)
                answer.headers.append((b"retry-after", retry_after(wait)))
                return answer, "rate_limited", None
        if raw_path.startswith("/.well-known/") and method in ("GET", "HEAD"):
            known = await wellknown.answer(self, request, raw_path)
            if known is not None:
                status, body, label = known
                return Answer(status, body, wellknown.TEXT, []), label, None
        is_api = raw_path == API_PREFIX or raw_path.startswith(API_PREFIX + "/")
        matches, _ = self.registry.find(raw_path)
        if not matches:
            return self._error(ApiError(404, "no such page or endpoint"), api=is_api), \
                "unmatched", None
        want = "GET" if method == "HEAD" else method
        chosen = [(r, p) for r, p in matches if r.method == want]
        if not chosen:
            allowed = sorted({r.method for r, _ in matches})
            answer = self._error(ApiError(405, f"{method} is not allowed here; allowed: "
                                               f"{', '.join(allowed)}"), api=is_api)
            answer.headers.append((b"allow", ", ".join(allowed).encode()))
            return answer, matches[0][0].path, None
        route, raw_params = chosen[0]
        is_api = route.kind == "api"
        ctx = self._context(request, method)
        try:
            if request.too_large:
                raise ApiError(413, f"the request body is larger than "
                                    f"{self.settings.web_max_body} bytes")
            identity = await self._identify(request, route)
            ctx.principal = identity.principal
            ctx.csrf_token = identity.csrf_token
            self._check_access(route, identity, ctx)
            self._check_csrf(request, route, identity, ctx)
            kwargs = self._inputs(request, route, raw_params, ctx)
            result = await self._run(route, ctx, kwargs)
            answer = self._render(route, ctx, result)
        except ApiError as error:
            answer = self._page_error(route, ctx, error) if not is_api \
                else self._error(error, api=True)
        except _LoginRedirect as redirect:
            answer = self._redirect(redirect.location)
        name = ctx.principal.name if ctx.principal is not None else None
        self._cookies(answer, ctx)
        return answer, route.path, name

    def _context(self, request: Any, method: str) -> Ctx:
        headers = {k.decode("latin-1").lower(): v[0].decode("latin-1")
                   for k, v in request.requestHeaders.getAllRawHeaders() if v}
        info = RequestInfo(method=method, path=request.uri.decode("latin-1"),
                           client=self._client(request), secure=self._secure(request),
                           headers=headers)
        ctx = Ctx(principal=None, settings=self.settings, request=info, database=self.database,
                  redis=self.redis, reactor=self.reactor, app=self)
        query = request.uri.decode("latin-1").partition("?")[2]
        ctx.args = dict(parse_qsl(query, keep_blank_values=True)[:100])
        ctx.session_cookie = self._cookie(request, security.SESSION_COOKIE)
        return ctx

    def _cookie(self, request: Any, name: str) -> str | None:
        value = request.getCookie(name.encode())
        return value.decode("latin-1") if value else None

    async def _identify(self, request: Any, route: Route) -> Identity:
        bearer = bearer_token(_header(request, "authorization")) if route.kind == "api" else None
        cookie = self._cookie(request, security.SESSION_COOKIE)
        if bearer == "":
            raise ApiError(401, "use Authorization: Bearer <token>")
        if bearer is None and not cookie:
            return Identity(None, "none", None)
        identity: Identity = await self.database.run(
            identify, bearer, cookie, max(1, int(self.settings.web_session_idle)))
        if identity.bad_bearer:
            raise ApiError(401, "unknown or revoked token")
        return identity

    def _check_access(self, route: Route, identity: Identity, ctx: Ctx) -> None:
        principal = identity.principal
        if route.access is Access.PUBLIC:
            return
        if principal is None:
            if route.kind == "page":
                raise _LoginRedirect("/login?next=" + quote(
                    security.local_path(ctx.request.path), safe="/"))
            raise ApiError(401, "authentication required: a bearer token or a console session")
        if route.access is Access.CONSOLE and not principal.is_console_user:
            raise ApiError(403, "this account has no console access", code="no_console_access")
        if route.access is Access.ADMIN and not principal.is_admin:
            raise ApiError(403, "only administrators may do this")

    def _check_csrf(self, request: Any, route: Route, identity: Identity, ctx: Ctx) -> None:
        if route.raw_body:
            # a public machine endpoint: no session is used, so there is nothing to forge
            request.content.seek(0)
            ctx.body = request.content.read(self.settings.web_max_body + 1)
            return
        if not route.changes_state or identity.via == "bearer":
            return
        host = _header(request, "host")
        if security.cross_site(ctx.request.headers, host):
            raise ApiError(403, "cross-site request refused", code="cross_site")
        if route.kind == "api":
            if identity.via == "cookie" and not security.tokens_equal(
                    _header(request, security.CSRF_HEADER), identity.csrf_token):
                raise ApiError(403, "missing or wrong X-CSRF-Token", code="csrf")
            return
        ctx.form = _first_values(request.args)
        given = ctx.form.pop(security.CSRF_FIELD, None)
        # a session's forms carry its token; a public form (the login) the double-submit
        # cookie's, also when an old session cookie comes along
        expected = [identity.csrf_token] if identity.via == "cookie" else []
        if route.access is Access.PUBLIC:
            expected.append(self._cookie(request, security.LOGIN_CSRF_COOKIE))
        if not any(security.tokens_equal(given, e) for e in expected):
            raise ApiError(403, "the form has expired or did not come from this site; "
                                "reload the page and try again", code="csrf")

    def _inputs(self, request: Any, route: Route, raw: dict[str, str],
                ctx: Ctx) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if route.path_model is not None:
            values = {k: unquote(v) for k, v in raw.items()}
            kwargs.update(_validate(route.path_model, values, "path").model_dump())
        if route.kind == "page":
            return kwargs
        if route.query is not None:
            kwargs["query"] = _validate(route.query, _query_values(route.query, ctx.request.path),
                                        "query")
        elif ctx.args:
            raise ApiError(422, "this endpoint takes no query parameters",
                           details=[{"loc": ["query", k], "msg": "unexpected parameter",
                                     "type": "extra_forbidden"} for k in list(ctx.args)[:20]])
        if route.body is not None:
            kind = (_header(request, "content-type") or "").split(";")[0].strip().lower()
            if kind != "application/json":
                raise ApiError(415, "send the body as application/json",
                               code="unsupported_media_type")
            request.content.seek(0)
            data = request.content.read(self.settings.web_max_body + 1)
            try:
                kwargs["body"] = route.body.model_validate_json(data)
            except ValidationError as exc:
                if any(e["type"] == "json_invalid" for e in exc.errors()):
                    raise ApiError(400, "the body is not valid JSON") from None
                raise ApiError(422, "the request body is not valid",
                               details=_details(exc, "body")) from None
        return kwargs

    async def _run(self, route: Route, ctx: Ctx, kwargs: dict[str, Any]) -> Any:
        if route.is_async:
            work: Deferred[Any] = Deferred.fromCoroutine(route.handler(ctx, **kwargs))
        else:
            def in_transaction(session: Any) -> Any:
                ctx.session = session
                try:
                    result = route.handler(ctx, **kwargs)
                    if route.kind == "api":
                        # serialised here: nothing of the session crosses to the reactor
                        return _Serialised(self._serialise(route, result))
                    return result
                finally:
                    ctx.session = None

            work = self.database.run(in_transaction)
        work.addTimeout(REQUEST_TIMEOUT, twisted_clock(self.reactor))
        try:
            result = await work
            if ctx.dkim_changed:
                await self._announce_dkim(ctx)
            return result
        except (ApiError, _LoginRedirect):
            raise
        except defer.TimeoutError:
            raise ApiError(503, "the request took too long; try again") from None
        except CancelledError:
            raise ApiError(503, "the request took too long; try again") from None
        except store_errors.NotFound as exc:
            raise ApiError(404, str(exc)) from None
        except (store_errors.AlreadyExists, store_errors.InUse) as exc:
            raise ApiError(409, str(exc)) from None
        except (store_errors.StoreError, ValueError) as exc:
            raise ApiError(422, str(exc)) from None
        except UNAVAILABLE as exc:
            log.warning("database unavailable", error=str(exc)[:200])
            raise ApiError(503, "the database is not reachable; try again") from None

    async def _announce_dkim(self, ctx: Ctx) -> None:
        """Committed DKIM key changes: the msa processes forget their cached keys (Redis
        away: logged; their caches expire within POSTROOM_MSA_DKIM_KEY_CACHE_TTL)."""
        if ctx.redis is None:
            return
        for domain in sorted(ctx.dkim_changed):
            try:
                await ctx.in_thread(authevents.publish_dkim, ctx.redis,
                                    self.settings.redis_prefix, domain)
            except Exception as exc:  # noqa: BLE001 -- the change is made; the signal hurries it
                log.warning("dkim key change not announced", domain=domain,
                            error=str(exc)[:200])

    def _serialise(self, route: Route, result: Any) -> bytes | None:
        if route.status == 204 or route.response is None:
            return None
        adapter = self._adapters.get(id(route))
        if adapter is None:
            adapter = self._adapters[id(route)] = TypeAdapter(route.response)
        if not isinstance(result, BaseModel) or not isinstance(result, route.response):
            result = adapter.validate_python(result, from_attributes=True)
        return adapter.dump_json(result)

    # --- answers

    def _render(self, route: Route, ctx: Ctx, result: Any) -> Answer:
        if route.kind == "api":
            if isinstance(result, _Serialised):
                body = result.data
            else:
                body = self._serialise(route, result)
            status = ctx.status or route.status
            if body is None:
                return Answer(status, b"", "", [])
            return Answer(status, body, "application/json", [])
        if isinstance(result, Redirect):
            if result.notice:
                ctx.set_cookie(security.NOTICE_COOKIE, quote(result.notice[:200], safe=""),
                               max_age=60)
            return self._redirect(security.local_path(result.location))
        if isinstance(result, Raw):
            headers = []
            if result.filename:
                headers.append((b"content-disposition",
                                f'attachment; filename="{result.filename}"'.encode()))
            return Answer(ctx.status or 200, result.body, result.content_type, headers)
        if route.template is None:
            raise RuntimeError(f"page {route.path} has no template and did not redirect")
        return self._page(route.template, ctx, result or {}, ctx.status or 200)

    def _page(self, template: str, ctx: Ctx, values: Mapping[str, Any], status: int) -> Answer:
        path = ctx.request.path.partition("?")[0]
        notice = _cookie_value(ctx.request.headers.get("cookie", ""), security.NOTICE_COOKIE)
        if notice is not None:
            ctx.set_cookie(security.NOTICE_COOKIE, "", max_age=0)  # shown once
        context = {"principal": ctx.principal, "csrf_token": ctx.csrf_token,
                   "current_path": path, "notice": unquote(notice)[:200] if notice else None,
                   **values}
        html = self.templates.get_template(template).render(context)
        return Answer(status, html.encode("utf-8"), "text/html; charset=utf-8", [])

    def _page_error(self, route: Route, ctx: Ctx, error: ApiError) -> Answer:
        if error.code == "no_console_access":
            # an account without console access lands on its own account page
            if ctx.request.method in ("GET", "HEAD") and ctx.request.path.partition("?")[0] == "/":
                return self._redirect("/account")
            return self._page("no_access.html", ctx, {}, 403)
        return self._page("error.html", ctx, {"status": error.status, "message": error.message},
                          error.status)

    def _error(self, error: ApiError, *, api: bool) -> Answer:
        if api:
            return Answer(error.status, json.dumps(error.body()).encode(), "application/json",
                          [(b"www-authenticate", b"Bearer")] if error.status == 401 else [])
        html = self.templates.get_template("error.html").render(
            {"status": error.status, "message": error.message, "principal": None,
             "csrf_token": None, "current_path": ""})
        return Answer(error.status, html.encode("utf-8"), "text/html; charset=utf-8", [])

    def _redirect(self, location: str) -> Answer:
        return Answer(303, b"", "", [(b"location", location.encode("utf-8"))])

    def _static(self, name: str) -> Answer:
        item = self.static.get(unquote(name))
        if item is None:
            return self._error(ApiError(404, "no such file"), api=False)
        return Answer(200, item.data, item.content_type, [(b"cache-control", STATIC_CACHE)])

    def _cookies(self, answer: Answer, ctx: Ctx) -> None:
        secure = ctx.request.secure or self.settings.web_cookie_secure
        for name, value, options in ctx.cookies_to_set:
            answer.headers.append((b"set-cookie", security.cookie_header(
                name, value, secure=secure, max_age=options.get("max_age"))))

    def login_csrf(self, ctx: Ctx) -> str:
        """The login form's double-submit token: the cookie's, or a new one set now."""
        current = _cookie_value(ctx.request.headers.get("cookie", ""),
                                security.LOGIN_CSRF_COOKIE)
        if current is None or len(current) > 100:
            current = secrets.token_urlsafe(32)
            ctx.set_cookie(security.LOGIN_CSRF_COOKIE, current)
        return current

    def _write(self, request: Any, answer: Answer) -> None:
        request.setResponseCode(answer.status, _REASONS.get(answer.status, b"Error"))
        for name, value in security.SECURITY_HEADERS:
            request.setHeader(name, value)
        if self._secure(request):
            request.setHeader(b"strict-transport-security", security.HSTS)
        has_cache = any(n == b"cache-control" for n, _ in answer.headers)
        if not has_cache:
            request.setHeader(b"cache-control", b"no-store")
        if answer.content_type:
            request.setHeader(b"content-type", answer.content_type.encode())
        for name, value in answer.headers:
            if name == b"set-cookie":
                request.responseHeaders.addRawHeader(name, value)
            else:
                request.setHeader(name, value)
        request.setHeader(b"content-length", str(len(answer.body)).encode())
        if answer.body and request.method != b"HEAD":
            request.write(answer.body)
        request.finish()


@dataclass(frozen=True)
class _Serialised:
    data: bytes | None


class _LoginRedirect(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


def _cookie_value(header: str, wanted: str) -> str | None:
    """The value of cookie ``wanted`` in a Cookie header (the last one; None without)."""
    found = None
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == wanted and value:
            found = value
    return found


def _query_values(model: type[BaseModel], uri: str) -> dict[str, Any]:
    """The query string for ``model``: a repeated parameter, or any of a list field, is a
    list (``?domain=a&domain=b``); otherwise a parameter's value (a repeated one: a list,
    which a scalar field refuses with 422)."""
    pairs = parse_qsl(uri.partition("?")[2], keep_blank_values=True)[:200]
    values: dict[str, Any] = {}
    for key, value in pairs:
        if key in values:
            current = values[key]
            values[key] = [*current, value] if isinstance(current, list) else [current, value]
        else:
            values[key] = value
    for key, value in values.items():
        field = model.model_fields.get(key)
        if field is not None and not isinstance(value, list) and \
                typing.get_origin(field.annotation) in (list, tuple, set, frozenset):
            values[key] = [value]
    return values


def _details(exc: ValidationError, where: str) -> list[dict[str, Any]]:
    return [{"loc": [where, *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False, include_context=False)]


def _validate(model: type[BaseModel], values: Mapping[str, Any], where: str) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ApiError(422, f"the request's {where} is not valid",
                       details=_details(exc, where)) from None

