"""Wiring of the managesieve service: the store-backed Authority, the limiter, the factory."""

from __future__ import annotations

from typing import Any

from postroom.auth.ratelimit import LoginRateLimiter
from postroom.runtime import ServiceContext
from postroom.sieve import SIEVE_EXTENSIONS
from postroom_managesieve.protocol import ManageSieveFactory
from postroom_managesieve.scripts import StoreAuthority

# threads for blocking Redis calls (the login limiter); they are short
REDIS_THREADS = 2
# threads that check uploaded scripts (CPU-bound, bounded by the script size limit)
CHECK_THREADS = 2


def build_factory(ctx: ServiceContext) -> ManageSieveFactory:
    """A ManageSieveFactory over the context's database, Redis and TLS configuration."""
    settings = ctx.settings
    authority = StoreAuthority(
        ctx.db, ctx.thread_pool("redis", REDIS_THREADS), ctx.thread_pool("check", CHECK_THREADS),
        limiter=LoginRateLimiter.from_settings(ctx.redis_client, settings, ctx.metrics),
        max_scripts=settings.sieve_max_scripts, max_bytes=settings.sieve_max_script_bytes,
        reactor=ctx.reactor, metrics=ctx.metrics)
    return ManageSieveFactory(
        authority, hostname=settings.hostname, extensions=SIEVE_EXTENSIONS,
        max_script_bytes=settings.sieve_max_script_bytes,
        max_redirects=settings.sieve_max_redirects, tls=ctx.tls,
        allow_plaintext_auth_on_loopback=settings.allow_plaintext_auth_on_loopback,
        clock=ctx.reactor, max_connections_per_ip=settings.max_connections_per_ip,
        metrics=ctx.metrics)


async def start_listening(ctx: ServiceContext) -> ManageSieveFactory:
    """Listen with STARTTLS on POSTROOM_MANAGESIEVE_LISTEN."""
    factory = build_factory(ctx)
    listening: Any = factory  # an IProtocolFactory (zope interfaces are invisible to mypy)
    await ctx.listen_all(ctx.settings.managesieve_listen, listening)
    ctx.on_stop(factory.close_sessions)
    return factory
