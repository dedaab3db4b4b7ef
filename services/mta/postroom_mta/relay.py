"""The relay worker: handles `outbound` entries, sends by MX, records results, bounces.

For an entry (:meth:`Relay.handle`, the StreamConsumer handler):

1. one transaction (worker_store.load_work) locks the entry's pending
   `outbound` recipients, moves those in local domains to the `deliver`
   stream, and reads the message; after commit the `deliver` entry is put on
   its stream;
2. remote recipients are grouped by destination and sent with
   ``routing.deliver_to_domain``: by recipient domain when it goes by MX, by
   next hop (and login) when a smarthost route applies (smarthost.py: a
   transport entry, then POSTROOM_RELAY_HOST), so all of a message's
   recipients behind one smarthost share a transaction. Destinations go in
   parallel, bounded by a global limit of SMTP sessions and a per-destination
   one keyed on the domain or the next hop (Postfix's
   ``default_process_limit`` / ``destination_concurrency_limit``), over an idle
   session of an earlier message when one is cached (connection reuse,
   sessioncache.py: idle sessions hold no slot);
3. each domain's results are recorded in one transaction
   (worker_store.record_results: delivered, deferred with back-off, failed or
   expired with its DSN); after commit the DSN is enqueued and a retry
   wake-up set in Redis.

The handler fails only when PostgreSQL is away (the entry then stays pending
and is claimed again); every delivery outcome is recorded and the handler
succeeds, so the entry is acknowledged. A crash between an accepted DATA and
the commit of ``delivered`` sends the message again later: duplicates at the
remote end are possible, loss is not (RFC 5321 section 6.1 accepts this).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.python.threadpool import ThreadPool

from postroom.config import Settings
from postroom.interfaces import ReactorThreads, defer_to_pool, global_reactor
from postroom.logs import Logger, get_logger
from postroom.metrics import (
    Metrics,
    delivery_attempts_total,
    messages_total,
    relay_internal_refused_total,
    relay_routes_total,
    relay_smarthost_auth_failures_total,
    relay_tls_results_dropped_total,
    relay_tls_results_total,
    sessions_reused_total,
)
from postroom.net.destinations import DestinationPolicy
from postroom.net.dns import Resolver
from postroom.net.nexthop import Route
from postroom.outgoing import Outgoing
from postroom.queue.consumer import QueueEntry
from postroom.queue.reconciler import enqueue_after_commit
from postroom.queue.redisclient import RedisError
from postroom.queue.streams import QueueClient
from postroom.store.db import Database
from postroom_mta import bounce
from postroom_mta.mtasts import PolicyFinder, PolicyStore
from postroom_mta.routing import TLSSecurity, deliver_to_domain
from postroom_mta.sessioncache import IDLE as SESSION_IDLE
from postroom_mta.sessioncache import REUSE_LIMIT as SESSION_REUSE_LIMIT
from postroom_mta.sessioncache import SessionCache
from postroom_mta.smarthost import (
    SmarthostError,
    SmarthostOptions,
    Smarthosts,
    login_failure,
)
from postroom_mta.smtpclient import (
    DEFAULT_TIMEOUTS,
    OPPORTUNISTIC,
    DeliveryResult,
    Envelope,
    Outcome,
    Recipient,
    RecipientResult,
    Timeouts,
    TLSPolicy,
)
from postroom_mta.tlsresults import TLSResultRecorder
from postroom_mta.worker_store import (
    DEFERRED,
    DELIVERED,
    FAILED,
    Policy,
    Recorded,
    RemoteRecipient,
    Result,
    Work,
    load_work,
    record_results,
)

STREAM = "outbound"
GROUP = "mta"
# defaults of POSTROOM_RELAY_MAX_SESSIONS / _MAX_PER_DESTINATION (for options built by hand)
MAX_SESSIONS = 50
MAX_PER_DOMAIN = 5
DELAY_NOTICE = 4 * 3600.0

_OUTCOMES = {Outcome.DELIVERED: DELIVERED, Outcome.DEFERRED: DEFERRED, Outcome.FAILED: FAILED}


@dataclass(frozen=True)
class RelayOptions:
    """How the relay sends and retries."""

    policy: Policy
    port: int = 25
    max_sessions: int = MAX_SESSIONS
    max_per_domain: int = MAX_PER_DOMAIN
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    tls: TLSPolicy = OPPORTUNISTIC
    bind_address: str | None = None
    mta_sts: bool = False  # off unless from_settings turns it on (POSTROOM_MTA_STS)
    mta_sts_port: int = 443
    dane: bool = False
    ca_file: str | None = None
    session_idle: float = SESSION_IDLE  # seconds a finished session waits for the next message
    session_reuse_limit: int = SESSION_REUSE_LIMIT  # transactions a session carries; 1: no reuse
    # internal networks MX addresses may be in (POSTROOM_RELAY_ALLOWED_NETWORKS); () refuses all
    allowed_networks: tuple[str, ...] = ()
    # the MTA-STS policy cache shared by all mta processes (start_relay sets it; None: per process)
    sts_store: PolicyStore | None = field(default=None, compare=False, repr=False)
    # POSTROOM_RELAY_HOST and friends; transport entries come from the database
    smarthost: SmarthostOptions = field(default_factory=SmarthostOptions)
    # record each outbound TLS session for TLS reports (POSTROOM_TLS_REPORTS)
    tls_reports: bool = False

    def destinations(self) -> DestinationPolicy:
        """Where the relay may connect: public addresses, and internal ones only if allowed."""
        return DestinationPolicy.allowing(self.allowed_networks)

    def security(self, resolver: Resolver, on_sts_failure: Callable[[str, str, str], None]
                 | None = None) -> TLSSecurity | None:
        """MTA-STS and DANE as configured, or None when both are off."""
        if not (self.mta_sts or self.dane):
            return None
        finder = PolicyFinder(resolver, port=self.mta_sts_port, ca_file=self.ca_file,
                              store=self.sts_store, destinations=self.destinations(),
                              on_failure=on_sts_failure) if self.mta_sts else None
        return TLSSecurity(resolver, sts=finder, dane_enabled=self.dane, ca_file=self.ca_file)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RelayOptions:
        policy = Policy(hostname=settings.hostname, retry_initial=settings.retry_initial,
                        retry_max=settings.retry_max, queue_lifetime=settings.queue_lifetime,
                        delay_notice=overrides.pop("delay_notice", DELAY_NOTICE),
                        outgoing=(overrides.pop("outgoing", None)
                                  or Outgoing.from_settings(settings)))
        fields: dict[str, Any] = {
            "port": settings.smtp_outbound_port, "bind_address": settings.smtp_bind_address,
            "max_sessions": settings.relay_max_sessions,
            "max_per_domain": settings.relay_max_per_destination,
            "mta_sts": settings.mta_sts, "mta_sts_port": settings.mta_sts_port,
            "dane": settings.dane, "ca_file": settings.tls_ca_file,
            "session_idle": settings.relay_session_idle,
            "session_reuse_limit": settings.relay_session_reuse_limit,
            "allowed_networks": settings.relay_allowed_networks,
            "smarthost": SmarthostOptions.from_settings(settings),
            "tls_reports": settings.tls_reports}
        fields.update(overrides)
        return cls(policy=policy, **fields)


class Relay:
    """Handles `outbound` queue entries; ``handle`` is the StreamConsumer's handler."""

    def __init__(self, database: Database, queue: QueueClient, options: RelayOptions, *,
                 resolver: Resolver, dns_pool: ThreadPool, redis_pool: ThreadPool,
                 reactor: ReactorThreads | None = None, log: Logger | None = None,
                 metrics: Metrics | None = None) -> None:
        if reactor is None:
            reactor = global_reactor()
        self.database = database
        self.queue = queue
        self.options = options
        self.resolver = resolver
        self.dns_pool = dns_pool
        self.redis_pool = redis_pool
        self.reactor = reactor
        self.log = log or get_logger("relay")
        self.sessions = DeferredSemaphore(options.max_sessions)
        self.tls_recorder = TLSResultRecorder(
            database, reactor=reactor,
            recorded=relay_tls_results_total(metrics) if metrics is not None else None,
            dropped=relay_tls_results_dropped_total(metrics) if metrics is not None else None,
        ) if options.tls_reports else None
        self.security = options.security(
            resolver, self.tls_recorder.sts_failure if self.tls_recorder is not None else None)
        self.destinations = options.destinations()
        self._refused = relay_internal_refused_total(metrics) if metrics is not None else None
        self._per_domain: dict[str, DeferredSemaphore] = {}
        # idle sessions kept for reuse; they hold no slot of the semaphores above
        self.session_cache = SessionCache(
            reactor, idle=options.session_idle, reuse_limit=options.session_reuse_limit,
            max_idle=options.max_sessions, max_idle_per_key=options.max_per_domain,
            reused=sessions_reused_total(metrics) if metrics is not None else None,
            logger=self.log) if options.session_reuse_limit > 1 else None
        self._outcomes = messages_total(metrics) if metrics is not None else None
        self._attempts = delivery_attempts_total(metrics) if metrics is not None else None
        self._routes = relay_routes_total(metrics) if metrics is not None else None
        self._auth_failures = (relay_smarthost_auth_failures_total(metrics)
                               if metrics is not None else None)
        self.smarthosts = Smarthosts(database, options.smarthost, pool=dns_pool,
                                     reactor=reactor, log=self.log)

    def handle(self, entry: QueueEntry) -> Deferred[None]:
        return Deferred.fromCoroutine(self._handle(entry))

    def start(self) -> None:
        """Start the background writer of TLS results."""
        if self.tls_recorder is not None:
            self.tls_recorder.start()

    def stop(self) -> Deferred[Any] | None:
        """QUIT the idle sessions (after the consumer has stopped: see main.start_relay), then
        write the TLS results still buffered."""
        closing = self.session_cache.close() if self.session_cache is not None else None
        recorder = self.tls_recorder
        if recorder is None:
            return closing
        if closing is None:
            return recorder.stop()
        return closing.addCallback(lambda _: recorder.stop())

    async def _handle(self, entry: QueueEntry) -> None:
        envelope = entry.envelope
        log = self.log.bind(queue_id=envelope.queue_id)
        work: Work | None = await self.database.run(
            load_work, envelope.queue_id, envelope.recipient_ids, _now())
        if work is None:
            log.warning("queue entry for unknown message", entry_id=entry.entry_id)
            return
        for rid, why in work.skipped:
            log.info("recipient skipped", recipient_id=rid, reason=why, claimed=entry.claimed)
        for rid, address in work.local:
            log.info("recipient is local", recipient=address, recipient_id=rid, stream="deliver")
        await self._enqueue(work.envelopes)
        if not work.remote:
            return
        routes = await self.smarthosts.routes({r.domain for r in work.remote})
        groups: dict[str, tuple[str, Route | None, list[RemoteRecipient]]] = {}
        for rcpt in work.remote:
            route = routes.get(rcpt.domain.lower())
            # by MX: one group per domain; by smarthost: one per next hop and login
            key = route.key if route is not None else rcpt.domain
            groups.setdefault(key, (rcpt.domain, route, []))[2].append(rcpt)
        await gatherResults([Deferred.fromCoroutine(self._domain(work, key, domain, route,
                                                                 rcpts, log))
                             for key, (domain, route, rcpts) in groups.items()],
                            consumeErrors=True)

    async def _domain(self, work: Work, key: str, domain: str, route: Route | None,
                      rcpts: list[RemoteRecipient], log: Logger) -> None:
        started = self.reactor.seconds()
        if route is not None:
            log = log.bind(nexthop=str(route.nexthop), route=route.source)
        if self._routes is not None:
            self._routes.labels(route=route.source.split(":", 1)[0] if route else "mx").inc()
        result = await self._send(work, key, domain, route, rcpts, log)
        if route is not None:
            result = self._check_login(route, result, log)
        results = _results(rcpts, result)
        if self._attempts is not None:
            for attempt in results:
                self._attempts.labels(result=attempt.outcome).inc()
        recorded: Recorded = await self.database.run(
            record_results, work.queue_id, results, _now(), self.options.policy)
        await self._enqueue(recorded.envelopes)
        if recorded.wake_at is not None:
            await self._wake(work.queue_id, recorded.wake_at, log)
        elapsed = round((self.reactor.seconds() - started) * 1000, 1)
        for rcpt, reply in zip(rcpts, result.recipients, strict=True):
            self._log_outcome(log, rcpt, reply, recorded, elapsed)

    async def _send(self, work: Work, key: str, domain: str, route: Route | None,
                    rcpts: list[RemoteRecipient], log: Logger) -> DeliveryResult:
        recipients = [Recipient(r.address, bounce.notify_tuple(r.notify),
                                bounce.orcpt_address(r.orcpt)) for r in rcpts]
        tls = self.options.tls
        if route is not None:
            try:
                tls = await self.smarthosts.policy(route)
            except SmarthostError as exc:
                log.error("smarthost password unreadable", error=exc.reply.text)
                return DeliveryResult.uniform(Envelope.of(work.mail_from, recipients),
                                              exc.reply, "route")
        # destination first: a message waiting for a busy one must not hold a global slot
        limit = self._per_domain.get(key)
        if limit is None:
            limit = self._per_domain[key] = DeferredSemaphore(self.options.max_per_domain)
        await limit.acquire()
        try:
            await self.sessions.acquire()
            try:
                result: DeliveryResult = await deliver_to_domain(
                    domain, work.mail_from, recipients,
                    work.message, resolver=self.resolver, port=self.options.port,
                    pool=self.dns_pool, helo_name=self.options.policy.hostname,
                    reactor=self.reactor, timeouts=self.options.timeouts, tls=tls,
                    ret=work.ret, envid=work.envid, logger=log,
                    bind_address=self.options.bind_address, security=self.security,
                    sessions=self.session_cache, destinations=self.destinations,
                    refused_metric=self._refused,
                    nexthop=route.nexthop if route is not None else None,
                    tls_recorder=self.tls_recorder)
                return result
            finally:
                self.sessions.release()
        finally:
            limit.release()
            if limit.tokens == limit.limit and not limit.waiting:
                self._per_domain.pop(key, None)

    def _check_login(self, route: Route, result: DeliveryResult,
                     log: Logger) -> DeliveryResult:
        """Log a failed smarthost login loudly and count it (smarthost.login_failure decides)."""
        action = self.options.smarthost.auth_failure
        first, result = login_failure(result, action)
        if first is None:
            return result
        log.error("smarthost authentication failed", user=route.username, mx=first.host,
                  address=first.address, reply=first.text, remote=first.remote, action=action)
        if self._auth_failures is not None:
            self._auth_failures.labels(nexthop=str(route.nexthop)).inc()
        return result

    async def _enqueue(self, envelopes: Sequence[Any]) -> None:
        for env in envelopes:
            # a Redis failure is logged there; the reconciler enqueues it after claim_idle
            await enqueue_after_commit(self.queue, self.redis_pool, env, reactor=self.reactor)

    async def _wake(self, queue_id: str, when: datetime, log: Logger) -> None:
        try:
            await defer_to_pool(self.reactor, self.redis_pool, self.queue.wake_at, STREAM,
                                queue_id, when.timestamp())
        except RedisError as exc:
            # only a wake-up: the reconciler's periodic pass finds the due recipient anyway
            log.warning("retry wake-up not set", error=str(exc))

    def _log_outcome(self, log: Logger, rcpt: RemoteRecipient, reply: RecipientResult,
                     recorded: Recorded, elapsed: float) -> None:
        outcome = recorded.outcomes.get(rcpt.id, "duplicate")
        if self._outcomes is not None:
            self._outcomes.labels(outcome=outcome).inc()
        when = recorded.next_attempt.get(rcpt.id)
        fields = {"recipient": rcpt.address, "recipient_id": rcpt.id, "result": outcome,
                  "mx": reply.host, "address": reply.address, "reply": reply.text,
                  "stage": reply.stage, "attempt": rcpt.attempts + 1, "ms": elapsed,
                  "next_attempt_at": when.isoformat() if when else None}
        if outcome == DELIVERED:
            log.info("recipient relayed", **fields)
        else:
            log.warning("recipient not relayed", **fields)


def _now() -> datetime:
    return datetime.now(UTC)


def _results(rcpts: Sequence[RemoteRecipient], result: DeliveryResult) -> list[Result]:
    """The spool's view of a delivery: outcome and stored error per recipient id."""
    out = []
    for rcpt, reply in zip(rcpts, result.recipients, strict=True):
        # for a delivery this is the remote's 250, kept in the attempt history for trace
        error = bounce.format_error(reply.text, host=reply.host, address=reply.address,
                                    stage=reply.stage, remote=reply.remote)
        out.append(Result(rcpt.id, _OUTCOMES[reply.outcome], error))
    return out
