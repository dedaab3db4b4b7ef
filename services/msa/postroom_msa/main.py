"""The msa service's declaration and wiring for `postroom serve msa`."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from postroom.auth.authcache import CacheInvalidation
from postroom.auth.ratelimit import LoginRateLimiter
from postroom.interfaces import twisted_clock
from postroom.mailauth.keycache import DkimKeyCache
from postroom.net.clamd import ClamdClient
from postroom.queue.reconciler import Enqueuer
from postroom.queue.streams import QueueClient
from postroom.runtime import ServiceContext, StartupError
from postroom.secretbox import DKIM_PRIVATE_KEY, KEY_SETTING, Keyring, SecretError
from postroom.service import ServiceSpec
from postroom.smtp.options import ServerOptions
from postroom.smtp.server import SMTPServerFactory
from postroom_msa.limits import SendingLimits
from postroom_msa.policy import MSAPolicy
from postroom_msa.submission import Submitter

# blocking Redis calls (login limits, sending limits, enqueue) are short
REDIS_THREADS = 4
# DKIM signing is CPU work: a couple of threads keep the reactor free without oversubscribing
SIGN_THREADS = 2


def load_keyring(ctx: ServiceContext) -> Keyring:
    """The keys of POSTROOM_SECRET_KEY_FILE / _OLD_KEY_FILES; a bad file stops the start."""
    try:
        return Keyring.from_files(ctx.settings.secret_key_file,
                                  ctx.settings.secret_old_key_files)
    except SecretError as exc:
        raise StartupError(str(exc)) from None


async def check_signing_keys(ctx: ServiceContext, keyring: Keyring) -> None:
    """Open every active DKIM key once before serving: a key this msa cannot decrypt stops
    the start with one line naming the setting (rather than 451 on every message)."""
    from postroom.store import dkim

    keys = await ctx.db.run(dkim.list_keys, None, active_only=True)
    for key in keys:
        try:
            keyring.open(key.private_key, DKIM_PRIVATE_KEY)
        except SecretError as exc:
            raise StartupError(f"DKIM key {key.selector} of {key.domain}: {exc}") from None
    plaintext = [f"{k.domain}/{k.selector}" for k in keys if not k.encrypted]
    if not keyring.can_seal:
        ctx.log.warning("secret key not configured", setting=KEY_SETTING,
                        effect="DKIM private keys are stored unencrypted",
                        plaintext_keys=len(plaintext))
    elif plaintext:
        ctx.log.warning("dkim private keys not encrypted", keys=plaintext[:20],
                        count=len(plaintext), fix="postroom dkim encrypt-keys")
    old = [f"{k.domain}/{k.selector}" for k in keys
           if k.encrypted and k.key_id != keyring.current_id]
    if keyring.can_seal and old:
        ctx.log.info("dkim private keys sealed with an old secret key", keys=old[:20],
                     count=len(old), fix="postroom dkim encrypt-keys")


def build_policy(ctx: ServiceContext, keyring: Keyring | None = None) -> MSAPolicy:
    """The MSAPolicy over the context's database, Redis and settings."""
    settings = ctx.settings
    redis_pool = ctx.thread_pool("redis", REDIS_THREADS)
    sign_pool = ctx.thread_pool("dkim", SIGN_THREADS)
    queue = QueueClient(ctx.redis_client, settings.redis_prefix)
    limits = SendingLimits(ctx.redis_client, settings.redis_prefix,
                           messages_per_hour=settings.msa_max_messages_per_hour,
                           recipients_per_day=settings.msa_max_recipients_per_day)
    submitter = Submitter(ctx.db, Enqueuer(queue, redis_pool, ctx.reactor), limits,
                          hostname=settings.hostname, sign_pool=sign_pool,
                          redis_pool=redis_pool, reactor=ctx.reactor, metrics=ctx.metrics,
                          keyring=keyring, group_commit=settings.spool_group_commit,
                          group_commit_bytes=settings.spool_group_commit_bytes,
                          crash_file=settings.fault_crash_after_spool_commit,
                          key_cache=DkimKeyCache(ttl=settings.msa_dkim_key_cache_ttl))
    scanner = None
    if settings.clamd_address and settings.msa_virus_scan:
        scanner = ClamdClient(settings.clamd_address, reactor=ctx.reactor,
                              timeout=settings.clamd_timeout,
                              max_stream=settings.clamd_max_stream, metrics=ctx.metrics)
    limiter = LoginRateLimiter.from_settings(ctx.redis_client, settings, ctx.metrics)
    return MSAPolicy(ctx.db, limiter=limiter,
                     limits=limits, submitter=submitter, redis_pool=redis_pool,
                     reactor=ctx.reactor,
                     allow_plaintext_auth_on_loopback=settings.allow_plaintext_auth_on_loopback,
                     virus_scanner=scanner, metrics=ctx.metrics)


async def start_listening(ctx: ServiceContext) -> MSAPolicy:
    """STARTTLS listeners on POSTROOM_MSA_LISTEN, implicit TLS on POSTROOM_MSA_TLS_LISTEN."""
    keyring = load_keyring(ctx)
    await check_signing_keys(ctx, keyring)
    policy = build_policy(ctx, keyring)
    # revoked app passwords, changed passwords: every cached login of the account goes;
    # a domain's DKIM keys changed (`@domain`): the cached signing keys go
    invalidation = CacheInvalidation(ctx.redis_client, ctx.settings.redis_prefix,
                                     [policy.auth_cache, policy.submitter.key_cache],
                                     metrics=ctx.metrics)
    invalidation.start()
    ctx.on_stop(invalidation.stop)
    options = ServerOptions.from_settings(ctx.settings)
    starttls: Any = SMTPServerFactory(policy, options, tls=ctx.tls,
                                      clock=twisted_clock(ctx.reactor),
                                      metrics=ctx.metrics, listener="submission")
    implicit: Any = SMTPServerFactory(policy, options, implicit_tls=True,
                                      clock=twisted_clock(ctx.reactor),
                                      metrics=ctx.metrics, listener="submissions")
    await ctx.listen_all(ctx.settings.msa_listen, starttls)
    await ctx.listen_all(ctx.settings.msa_tls_listen, implicit, implicit_tls=True)
    # listeners close first; then messages being spooled get their reply before pools stop
    ctx.on_stop(policy.submitter.drain)
    return policy


def start(ctx: ServiceContext) -> Deferred[Any]:
    return Deferred.fromCoroutine(start_listening(ctx))


SERVICE = ServiceSpec(
    name="msa",
    description="Authenticated submission (RFC 6409) on 587/2525 with STARTTLS and 465 with "
                "implicit TLS: owned senders only, Date/Message-ID added, DKIM-signed, spooled",
    start=start,
    needs_tls=True,
    listen_settings=("msa_listen", "msa_tls_listen"),
)
