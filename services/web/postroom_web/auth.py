"""Who a request is (bearer token or session cookie) and the console's password login.

The login goes the way every password login of Postroom goes (IMAP, POP3, SMTP
AUTH): the shared failed-login limiter first (its delay on the reactor's clock,
Redis away: a temporary failure), then ``users.authenticate`` in the `db` pool
(which rehashes an old hash), then the failure is counted or the pair's counter
cleared. Only then is a console session made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from postroom.auth.ratelimit import LoginLocked, LoginRateLimiter, RateLimitUnavailable, admit
from postroom.interfaces import ReactorThreads, defer_to_pool
from postroom.logs import get_logger
from postroom.metrics import Metrics, auth_failures_total
from postroom.store import users, webaccess
from postroom.store.db import Database, StoreSession
from postroom.store.webaccess import Principal

log = get_logger("web.auth")

# a login form's fields are short; longer ones are refused before any work
MAX_ADDRESS_CHARS = 320
MAX_PASSWORD_CHARS = 1024


@dataclass(frozen=True)
class Identity:
    """What the credentials of one request came to."""

    principal: Principal | None
    via: str                 # "bearer", "cookie" or "none"
    csrf_token: str | None   # the session's (cookie) only
    bad_bearer: bool = False  # a bearer token was presented and is no one's


def identify(session: StoreSession, bearer: str | None, cookie: str | None,
             idle_seconds: int) -> Identity:
    """Resolve a bearer token, else a session cookie (a store function: runs in the `db` pool)."""
    if bearer is not None:
        principal = webaccess.principal_for_token(session, bearer)
        return Identity(principal, "bearer", None, bad_bearer=principal is None)
    if cookie:
        found = webaccess.web_session(session, cookie, idle_seconds)
        if found is not None:
            return Identity(found[0], "cookie", found[1])
    return Identity(None, "none", None)


def bearer_token(authorization: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>``; "" for another scheme (then 401)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


class LoginRefused(Exception):
    """The login failed; ``message`` is shown on the login page with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class LoggedIn:
    user_id: int
    address: str
    cookie_secret: str
    csrf_token: str


class Logins:
    """The console's password logins over the store and the shared limiter."""

    def __init__(self, database: Database, limiter: LoginRateLimiter | None,
                 redis_pool: ThreadPool, reactor: ReactorThreads, metrics: Metrics, *,
                 session_ttl: int) -> None:
        self.database = database
        self.limiter = limiter
        self.redis_pool = redis_pool
        self.reactor = reactor
        self.metrics = metrics
        self.session_ttl = session_ttl
        auth_failures_total(metrics)  # on /metrics before the first failure

    def _hop(self, fn: Any, *args: Any) -> Deferred[Any]:
        return defer_to_pool(self.reactor, self.redis_pool, fn, *args)

    async def login(self, address: str, password: str, client: str) -> LoggedIn:
        """Check the password and start a session; LoginRefused with what to tell the person."""
        address = address.strip()
        if not address or not password or len(address) > MAX_ADDRESS_CHARS \
                or len(password) > MAX_PASSWORD_CHARS:
            raise LoginRefused(401, "Wrong address or password.")
        if self.limiter is not None:
            try:
                await admit(self.limiter, self.reactor, self._hop, client, address)
            except RateLimitUnavailable:
                raise LoginRefused(503, "Logins are temporarily unavailable; "
                                        "try again in a minute.") from None
            except LoginLocked:
                raise LoginRefused(429, "Too many failed logins; try again later.") from None
        try:
            info = await self.database.run(users.authenticate, address, password)
        except Exception as exc:  # noqa: BLE001 -- answered as a temporary failure, logged
            log.warning("login lookup failed", error=str(exc)[:200])
            raise LoginRefused(503, "Logins are temporarily unavailable; "
                                    "try again in a minute.") from None
        if info is None:
            auth_failures_total(self.metrics).labels(mechanism="web").inc()
            if self.limiter is not None:
                await self._hop(self.limiter.record_failure, client, address)
            log.info("login failed", peer=client)
            raise LoginRefused(401, "Wrong address or password.")
        if self.limiter is not None and self.limiter.needs_reset(client, address):
            await self._hop(self.limiter.reset, client, address)
        secret, csrf = await self.database.run(
            webaccess.create_web_session, info.id, self.session_ttl)
        log.info("login", peer=client, user=info.address)
        return LoggedIn(info.id, info.address, secret, csrf)
