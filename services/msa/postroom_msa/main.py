"""The msa service's declaration and wiring for `postroom serve msa`."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from postroom.auth.ratelimit import LoginRateLimiter
from postroom.queue.reconciler import Enqueuer
from postroom.queue.streams import QueueClient
from postroom.runtime import ServiceContext
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


def build_policy(ctx: ServiceContext) -> MSAPolicy:
    """The MSAPolicy over the context's database, Redis and settings."""
    settings = ctx.settings
    redis_pool = ctx.thread_pool("redis", REDIS_THREADS)
    sign_pool = ctx.thread_pool("dkim", SIGN_THREADS)
    queue = QueueClient(ctx.redis, settings.redis_prefix)
    limits = SendingLimits(ctx.redis, settings.redis_prefix,
                           messages_per_hour=settings.msa_max_messages_per_hour,
                           recipients_per_day=settings.msa_max_recipients_per_day)
    submitter = Submitter(ctx.database, Enqueuer(queue, redis_pool, ctx.reactor), limits,
                          hostname=settings.hostname, sign_pool=sign_pool,
                          redis_pool=redis_pool, reactor=ctx.reactor, metrics=ctx.metrics)
    return MSAPolicy(ctx.database, limiter=LoginRateLimiter.from_settings(ctx.redis, settings),
                     limits=limits, submitter=submitter, redis_pool=redis_pool,
                     reactor=ctx.reactor,
                     allow_plaintext_auth_on_loopback=settings.allow_plaintext_auth_on_loopback)


async def start_listening(ctx: ServiceContext) -> MSAPolicy:
    """STARTTLS listeners on POSTROOM_MSA_LISTEN, implicit TLS on POSTROOM_MSA_TLS_LISTEN."""
    policy = build_policy(ctx)
    options = ServerOptions.from_settings(ctx.settings)
    starttls: Any = SMTPServerFactory(policy, options, tls=ctx.tls, clock=ctx.reactor,
                                      metrics=ctx.metrics, listener="submission")
    implicit: Any = SMTPServerFactory(policy, options, implicit_tls=True, clock=ctx.reactor,
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
