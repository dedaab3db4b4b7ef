"""Prometheus metrics: one registry per process, and helpers for the metrics every service has.

Each service declares its own metrics through :class:`Metrics` (``counter``,
``gauge``, ``histogram``); declaring the same name twice returns the first
object, so modules may declare what they use without coordinating. Names get
the ``postroom_`` prefix; every series carries the ``service`` constant label
through the registry's target info rather than per metric.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def errors_total(m: Metrics) -> Counter:
    """Errors by kind (protocol, database, redis, internal...)."""
    return m.counter("errors", "Errors, by kind.", ["kind"])


def queue_latency(m: Metrics) -> Histogram:
    """Seconds from enqueue to the consumer picking the entry up, per queue."""
    return m.histogram("queue_latency_seconds", "Seconds from enqueue to pick-up.", ["queue"])
