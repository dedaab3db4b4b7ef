"""The mta service's declaration for `postroom serve mta`: inbound port 25 and the outbound relay.

``start(ctx)`` starts both halves: :func:`start_relay` (the `outbound`
consumer, the reconciler and the bounce sweeper) and the port-25 listener
(:func:`postroom_mta.inbound.start_inbound`); :func:`start_spool_retention` deletes finished
spool messages past POSTROOM_SPOOL_RETENTION (every replica runs it; SKIP LOCKED splits work).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred

from postroom.config import ConfigError
from postroom.net.dns import Resolver
from postroom.outgoing import Outgoing
from postroom.queue.retention import SpoolPurger
from postroom.queue.streams import QueueClient, connect
from postroom.queue.worker import start_stream_worker
from postroom.runtime import ServiceContext
from postroom.service import ServiceSpec
from postroom_mta.inbound import start_inbound
from postroom_mta.mtasts import PolicyStore
from postroom_mta.relay import GROUP, STREAM, Relay, RelayOptions
from postroom_mta.smarthost import SmarthostError
from postroom_mta.worker_bounce import BounceSweeper

# DNS answers wait on the network; a few threads keep many domains' lookups moving
DNS_THREADS = 8
REDIS_THREADS = 2
# SMTP sessions are cheap on the reactor; what bounds them is RelayOptions.max_sessions
RELAY_CONCURRENCY = 20


def start_relay(ctx: ServiceContext, options: RelayOptions | None = None) -> Relay:
    """Consume `outbound`, reconcile the spool and sweep bounces; SIGTERM hands work back."""
    settings = ctx.settings
    assert settings.redis_url is not None
    options = options or RelayOptions.from_settings(
        settings, outgoing=Outgoing.from_settings(settings, ctx.metrics))
    client = connect(settings.redis_url)
    queue = QueueClient(client, settings.redis_prefix)
    if options.mta_sts and options.sts_store is None:
        options = replace(options, sts_store=PolicyStore(client, settings.redis_prefix))
    redis_pool = ctx.thread_pool("redis", REDIS_THREADS)
    relay = Relay(ctx.db, queue, options, resolver=Resolver.from_settings(settings),
                  dns_pool=ctx.thread_pool("dns", DNS_THREADS), redis_pool=redis_pool,
                  reactor=ctx.reactor, log=ctx.log.bind(component="relay"), metrics=ctx.metrics)
    _check_smarthost(relay, options)
    sweeper = BounceSweeper(ctx.db, queue, options.policy,
                            interval=settings.reconcile_interval, redis_pool=redis_pool,
                            reactor=ctx.reactor, log=ctx.log.bind(component="relay"))
    # once the consumer has stopped: idle SMTP sessions (QUIT once no delivery can want
    # them), then the sweeper; the reconciler, gauges and Redis follow
    worker = start_stream_worker(ctx, client, queue, stream=STREAM, group=GROUP,
                                 handler=relay.handle, concurrency=RELAY_CONCURRENCY,
                                 stop_after_consumer=(relay.stop, sweeper.stop))
    sweeper.start()
    relay.start()
    relay.log.info("relay started", stream=STREAM, group=GROUP, consumer=worker.consumer.name,
                 concurrency=RELAY_CONCURRENCY, max_sessions=options.max_sessions,
                 max_per_domain=options.max_per_domain, port=options.port,
                 session_idle=options.session_idle,
                 session_reuse_limit=options.session_reuse_limit,
                 mta_sts=options.mta_sts, dane=options.dane, tls_reports=options.tls_reports,
                 allowed_networks=",".join(options.allowed_networks))
    return relay


def _check_smarthost(relay: Relay, options: RelayOptions) -> None:
    """Stop start-up on an unreadable relay host password; warn when certificates go unchecked."""
    route = options.smarthost.relayhost
    try:
        relay.smarthosts.check()
    except SmarthostError as exc:
        raise ConfigError(f"POSTROOM_RELAY_PASSWORD_FILE: {exc.reply.text}") from None
    if route is not None:
        relay.log.info("smarthost configured", nexthop=str(route.nexthop), tls=route.tls,
                       user=route.username, verify=options.smarthost.verify,
                       ca_file=options.smarthost.ca_file)
    if not options.smarthost.verify:
        relay.log.warning("smarthost certificates are not verified",
                          setting="POSTROOM_RELAY_TLS_VERIFY",
                          risk="a login and mail may go to whoever intercepts the connection")


def start_spool_retention(ctx: ServiceContext) -> SpoolPurger:
    """Delete finished spool messages past POSTROOM_SPOOL_RETENTION (postroom.queue.retention)."""
    purger = SpoolPurger(ctx.db, ctx.settings, metrics=ctx.metrics, reactor=ctx.reactor,
                         log=ctx.log.bind(component="spool-retention"))
    ctx.on_stop(purger.stop)
    purger.start()
    return purger


def start(ctx: ServiceContext) -> Deferred[Any] | None:
    """Start the mta: the outbound relay, spool retention and the inbound listener."""
    start_relay(ctx)
    start_spool_retention(ctx)
    return Deferred.fromCoroutine(start_inbound(ctx))


SERVICE = ServiceSpec(
    name="mta",
    description="Receives mail for local domains on port 25 and relays `outbound` mail by MX "
                "with retries and DSNs",
    start=start,
    needs_tls=True,
    listen_settings=("mta_listen",),
)
