"""Wiring of the imap service: the store-backed accounts, change listener, limits and factory."""

from __future__ import annotations

from typing import Any

from postroom.auth.authcache import AuthCache, CacheInvalidation, Invalidated, SharedLogins
from postroom.auth.ratelimit import LoginRateLimiter
from postroom.config import Settings
from postroom.runtime import ServiceContext, group_key
from postroom.store import imap_metadata, users
from postroom_imap.backend import ChangeListener, StoreAccounts
from postroom_imap.protocol import IMAPFactory
from postroom_imap.syntax import Limits

# threads for blocking Redis calls (rate limits, publishing change events); they are short
REDIS_THREADS = 4
# threads for pure CPU work too large for the reactor (LIST over many mailboxes); the GIL
# makes more of them useless, and two keep one user's huge LIST from queueing another's
CPU_THREADS = 2


def limits_from_settings(settings: Settings) -> Limits:
    """The command reader's limits from POSTROOM_MAX_MESSAGE_SIZE and the POSTROOM_IMAP_* ones."""
    return Limits(max_append_literal=settings.max_message_size,
                  max_append_command=settings.imap_max_append_bytes,
                  max_literals=settings.imap_max_literals,
                  max_held=settings.imap_max_held_bytes,
                  spool_threshold=settings.imap_spool_threshold)


def build_factory(ctx: ServiceContext) -> tuple[IMAPFactory, ChangeListener, CacheInvalidation]:
    """An IMAPFactory over the context's database, Redis and TLS configuration, with the
    threads that listen for mailbox changes and for credential changes."""
    settings = ctx.settings
    # the workers of `--processes N` share a key, and through Redis the logins they verified
    # (an account's first login costs one scrypt check in the group, not one per worker)
    key = group_key()
    auth_cache: AuthCache[users.UserInfo] = AuthCache(secret=key)
    shared = (SharedLogins(auth_cache, ctx.redis_client, settings.redis_prefix, key,
                           users.encode_info, users.decode_info) if key is not None else None)
    # revoked app passwords, changed passwords: every cached login of the account goes (the
    # shared logins forget the local ones too, in the order that keeps a racing login out)
    caches: list[Invalidated] = [auth_cache] if shared is None else [shared]
    invalidation = CacheInvalidation(ctx.redis_client, settings.redis_prefix, caches,
                                     metrics=ctx.metrics)
    pool = ctx.thread_pool("redis", REDIS_THREADS)
    listener = ChangeListener(ctx.redis_client, settings.redis_prefix, ctx.reactor)
    accounts = StoreAccounts(
        ctx.db, ctx.redis_client, pool, prefix=settings.redis_prefix,
        limiter=LoginRateLimiter.from_settings(ctx.redis_client, settings, ctx.metrics),
        listener=listener, auth_cache=auth_cache, shared_logins=shared,
        reactor=ctx.reactor, cpu_pool=ctx.thread_pool("cpu", CPU_THREADS),
        learn=bool(settings.rspamd_url and settings.rspamd_controller_url),
        metadata_limits=imap_metadata.Limits(max_size=settings.imap_metadata_max_size,
                                             max_entries=settings.imap_metadata_max_entries,
                                             max_total=settings.imap_metadata_max_total),
        metrics=ctx.metrics)
    factory = IMAPFactory(
        accounts, hostname=settings.hostname, tls=ctx.tls,
        allow_plaintext_auth_on_loopback=settings.allow_plaintext_auth_on_loopback,
        clock=ctx.reactor, limits=limits_from_settings(settings),
        metrics=ctx.metrics, max_connections_per_ip=settings.max_connections_per_ip)
    return factory, listener, invalidation


async def start_listening(ctx: ServiceContext) -> IMAPFactory:
    """Listen with STARTTLS on POSTROOM_IMAP_LISTEN and implicit TLS on POSTROOM_IMAP_TLS_LISTEN."""
    factory, listener, invalidation = build_factory(ctx)
    listener.start()
    invalidation.start()
    listening: Any = factory  # an IProtocolFactory (zope interfaces are invisible to mypy)
    await ctx.listen_all(ctx.settings.imap_listen, listening)
    await ctx.listen_all(ctx.settings.imap_tls_listen, listening, implicit_tls=True)

    def stop() -> None:
        factory.close_sessions()
        listener.stop()
        invalidation.stop()

    ctx.on_stop(stop)
    return factory
