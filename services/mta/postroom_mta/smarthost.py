"""Smarthost routes for the relay: which next hop a recipient domain takes, and how to talk to it.

Precedence (postroom.net.nexthop.choose_route, Postfix's): the transport entry
for the exact recipient domain, then ``.parent`` entries, then
POSTROOM_RELAY_HOST, then MX. Transport entries (`postroom relay set`, table
``relay_transports``) are read with one statement per message and cached per
recipient domain for :data:`CACHE_SECONDS`, so an edit takes effect within
that time without a restart.

A route's TLS policy (:meth:`Smarthosts.policy`): ``starttls`` and ``tls``
require TLS and verify the certificate against the next hop's name (the MX
host name for a ``host`` route) with the system CAs or
POSTROOM_RELAY_TLS_CA_FILE, unless POSTROOM_RELAY_TLS_VERIFY is off; ``tls``
connects with implicit TLS; ``none`` is opportunistic and never logs in. The
login's password is read from its file (POSTROOM_RELAY_PASSWORD_FILE, or an
entry's password reference) in a worker thread, cached like the routes; an
unreadable file defers the mail (``451 4.3.5``) and is logged as an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from twisted.python.threadpool import ThreadPool

from postroom.config import Settings
from postroom.interfaces import ReactorThreads, defer_to_pool
from postroom.logs import Logger
from postroom.net.nexthop import IMPLICIT_TLS, NO_TLS, Route, choose_route
from postroom.smtp.replies import Reply
from postroom.store import transports
from postroom.store.db import Database
from postroom_mta.smtpclient import (
    OPPORTUNISTIC,
    Credentials,
    DeliveryResult,
    Outcome,
    RecipientResult,
    TLSPolicy,
    UnverifiedCreator,
    verifying_creator,
)

CACHE_SECONDS = 5.0
MAX_CACHED = 10_000
PASSWORD_UNREADABLE = Reply(451, "4.3.5", "Smarthost password file unreadable")
MAX_PASSWORD = 4096


class SmarthostError(Exception):
    """The route cannot be used now; ``reply`` is every recipient's (temporary) result."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


@dataclass(frozen=True)
class SmarthostOptions:
    """The global smarthost settings (the transport entries come from the database)."""

    relayhost: Route | None = None
    verify: bool = True
    ca_file: str | None = None
    auth_failure: str = "defer"  # or "bounce"

    @classmethod
    def from_settings(cls, settings: Settings) -> SmarthostOptions:
        relayhost = None
        if settings.relay_host is not None:
            relayhost = Route(settings.relay_host, settings.relay_tls, settings.relay_user,
                              settings.relay_password_file, source="relayhost")
        return cls(relayhost, settings.relay_tls_verify, settings.relay_tls_ca_file,
                   settings.relay_auth_failure)


def read_password(ref: str) -> str:
    """The password in the file ``ref`` names (first line); raises SmarthostError. Blocking."""
    path = transports.password_path(ref)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_PASSWORD + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise SmarthostError(PASSWORD_UNREADABLE.with_text(
            f"Smarthost password file {path} unreadable: {getattr(exc, 'strerror', exc)}")) from exc
    password = text.splitlines()[0] if text else ""
    if not password or len(text) > MAX_PASSWORD:
        raise SmarthostError(PASSWORD_UNREADABLE.with_text(
            f"Smarthost password file {path} is empty or too long"))
    return password


def login_failure(result: DeliveryResult,
                  action: str) -> tuple[RecipientResult | None, DeliveryResult]:
    """The first recipient whose attempt ended at AUTH (None: no login failed), and the result.

    The client reports a failed login as a temporary session failure (the
    recipients were never offered), so by default the mail stays queued. With
    ``action`` ``bounce`` (POSTROOM_RELAY_AUTH_FAILURE) a server's 5xx to AUTH
    fails the recipients; our own refusals (no mechanism, no TLS) stay temporary.
    """
    failed = [r for r in result.recipients if r.stage == "auth"]
    if not failed:
        return None, result
    first = failed[0]
    if action != "bounce" or not first.remote or first.code < 500:
        return first, result
    recipients = tuple(replace(r, outcome=Outcome.FAILED) if r.stage == "auth" else r
                       for r in result.recipients)
    return first, replace(result, recipients=recipients)


class Smarthosts:
    """The relay's route table: transport entries (cached) over the relay host over MX."""

    def __init__(self, database: Database, options: SmarthostOptions, *, pool: ThreadPool,
                 reactor: ReactorThreads, log: Logger) -> None:
        self.database = database
        self.options = options
        self.pool = pool
        self.reactor = reactor
        self.log = log
        # one verifying creator for every route: equal policies then key the same sessions
        self._creator: Any = (verifying_creator(options.ca_file) if options.verify
                              else UnverifiedCreator)
        self._routes: dict[str, tuple[float, Route | None]] = {}
        self._passwords: dict[str, tuple[float, str]] = {}

    def check(self) -> None:
        """At start: the relay host's password must be readable (raises SmarthostError)."""
        route = self.options.relayhost
        if route is not None and route.password_ref is not None:
            read_password(route.password_ref)

    async def routes(self, domains: Iterable[str]) -> dict[str, Route | None]:
        """The route of each recipient domain (None: MX). Fails only when PostgreSQL does."""
        now = self.reactor.seconds()
        wanted = {d.lower() for d in domains}
        found: dict[str, Route | None] = {}
        missing = []
        for domain in wanted:
            cached = self._routes.get(domain)
            if cached is not None and cached[0] > now:
                found[domain] = cached[1]
            else:
                missing.append(domain)
        if missing:
            entries = await self.database.run(transports.routes_for, missing)
            if len(self._routes) > MAX_CACHED:
                self._routes.clear()
            for domain in missing:
                route = choose_route(domain, entries, self.options.relayhost)
                self._routes[domain] = (now + CACHE_SECONDS, route)
                found[domain] = route
        return found

    async def policy(self, route: Route) -> TLSPolicy:
        """The TLS policy (and login) for ``route``; raises SmarthostError."""
        if route.tls == NO_TLS:
            return OPPORTUNISTIC
        auth = None
        if route.username is not None and route.password_ref is not None:
            password = await self._password(route.password_ref)
            auth = Credentials(route.username, password)
        return TLSPolicy(required=True, creator=self._creator,
                         implicit=route.tls == IMPLICIT_TLS, auth=auth)

    async def _password(self, ref: str) -> str:
        now = self.reactor.seconds()
        cached = self._passwords.get(ref)
        if cached is not None and cached[0] > now:
            return cached[1]
        password = await defer_to_pool(self.reactor, self.pool, read_password, ref)
        self._passwords[ref] = (now + CACHE_SECONDS, password)
        return password
