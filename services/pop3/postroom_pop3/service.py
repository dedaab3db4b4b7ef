"""Wiring of the pop3 service: the store-backed Authority, the rate limiter and the factory."""

from __future__ import annotations

from typing import Any

from postroom.auth.ratelimit import LoginRateLimiter
from postroom.runtime import ServiceContext
from postroom_pop3.maildrop import StoreAuthority
from postroom_pop3.protocol import POP3Factory

# threads for blocking Redis calls (rate limits, locks, change events); they are short
REDIS_THREADS = 4


def build_factory(ctx: ServiceContext) -> POP3Factory:
    """A POP3Factory over the context's database, Redis and TLS configuration."""
    settings = ctx.settings
    pool = ctx.thread_pool("redis", REDIS_THREADS)
    authority = StoreAuthority(
        ctx.db, ctx.redis_client, pool, prefix=settings.redis_prefix,
        limiter=LoginRateLimiter.from_settings(ctx.redis_client, settings, ctx.metrics),
        reactor=ctx.reactor, metrics=ctx.metrics)
    return POP3Factory(
        authority, hostname=settings.hostname, tls=ctx.tls,
        allow_plaintext_auth_on_loopback=settings.allow_plaintext_auth_on_loopback,
        clock=ctx.reactor, max_connections_per_ip=settings.max_connections_per_ip,
        metrics=ctx.metrics)


async def start_listening(ctx: ServiceContext) -> POP3Factory:
    """Listen with STLS on POSTROOM_POP3_LISTEN and implicit TLS on POSTROOM_POP3_TLS_LISTEN."""
    factory = build_factory(ctx)
    listening: Any = factory  # an IProtocolFactory (zope interfaces are invisible to mypy)
    await ctx.listen_all(ctx.settings.pop3_listen, listening)
    await ctx.listen_all(ctx.settings.pop3_tls_listen, listening, implicit_tls=True)

    def stop() -> Any:
        # listeners are closed by now; end open sessions so their locks are freed
        factory.close_sessions()

    ctx.on_stop(stop)
    return factory
