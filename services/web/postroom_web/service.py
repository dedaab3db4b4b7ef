"""Wiring of the web service: the app over the context's database and Redis, and its listeners."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from postroom.auth.ratelimit import LoginRateLimiter
from postroom.interfaces import twisted_clock
from postroom.logs import get_logger
from postroom.net.tls import ServerTLS
from postroom.runtime import ServiceContext, StartupError
from postroom.secretbox import Keyring, SecretError
from postroom.store import webaccess
from postroom_web import routes
from postroom_web.auth import Logins
from postroom_web.http import PerClientLimit, WebApp, WebSite
from postroom_web.templating import load_static, make_environment

log = get_logger("web")

# expired console sessions are deleted this often (seconds; every replica does it, harmlessly)
PURGE_INTERVAL = 3600.0
# threads for Redis calls: the login limiter's, the overview's queue depths (short)
REDIS_THREADS = 2
# threads for DNS look-ups (the DNS pages' checks; each bounded to seconds)
DNS_THREADS = 4


def build_app(ctx: ServiceContext) -> WebApp:
    """The WebApp of the context's settings, database, Redis and metrics."""
    settings = ctx.settings
    pool = ctx.thread_pool("redis", REDIS_THREADS)
    limiter = LoginRateLimiter.from_settings(ctx.redis_client, settings, ctx.metrics)
    logins = Logins(ctx.db, limiter, pool, ctx.reactor, ctx.metrics,
                    session_ttl=max(1, int(settings.web_session_ttl)))
    static = load_static()
    try:
        keyring = Keyring.from_files(settings.secret_key_file, settings.secret_old_key_files)
    except SecretError as exc:
        raise StartupError(str(exc)) from None
    return WebApp(settings=settings, database=ctx.db, registry=routes.registry(),
                  templates=make_environment(static), static=static, metrics=ctx.metrics,
                  reactor=ctx.reactor, logins=logins, redis=ctx.redis_client, pool=pool,
                  health=ctx.health, keyring=keyring,
                  dns_pool=ctx.thread_pool("dns", DNS_THREADS))


async def start_listening(ctx: ServiceContext) -> WebApp:
    """Serve on POSTROOM_WEB_LISTEN, and with TLS on POSTROOM_WEB_TLS_LISTEN when set."""
    app = build_app(ctx)
    site: Any = PerClientLimit(WebSite(app), ctx.settings.max_connections_per_ip, ctx.metrics,
                               exempt=ctx.settings.web_proxy_trusted)
    await ctx.listen_all(ctx.settings.web_listen, site)
    if ctx.settings.web_tls_listen:
        if ctx.tls is None:
            if not ctx.settings.tls_cert_file or not ctx.settings.tls_key_file:
                raise StartupError("POSTROOM_WEB_TLS_LISTEN needs POSTROOM_TLS_CERT_FILE and "
                                   "POSTROOM_TLS_KEY_FILE")
            ctx.tls = ServerTLS(ctx.settings.tls_cert_file, ctx.settings.tls_key_file)
            ctx.tls.start_watching(ctx.reactor)
            ctx.tls.install_sighup(ctx.reactor)
        await ctx.listen_all(ctx.settings.web_tls_listen, site, implicit_tls=True)
    purge = LoopingCall(lambda: Deferred.fromCoroutine(_purge_sessions(ctx)))
    purge.clock = twisted_clock(ctx.reactor)
    purge.start(PURGE_INTERVAL, now=True).addErrback(
        lambda f: log.error("session purge stopped", error=f.getErrorMessage()))
    ctx.on_stop(lambda: purge.stop() if purge.running else None)
    return app


async def _purge_sessions(ctx: ServiceContext) -> None:
    """Delete expired console sessions (a failure is logged; the next round tries again)."""
    try:
        deleted = await ctx.db.run(webaccess.purge_web_sessions)
    except Exception as exc:  # noqa: BLE001 -- logged; the sessions are refused anyway
        log.warning("session purge failed", error=str(exc)[:200])
        return
    if deleted:
        log.info("expired sessions deleted", count=deleted)
