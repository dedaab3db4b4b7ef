"""Prometheus metrics: one registry per process, and helpers for the metrics every service has.

Each service declares its own metrics through :class:`Metrics` (``counter``,
``gauge``, ``histogram``); declaring the same name twice returns the first
object, so modules may declare what they use without coordinating. Names get
the ``postroom_`` prefix; every series carries the ``service`` constant label
through the registry's target info rather than per metric.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "postroom_"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# queue hand-offs are milliseconds when healthy and minutes when a consumer is down
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class Metrics:
    """A process's registry and the metrics declared in it."""

    def __init__(self, service: str, *, process_metrics: bool = True) -> None:
        self.service = service
        self.registry = CollectorRegistry(target_info={"service": service})
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._metrics: dict[str, Any] = {}

    def _declare(self, kind: type, name: str, doc: str, labels: Sequence[str], **kw: Any) -> Any:
        full = name if name.startswith(PREFIX) else PREFIX + name
        existing = self._metrics.get(full)
        if existing is not None:
            if not isinstance(existing, kind):
                raise ValueError(f"metric {full} already declared as {type(existing).__name__}")
            return existing
        metric = kind(full, doc, labelnames=tuple(labels), registry=self.registry, **kw)
        self._metrics[full] = metric
        return metric

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        """A monotonically increasing count (name without ``_total``; the client adds it)."""
        return self._declare(Counter, name.removesuffix("_total"), doc, labels)  # type: ignore[no-any-return]

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return self._declare(Gauge, name, doc, labels)  # type: ignore[no-any-return]

    def histogram(self, name: str, doc: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
        return self._declare(Histogram, name, doc, labels,  # type: ignore[no-any-return]
                             buckets=tuple(buckets))

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


# --- the metrics most services share; each is declared on first use


def connections_open(m: Metrics) -> Gauge:
    """Connections currently open, per listener (e.g. ``smtp``, ``imaps``)."""
    return m.gauge("connections_open", "Connections currently open.", ["listener"])


def connections_total(m: Metrics) -> Counter:
    """Connections accepted since start, per listener."""
    return m.counter("connections", "Connections accepted.", ["listener"])


def messages_total(m: Metrics) -> Counter:
    """Messages handled, by outcome (accepted, rejected, deferred, delivered, bounced...)."""
    return m.counter("messages", "Messages handled, by outcome.", ["outcome"])


def outgoing_total(m: Metrics) -> Counter:
    """Messages we wrote (``kind`` dsn, vacation, dmarc_report...: ``result`` signed,
    unsigned, sign_failed) or forwarded (``kind`` forward: ``result`` sealed, unsealed)."""
    return m.counter("outgoing", "Messages we wrote or forwarded, by kind and result.",
                     ["kind", "result"])


def sieve_runs_total(m: Metrics) -> Counter:
    """Sieve runs at delivery, by result: ok, or error (the message was filed in INBOX)."""
    return m.counter("sieve_runs", "Sieve runs at delivery, by result.", ["result"])


def errors_total(m: Metrics) -> Counter:
    """Errors by kind (protocol, database, redis, internal...)."""
    return m.counter("errors", "Errors, by kind.", ["kind"])


def queue_latency(m: Metrics) -> Histogram:
    """Seconds from enqueue to the consumer picking the entry up, per queue."""
    return m.histogram("queue_latency_seconds", "Seconds from enqueue to pick-up.", ["queue"])


def commands_total(m: Metrics) -> Counter:
    """Protocol commands received, per verb (SMTP, POP3 or IMAP, whichever the service speaks)."""
    return m.counter("commands", "Protocol commands received, by verb.", ["command"])


def auth_failures_total(m: Metrics) -> Counter:
    """Failed logins, per SASL mechanism or login command (never per user: unbounded)."""
    return m.counter("auth_failures", "Failed authentications, by mechanism.", ["mechanism"])


def login_limits_total(m: Metrics) -> Counter:
    """Logins the failed-login limiter held back: delayed, locked (pair or address), or
    refused because its Redis was away (postroom.auth.ratelimit)."""
    return m.counter("login_limits", "Logins delayed or refused by the failed-login limits, "
                     "by outcome.", ["outcome"])


def login_credentials_total(m: Metrics) -> Counter:
    """Logins checked against the store, by credential: ``password`` (the main one),
    ``app_password``, or ``app_password_required`` (the main password of an account with
    two-factor login on, refused; postroom.store.apppasswords)."""
    return m.counter("login_credentials", "Logins checked against the store, by credential "
                     "used or refused.", ["credential"])


def auth_cache_invalidations_total(m: Metrics) -> Counter:
    """Login-cache invalidations: ``announced`` (one account's credentials changed),
    ``dkim_keys`` (a domain's DKIM keys changed: the msa's key cache emptied) or
    ``resubscribed`` (the whole cache emptied after the listener (re)joined Redis)."""
    return m.counter("auth_cache_invalidations", "Login cache invalidations, by reason.",
                     ["reason"])


def dkim_key_lookups_total(m: Metrics) -> Counter:
    """The msa's look-ups of a sender domain's DKIM keys: ``cached`` (from its key cache,
    postroom.mailauth.keycache) or ``store`` (read from PostgreSQL)."""
    return m.counter("dkim_key_lookups", "DKIM signing-key look-ups, by source.", ["source"])


def delivery_attempts_total(m: Metrics) -> Counter:
    """Relay attempts per recipient, by what the remote end said (delivered, deferred, failed)."""
    return m.counter("delivery_attempts", "Remote delivery attempts, by result.", ["result"])


def sessions_reused_total(m: Metrics) -> Counter:
    """Relay transactions sent over an idle SMTP session kept from an earlier message."""
    return m.counter("relay_sessions_reused", "Outbound SMTP transactions on a reused session.")


def relay_routes_total(m: Metrics) -> Counter:
    """Recipient groups the relay sent, by route: a transport entry, the relay host, or MX."""
    return m.counter("relay_routes", "Outbound deliveries by route (transport, relayhost, mx).",
                     labels=("route",))


def relay_tls_results_total(m: Metrics) -> Counter:
    """Outbound TLS sessions recorded for TLS reports (RFC 8460), by result type or success."""
    return m.counter("relay_tls_results", "Outbound TLS sessions recorded for TLS reports, by "
                     "result (success or an RFC 8460 result type).", labels=("result",))


def relay_tls_results_dropped_total(m: Metrics) -> Counter:
    """TLS results not recorded because too many were waiting to be written."""
    return m.counter("relay_tls_results_dropped",
                     "Outbound TLS results dropped: too many waiting to be written.")


def relay_smarthost_auth_failures_total(m: Metrics) -> Counter:
    """Smarthost logins refused (535 and the like) or impossible (no PLAIN/LOGIN, no TLS)."""
    return m.counter("relay_smarthost_auth_failures",
                     "Smarthost SASL logins that failed, by next hop.", labels=("nexthop",))


def relay_internal_refused_total(m: Metrics) -> Counter:
    """MX addresses the relay would not connect to: internal and not in the allowed networks."""
    return m.counter("relay_internal_mx_refused",
                     "MX addresses refused because they are internal (loopback, private, ...).")


def dmarc_results_total(m: Metrics) -> Counter:
    """Policy verdicts, by DMARC result and the disposition the MTA is told to apply."""
    return m.counter("dmarc_results", "DMARC verdicts, by result and disposition.",
                     ["result", "disposition"])


def queue_depth(m: Metrics) -> Gauge:
    """Entries in a stream now (unread or pending; acknowledged ones are deleted)."""
    return m.gauge("queue_depth", "Entries waiting in a queue stream.", ["queue"])


def queue_oldest_seconds(m: Metrics) -> Gauge:
    """Age of the oldest entry in a stream (0 when it is empty)."""
    return m.gauge("queue_oldest_seconds", "Age in seconds of the oldest entry in a queue.",
                   ["queue"])


def imap_idle_sessions(m: Metrics) -> Gauge:
    """IMAP sessions in IDLE now."""
    return m.gauge("imap_idle_sessions", "IMAP sessions currently in IDLE.")


OTHER = "other"


class SessionMetrics:
    """What a protocol server counts per listener; every method is a no-op without metrics.

    Label values are bounded by construction: ``command`` and ``mechanism``
    are reported only when they are in the server's known set, anything else
    (a client's garbage) as ``other``; ``listener`` is chosen by the wiring.
    """

    def __init__(self, metrics: Metrics | None, *, commands: Iterable[str] = (),
                 mechanisms: Iterable[str] = ()) -> None:
        self.metrics = metrics
        self.commands = frozenset(c.upper() for c in commands)
        self.mechanisms = frozenset(c.upper() for c in mechanisms)
        # labelled children by verb: a command costs a dict lookup and an increment
        self._commands: dict[str | bytes, Any] = {}
        self._listeners: dict[str, tuple[Any, Any]] = {}
        if metrics is not None:
            # declared now, so /metrics names them before the first connection
            for declare in (connections_total, connections_open, commands_total,
                            auth_failures_total, errors_total):
                declare(metrics)

    def opened(self, listener: str) -> None:
        if self.metrics is not None:
            total, open_ = self._connections(listener)
            total.inc()
            open_.inc()

    def closed(self, listener: str) -> None:
        if self.metrics is not None:
            self._connections(listener)[1].dec()

    def _connections(self, listener: str) -> tuple[Any, Any]:
        """The labelled children of connections_total and _open: looked up once per listener
        (a connection is a message on port 25: smtp-source and most MTAs send one a session)."""
        children = self._listeners.get(listener)
        if children is None:
            assert self.metrics is not None
            children = (connections_total(self.metrics).labels(listener=listener),
                        connections_open(self.metrics).labels(listener=listener))
            self._listeners[listener] = children  # listener names are the wiring's constants
        return children

    def command(self, verb: str | bytes) -> None:
        if self.metrics is None:
            return
        child = self._commands.get(verb)
        if child is None:
            child = commands_total(self.metrics).labels(command=self._known(verb, self.commands))
            if len(self._commands) < 256:  # verbs are the peer's bytes: bounded, like the labels
                self._commands[verb] = child
        child.inc()

    def auth_failed(self, mechanism: str | bytes) -> None:
        if self.metrics is not None:
            auth_failures_total(self.metrics).labels(
                mechanism=self._known(mechanism, self.mechanisms)).inc()

    def error(self, kind: str) -> None:
        """``kind`` must be a constant of the caller's (timeout, internal, too_many_errors...)."""
        if self.metrics is not None:
            errors_total(self.metrics).labels(kind=kind).inc()

    @staticmethod
    def _known(value: str | bytes, known: frozenset[str]) -> str:
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        value = value.upper()
        return value if value in known else OTHER
