"""`/healthz` and `/metrics` on a small twisted.web site, and the checks behind them.

A check is a callable returning ``bool`` (or a Deferred of one); raising or
returning False fails it. Checks that block (a Redis ping) are registered with
``blocking=True`` and run in the health thread pool, never on the reactor
thread. Every check is time-limited, so a hung database makes `/healthz`
answer 503 promptly instead of hanging the orchestrator's probe.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import resource, server
from twisted.web.server import Request

from postroom.interfaces import ReactorThreads, defer_to_pool, twisted_clock
from postroom.internalauth import authorized, warn_if_exposed
from postroom.logs import get_logger
from postroom.metrics import CONTENT_TYPE, Metrics

log = get_logger("health")

Check = Callable[[], Any]


class Health:
    """The registered checks of one process and how to run them."""

    def __init__(self, reactor: ReactorThreads, *, timeout: float = 2.0, threads: int = 2) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self._checks: dict[str, tuple[Check, bool]] = {}
        self._flags: dict[str, bool] = {}
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name="health")
        self._pool_started = False

    def add_check(self, name: str, fn: Check, *, blocking: bool = False) -> None:
        """Register ``fn``; with ``blocking=True`` it runs in the health thread pool."""
        self._checks[name] = (fn, blocking)

    def set_flag(self, name: str, ok: bool) -> None:
        """A check whose state the process sets itself (listeners bound, service started)."""
        self._flags[name] = ok

    def stop(self) -> None:
        if self._pool_started:
            self._pool.stop()
            self._pool_started = False

    def _run_one(self, fn: Check, blocking: bool) -> Deferred[Any]:
        if blocking:
            if not self._pool_started:
                self._pool.start()
                self._pool_started = True
            d = defer_to_pool(self.reactor, self._pool, fn)
        else:
            d = defer.maybeDeferred(fn)
        d.addTimeout(self.timeout, twisted_clock(self.reactor))
        return d

    async def run(self) -> dict[str, dict[str, Any]]:
        """Run every check concurrently; ``{name: {"ok": bool, "ms": float, "error"?: str}}``."""
        results: dict[str, dict[str, Any]] = {
            name: {"ok": ok} for name, ok in self._flags.items()
        }
        names = list(self._checks)
        started = time.monotonic()
        pending = [self._run_one(*self._checks[name]) for name in names]
        outcomes = await defer.DeferredList(pending, consumeErrors=True)
        elapsed = round((time.monotonic() - started) * 1000, 1)
        for name, (success, value) in zip(names, outcomes, strict=True):
            entry: dict[str, Any] = {"ok": bool(success and value), "ms": elapsed}
            if not success:
                assert isinstance(value, Failure)
                entry["error"] = (
                    "timed out" if value.check(defer.TimeoutError) else
                    f"{type(value.value).__name__}: {value.value}"
                )
            elif not value:
                entry["error"] = "check returned false"
            results[name] = entry
        return results


class HealthResource(resource.Resource):
    """`/healthz`: 200 when every check passes, else 503 naming the failing ones."""

    isLeaf = True

    def __init__(self, health: Health) -> None:
        super().__init__()
        self.health = health

    def render_GET(self, request: Request) -> int:
        d = Deferred.fromCoroutine(self.health.run())

        def respond(checks: dict[str, dict[str, Any]]) -> None:
            ok = all(entry["ok"] for entry in checks.values())
            request.setResponseCode(200 if ok else 503)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            body = {"status": "ok" if ok else "failing", "checks": checks}
            if not ok:
                log.warning("health check failing",
                            failing=[name for name, e in checks.items() if not e["ok"]])
            request.write(json.dumps(body, separators=(",", ":")).encode() + b"\n")
            request.finish()

        def failed(failure: Failure) -> None:
            log.error("health check crashed", error=failure.getErrorMessage())
            request.setResponseCode(500)
            request.write(b'{"status":"error"}\n')
            request.finish()

        d.addCallback(respond).addErrback(failed)
        request.notifyFinish().addErrback(lambda _f: None)  # client left early: nothing to do
        return server.NOT_DONE_YET


class MetricsResource(resource.Resource):
    """`/metrics`: the process registry in Prometheus text format (bearer ``token`` when set)."""

    isLeaf = True

    def __init__(self, metrics: Metrics, token: str | None = None) -> None:
        super().__init__()
        self.metrics = metrics
        self.token = token

    def render_GET(self, request: Request) -> bytes:
        if not authorized(request, self.token):
            return b"unauthorized\n"
        request.setHeader(b"content-type", CONTENT_TYPE.encode())
        return self.metrics.render()


class _QuietSite(server.Site):
    # probes hit /healthz every few seconds; an access log line each would drown the service's log
    def log(self, request: Any) -> None:
        pass


def make_site(health: Health, metrics: Metrics, token: str | None = None) -> server.Site:
    root = resource.Resource()
    # /healthz stays open: compose and Docker healthchecks carry no token
    root.putChild(b"healthz", HealthResource(health))  # type: ignore[arg-type]
    root.putChild(b"metrics", MetricsResource(metrics, token))  # type: ignore[arg-type]
    site = _QuietSite(root)
    site.displayTracebacks = False  # never show a traceback to a peer
    site.noisy = False
    return site


def listen(reactor: ReactorThreads, endpoint: str, health: Health, metrics: Metrics,
           token: str | None = None) -> Deferred[IListeningPort]:
    """Serve `/healthz` and `/metrics` on ``endpoint`` (a Twisted server endpoint string)."""
    warn_if_exposed("/metrics", [endpoint], token, log)
    return serverFromString(reactor, endpoint).listen(make_site(health, metrics, token))
