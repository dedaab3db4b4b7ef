"""Ask the services' own HTTP endpoints how they are: `/healthz` and the reject counters of
`/metrics`, every service at once, each within a short timeout.

The console's overview and `/api/v1/metrics/summary` call :func:`probe_services` with
POSTROOM_WEB_SERVICES (``name=http://host:port``; compose names services, `postroom up`
fills in each child's port). A service that does not answer in time is ``unknown`` and
never holds the page up: the whole probe ends after :data:`DEADLINE` seconds. Blocks:
call it in a thread.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

TIMEOUT = 1.5        # one request's connect and each read
DEADLINE = 2.5       # every service's answers together
MAX_HEALTH_BYTES = 64 * 1024
MAX_METRICS_BYTES = 4 * 1024 * 1024
MESSAGES_SAMPLE = "postroom_messages_total"


@dataclass(frozen=True)
class ServiceState:
    """One service's answer: ``up`` (healthz 200), ``down`` (healthz failing, or nothing
    listening), ``unknown`` (no answer in time, or not one we understand)."""

    name: str
    url: str
    state: str
    detail: str | None = None
    failing: tuple[str, ...] = ()       # the names of its failing health checks
    # postroom_messages_total{outcome=~".*rejected.*"} since the process started
    rejects: dict[str, float] = field(default_factory=dict)


def _get(url: str, limit: int, token: str | None) -> tuple[int, bytes]:
    # http:// only: POSTROOM_WEB_SERVICES is checked at start-up (config._service_urls)
    # http:// only: POSTROOM_WEB_SERVICES is checked at start-up (config._service_urls)
    request = urllib.request.Request(url, headers={"Accept": "*/*"})  # noqa: S310  # noqa: S310
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:  # noqa: S310 (http only)
            return int(reply.status), reply.read(limit + 1)[:limit]
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(limit)


def parse_rejects(text: str) -> dict[str, float]:
    """The reject outcomes of ``postroom_messages_total`` in a /metrics text (pure)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            outcome = sample.labels.get("outcome", "")
            if sample.name == MESSAGES_SAMPLE and "rejected" in outcome:
                found[outcome[:64]] = found.get(outcome[:64], 0.0) + float(sample.value)
    return found


def probe_one(name: str, base: str, token: str | None = None,
              metrics: bool = True) -> ServiceState:
    """``base``/healthz, then (``metrics``) ``base``/metrics for its reject counters."""
    base = base.rstrip("/")
    try:
        status, body = _get(base + "/healthz", MAX_HEALTH_BYTES, None)
    except urllib.error.URLError as exc:
        refused = isinstance(exc.reason, ConnectionRefusedError)
        return ServiceState(name, base, "down" if refused else "unknown",
                            "not listening" if refused else str(exc.reason)[:200])
    except ConnectionRefusedError:
        return ServiceState(name, base, "down", "not listening")
    except TimeoutError:
        return ServiceState(name, base, "unknown", "no answer in time")
    except OSError as exc:
        return ServiceState(name, base, "unknown", f"{type(exc).__name__}")
    failing: tuple[str, ...] = ()
    try:
        checks = json.loads(body).get("checks", {})
        failing = tuple(sorted(str(n)[:64] for n, e in checks.items()
                               if isinstance(e, dict) and not e.get("ok")))[:20]
    except (ValueError, AttributeError):
        if status == 200:
            return ServiceState(name, base, "unknown", "not a Postroom health answer")
    if status != 200:
        return ServiceState(name, base, "down", f"healthz answered {status}", failing)
    rejects: dict[str, float] = {}
    if metrics:
        try:
            code, text = _get(base + "/metrics", MAX_METRICS_BYTES, token)
            if code == 200:
                rejects = parse_rejects(text.decode("utf-8", "replace"))
        except (OSError, ValueError):
            pass  # health is known; the counters stay empty
    return ServiceState(name, base, "up", None, failing, rejects)


def probe_services(targets: Sequence[tuple[str, str]], *, token: str | None = None,
                   metrics: bool = True, deadline: float = DEADLINE) -> list[ServiceState]:
    """Every target at once; whatever has not answered by ``deadline`` is ``unknown``."""
    if not targets:
        return []
    pool = ThreadPoolExecutor(max_workers=min(len(targets), 16),
                              thread_name_prefix="probe")
    try:
        futures = [pool.submit(probe_one, name, url, token, metrics) for name, url in targets]
        wait_all(futures, timeout=deadline)
        found = []
        for (name, url), future in zip(targets, futures, strict=True):
            if future.done() and future.exception() is None:
                found.append(future.result())
            else:
                found.append(ServiceState(name, url.rstrip("/"), "unknown",
                                          "no answer in time"))
        return found
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def sum_rejects(states: Sequence[ServiceState]) -> dict[str, float]:
    """The reject counters of every service that answered, added up by outcome."""
    total: dict[str, float] = {}
    for state in states:
        for outcome, value in state.rejects.items():
            total[outcome] = total.get(outcome, 0.0) + value
    return dict(sorted(total.items()))
