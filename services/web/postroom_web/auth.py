"""Who a request is (bearer token or session cookie) and the console's password login.

The login goes the way every password login of Postroom goes (IMAP, POP3, SMTP
AUTH): the shared failed-login limiter first (its delay on the reactor's clock,
Redis away: a temporary failure), then ``postroom.auth.logincheck.authenticate``
(the hash checked off the `db` pool, an old hash rehashed; decision 0027), then
the failure is counted or the pair's counter cleared. Only then is a console session made.

An account with two-factor login on gets no session for its password: it gets a
*pending* login (a random token in a short-lived cookie, known only to this
process's memory, good for nothing but the second step's form) and the session
comes after :meth:`Logins.second_factor` accepts a TOTP or recovery code, which
passes through the same limiter (a wrong code counts as a failed login).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from postroom.auth import logincheck
from postroom.auth.ratelimit import LoginLocked, LoginRateLimiter, RateLimitUnavailable, admit
from postroom.interfaces import ReactorThreads, defer_to_pool
from postroom.logs import get_logger
from postroom.metrics import Metrics, auth_failures_total
from postroom.secretbox import Keyring
from postroom.store import totp, webaccess
from postroom.store.db import Database, StoreSession
from postroom.store.webaccess import Principal

log = get_logger("web.auth")

# a login form's fields are short; longer ones are refused before any work
MAX_ADDRESS_CHARS = 320
MAX_PASSWORD_CHARS = 1024
MAX_CODE_CHARS = 64
# a password-checked login waits this long for its second factor, for this many tries
PENDING_SECONDS = 300
PENDING_TRIES = 5
# pending logins kept at most (the oldest go first): memory stays bounded under a flood
MAX_PENDING = 10_000


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
    cookie_secret: str          # the session's; for a pending login, the pending token
    csrf_token: str
    pending: bool = False       # the password was right; the second factor is still due


@dataclass
class _Pending:
    user_id: int
    address: str
    expires: float
    tries: int = 0


class Logins:
    """The console's password logins over the store and the shared limiter."""

    def __init__(self, database: Database, limiter: LoginRateLimiter | None,
                 redis_pool: ThreadPool, reactor: ReactorThreads, metrics: Metrics, *,
                 session_ttl: int, keyring: Keyring | None = None) -> None:
        self.database = database
        self.keyring = keyring
        self._pending: dict[str, _Pending] = {}
        self.limiter = limiter
        self.redis_pool = redis_pool
        self.reactor = reactor
        self.metrics = metrics
        self.session_ttl = session_ttl
        auth_failures_total(metrics)  # on /metrics before the first failure

    def _hop(self, fn: Any, *args: Any) -> Deferred[Any]:
        return defer_to_pool(self.reactor, self.redis_pool, fn, *args)

    async def admit(self, client: str, address: str) -> None:
        if self.limiter is not None:
            try:
                await admit(self.limiter, self.reactor, self._hop, client, address)
            except RateLimitUnavailable:
                raise LoginRefused(503, "Logins are temporarily unavailable; "
                                        "try again in a minute.") from None
            except LoginLocked:
                raise LoginRefused(429, "Too many failed logins; try again later.") from None

    async def failed(self, client: str, address: str) -> None:
        auth_failures_total(self.metrics).labels(mechanism="web").inc()
        if self.limiter is not None:
            await self._hop(self.limiter.record_failure, client, address)

    async def _succeeded(self, client: str, address: str) -> None:
        if self.limiter is not None and self.limiter.needs_reset(client, address):
            await self._hop(self.limiter.reset, client, address)

    async def login(self, address: str, password: str, client: str) -> LoggedIn:
        """Check the password and start a session (or, with two-factor login on, a pending
        login); LoginRefused with what to tell the person."""
        address = address.strip()
        if not address or not password or len(address) > MAX_ADDRESS_CHARS \
                or len(password) > MAX_PASSWORD_CHARS:
            raise LoginRefused(401, "Wrong address or password.")
        await self.admit(client, address)
        try:
            info = (await logincheck.authenticate(self.database, address, password,
                                                   protocol=None)).user
        except Exception as exc:  # noqa: BLE001 -- answered as a temporary failure, logged
            log.warning("login lookup failed", error=str(exc)[:200])
            raise LoginRefused(503, "Logins are temporarily unavailable; "
                                    "try again in a minute.") from None
        if info is None:
            await self.failed(client, address)
            log.info("login failed", peer=client)
            raise LoginRefused(401, "Wrong address or password.")
        if info.totp_enabled:
            # the limiter's counter stays until the second factor is right too
            token = self._remember(info.id, info.address)
            log.info("login second factor due", peer=client, user=info.address)
            return LoggedIn(info.id, info.address, token, "", pending=True)
        await self._succeeded(client, address)
        return await self._session(info.id, info.address, client)

    async def _session(self, user_id: int, address: str, client: str) -> LoggedIn:
        secret, csrf = await self.database.run(
            webaccess.create_web_session, user_id, self.session_ttl)
        log.info("login", peer=client, user=address)
        return LoggedIn(user_id, address, secret, csrf)

    # --- the second factor

    def _remember(self, user_id: int, address: str) -> str:
        now = time.monotonic()
        for token in [t for t, p in self._pending.items() if p.expires <= now]:
            del self._pending[token]
        while len(self._pending) >= MAX_PENDING:
            del self._pending[next(iter(self._pending))]
        token = secrets.token_urlsafe(32)
        self._pending[token] = _Pending(user_id, address, now + PENDING_SECONDS)
        return token

    def pending_address(self, token: str | None) -> str | None:
        """The address a pending login is for, None when there is none (or it expired)."""
        found = self._pending.get(token or "")
        if found is None or found.expires <= time.monotonic():
            return None
        return found.address

    def forget_pending(self, token: str | None) -> None:
        self._pending.pop(token or "", None)

    async def second_factor(self, token: str | None, code: str, client: str) -> LoggedIn:
        """The session of a pending login when ``code`` is a right TOTP or recovery code."""
        found = self._pending.get(token or "")
        if found is None or found.expires <= time.monotonic():
            self.forget_pending(token)
            raise LoginRefused(401, "The login has expired; log in again.")
        code = code.strip()
        if not code or len(code) > MAX_CODE_CHARS:
            raise LoginRefused(401, "Wrong code.")
        await self.admit(client, found.address)
        try:
            right = await self.database.run(totp.verify_second_factor, found.user_id, code,
                                            keyring=self.keyring)
        except Exception as exc:  # noqa: BLE001 -- answered as a temporary failure, logged
            log.warning("second factor lookup failed", error=str(exc)[:200])
            raise LoginRefused(503, "Logins are temporarily unavailable; "
                                    "try again in a minute.") from None
        if not right:
            await self.failed(client, found.address)
            found.tries += 1
            log.info("login second factor failed", peer=client, user=found.address)
            if found.tries >= PENDING_TRIES:
                self.forget_pending(token)
                raise LoginRefused(401, "Too many wrong codes; log in again.")
            raise LoginRefused(401, "Wrong code.")
        self.forget_pending(token)
        await self._succeeded(client, found.address)
        return await self._session(found.user_id, found.address, client)
