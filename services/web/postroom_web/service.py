"""Wiring of the web service: the app over the context's database and Redis, and its listeners."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from postroom.auth.ratelimit import LoginRateLimiter
from postroom.interfaces import defer_to_pool, twisted_clock
from postroom.logs import get_logger
from postroom.net.tls import ServerTLS, tls_alpn_certificate
from postroom.ops.acme import Issuer
from postroom.runtime import ServiceContext, StartupError
from postroom.secretbox import Keyring, SecretError
from postroom.store import webaccess
from postroom.store.acme import alpn_challenges
from postroom_web import routes
from postroom_web.auth import Logins
from postroom_web.dmarc.console import LOOKUP_THREADS, DmarcConsole
from postroom_web.http import PerClientLimit, WebApp, WebSite
from postroom_web.templating import load_static, make_environment

log = get_logger("web")

# expired console sessions are deleted this often (seconds; every replica does it, harmlessly)
PURGE_INTERVAL = 3600.0
# how often TLS-ALPN-01 answers are loaded from the database (seconds; postroom.ops.acme
# waits a little longer than this before asking the CA to look)
ALPN_POLL = 1.0
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
                    session_ttl=max(1, int(settings.web_session_ttl)), keyring=_keyring(ctx))
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


def _keyring(ctx: ServiceContext) -> Keyring | None:
    """The secret keys that seal two-factor secrets (POSTROOM_SECRET_KEY_FILE), if set."""
    settings = ctx.settings
    if not settings.secret_key_file and not settings.secret_old_key_files:
        return None
    try:
        return Keyring.from_files(settings.secret_key_file, settings.secret_old_key_files)
    except (OSError, SecretError) as exc:
        raise StartupError(f"POSTROOM_SECRET_KEY_FILE: {exc}") from None


async def start_listening(ctx: ServiceContext) -> WebApp:
    """Serve on POSTROOM_WEB_LISTEN, and with TLS on POSTROOM_WEB_TLS_LISTEN when set."""
    app = build_app(ctx)
    # one per process: its name cache serves every render (docs/web.md, DMARC dashboard)
    app.dmarc = DmarcConsole(ctx.settings, ctx.metrics, ctx.reactor,
                             ctx.thread_pool("dmarc-dns", LOOKUP_THREADS))
    ctx.on_stop(app.dmarc.close)
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
            if ctx.cert_sync is not None:
                ctx.cert_sync.tls = ctx.tls
        await ctx.listen_all(ctx.settings.web_tls_listen, site, implicit_tls=True)
    purge = LoopingCall(lambda: Deferred.fromCoroutine(_purge_sessions(ctx)))
    purge.clock = twisted_clock(ctx.reactor)
    purge.start(PURGE_INTERVAL, now=True).addErrback(
        lambda f: log.error("session purge stopped", error=f.getErrorMessage()))
    ctx.on_stop(lambda: purge.stop() if purge.running else None)
    if ctx.settings.acme:
        if ctx.settings.acme_challenge == "tls-alpn-01":
            _answer_tls_alpn(ctx)
        _start_renewer(ctx)
    return app


def _answer_tls_alpn(ctx: ServiceContext) -> None:
    """Every second, present the TLS-ALPN-01 answers in the database on the TLS listener (any
    replica may be the one the CA reaches; a new certificate per answer, made once)."""
    if ctx.tls is None:
        raise StartupError("POSTROOM_ACME_CHALLENGE=tls-alpn-01 needs POSTROOM_WEB_TLS_LISTEN "
                           "(the CA connects to port 443)")
    tls = ctx.tls
    made: dict[tuple[str, str], Any] = {}

    async def refresh() -> None:
        try:
            wanted = await ctx.db.run(alpn_challenges)
        except Exception as exc:  # noqa: BLE001 -- logged; the next round tries again
            log.warning("tls-alpn-01 answers not loaded", error=str(exc)[:200])
            return
        current = {}
        for name, key_authorization in wanted.items():
            pair = made.get((name, key_authorization))
            if pair is None:
                pair = tls_alpn_certificate(name, key_authorization)
                log.info("tls-alpn-01 answer loaded", name=name)
            current[(name, key_authorization)] = pair
        made.clear()
        made.update(current)
        tls.answer_tls_alpn({name: pair for (name, _), pair in current.items()})

    poll = LoopingCall(lambda: Deferred.fromCoroutine(refresh()))
    poll.clock = twisted_clock(ctx.reactor)
    poll.start(ALPN_POLL, now=True).addErrback(
        lambda f: log.error("tls-alpn-01 answerer stopped", error=f.getErrorMessage()))
    ctx.on_stop(lambda: poll.stop() if poll.running else None)


def _start_renewer(ctx: ServiceContext) -> None:
    """Every POSTROOM_ACME_CHECK_INTERVAL, issue or renew the certificate when it is due.

    Every replica checks; the PostgreSQL advisory lock lets one of them issue at a time
    (postroom.ops.acme). The work is blocking HTTPS to the CA: it runs in a thread of its own.
    """
    keyring = Keyring.from_files(ctx.settings.secret_key_file, ctx.settings.secret_old_key_files)
    issuer = Issuer(ctx.db, ctx.settings, keyring=keyring, metrics=ctx.metrics)
    pool = ctx.thread_pool("acme", 1)

    def check() -> Deferred[Any]:
        return defer_to_pool(ctx.reactor, pool, issuer.ensure).addErrback(
            lambda f: log.error("acme check failed", error=f.getErrorMessage()))

    renew = LoopingCall(check)
    renew.clock = twisted_clock(ctx.reactor)
    renew.start(ctx.settings.acme_check_interval, now=True).addErrback(
        lambda f: log.error("acme renewer stopped", error=f.getErrorMessage()))
    ctx.on_stop(lambda: renew.stop() if renew.running else None)


async def _purge_sessions(ctx: ServiceContext) -> None:
    """Delete expired console sessions (a failure is logged; the next round tries again)."""
    try:
        deleted = await ctx.db.run(webaccess.purge_web_sessions)
    except Exception as exc:  # noqa: BLE001 -- logged; the sessions are refused anyway
        log.warning("session purge failed", error=str(exc)[:200])
        return
    if deleted:
        log.info("expired sessions deleted", count=deleted)
