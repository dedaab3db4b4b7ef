"""N processes of one service on one host: `postroom serve NAME --processes N` (POSTROOM_PROCESSES).

Python runs one core per process, so a front door uses the machine by running
one process per core, every one listening on the same ports with SO_REUSEPORT
(the kernel spreads new connections over them). With N above 1, `postroom
serve` becomes a parent that:

* starts N workers of the service (``python -m postroom.ops.procgroup NAME``,
  each with POSTROOM_PROCESSES=1, POSTROOM_REUSE_PORT=true and its own private
  POSTROOM_HTTP_LISTEN on loopback), through the one :class:`Supervisor` that
  `postroom up` uses: a worker that dies is restarted with back-off;
* answers the service's POSTROOM_HTTP_LISTEN itself: ``/healthz`` is 200 when
  every worker's is (the body names each worker, its pid and restarts), and
  ``/metrics`` is every worker's metrics with a ``process="k"`` label added
  (Prometheus' own convention for several processes of one job: ``rate()``
  copes with one worker's restart, and ``sum without (process)`` gives the
  service's figure);
* forwards SIGHUP (reload the certificate) to every worker;
* on SIGTERM/SIGINT turns ``/healthz`` 503, forwards SIGTERM to every worker
  (each drains as a single process does), SIGKILLs what is left after
  POSTROOM_SHUTDOWN_GRACE + 5 s, and exits with no worker left. A worker dies
  with its parent too (PR_SET_PDEATHSIG), so not even SIGKILL of the parent
  leaves one behind.

A worker that fails at start (exit 2: bad settings, port taken) before the
group was ever healthy stops the whole group with exit 2, as the single
process would. N=1 is today's single process with no parent at all.
See docs/decisions/0017-processes-per-core.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory, readBody
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from postroom.config import PREFIX, Settings
from postroom.interfaces import Reactor, global_reactor, twisted_clock
from postroom.internalauth import authorized, warn_if_exposed
from postroom.logs import get_logger
from postroom.metrics import CONTENT_TYPE
from postroom.ops.supervisor import Child, Supervisor
from postroom.runtime import GROUP_KEY, ReactorStop

log = get_logger("processes")

#: the services whose default (POSTROOM_PROCESSES empty) is one process per core
FRONT_DOORS = frozenset({"mta", "msa", "imap", "pop3"})
EXIT_STARTUP = 2  # postroom.runtime's: a start-up failure
ASK_TIMEOUT = 2.5  # one worker's /healthz or /metrics answer
#: the memory `auto` counts per worker under a cgroup memory limit (a worker of a busy front
#: door stays near 120 MiB; the rest is room for bursts and the parent)
WORKER_MEMORY = 256 * 1024 * 1024
_PR_SET_PDEATHSIG = 1


# --- how many


def _cgroup_files(name: str, root: Path, membership: Path) -> list[Path]:
    """``name`` in this process's cgroup (v2) and each parent cgroup, innermost first."""
    try:
        groups = membership.read_text().splitlines()
    except OSError:
        groups = []
    paths = [line[3:] for line in groups if line.startswith("0::")] or ["/"]
    where = root / paths[0].lstrip("/")
    return [d / name for d in (where, *where.parents) if d == root or d.is_relative_to(root)]


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup"),
                      membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """Whole cores a cgroup v2 CPU limit (a container's ``--cpus``) allows, or None."""
    for path in _cgroup_files("cpu.max", root, membership):
        try:
            quota, period = path.read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
    return None


def _cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup"),
                         membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes a cgroup v2 memory limit (a container's ``--memory``) allows, or None."""
    found: list[int] = []
    for path in _cgroup_files("memory.max", root, membership):
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            found.append(int(value))
    return min(found) if found else None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU limit."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        limit = _cgroup_cpu_limit()
    except (OSError, ValueError):
        limit = None
    return max(1, min(cores, limit) if limit else cores)


def auto_processes() -> int:
    """`auto`: one process per usable core, and no more than a memory limit has room for
    (WORKER_MEMORY each: a container capped at 512M runs at most two)."""
    count = usable_cores()
    try:
        memory = _cgroup_memory_limit()
    except (OSError, ValueError):
        memory = None
    if memory is not None:
        count = min(count, max(1, memory // WORKER_MEMORY))
    return count


def resolve_processes(service: str, value: str, cores: int | None = None) -> int:
    """POSTROOM_PROCESSES for ``service``: empty is `auto` for a front door and 1 otherwise."""
    value = value.strip().lower()
    if value == "":
        value = "auto" if service in FRONT_DOORS else "1"
    if value == "auto":
        return cores if cores is not None else auto_processes()
    return max(1, int(value))


# --- /metrics of every worker as one page


_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _with_label(sample: str, label: str, value: str) -> str:
    found = _NAME.match(sample)
    if found is None:
        return sample
    name, rest = found.group(0), sample[found.end():]
    if rest.startswith("{}"):
        rest = rest[2:]
    if rest.startswith("{"):
        return f'{name}{{{label}="{value}",{rest[1:]}'
    return f'{name}{{{label}="{value}"}}{rest}'


def merge_metrics(pages: Sequence[tuple[str, str]], label: str = "process") -> str:
    """Prometheus text pages ``(k, text)`` as one page, each sample labelled ``label="k"``.

    The exposition format wants each family's samples together under one HELP and
    TYPE, so samples are grouped by the family whose header precedes them (pure).
    """
    families: dict[str, tuple[list[str], list[str]]] = {}
    for value, text in pages:
        current: str | None = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                bits = line.split(None, 3)
                if len(bits) >= 3 and bits[1] in ("HELP", "TYPE"):
                    current = bits[2]
                    headers = families.setdefault(current, ([], []))[0]
                    if line not in headers:
                        headers.append(line)
                continue
            if current is None:
                found = _NAME.match(line)
                current = found.group(0) if found else line
            families.setdefault(current, ([], []))[1].append(_with_label(line, label, value))
    out = [line for headers, samples in families.values() for line in (*headers, *samples)]
    return "\n".join(out) + "\n" if out else ""


# --- the parent


def worker_argv(name: str) -> list[str]:
    """One worker: this module as a program, which runs the service as a single process."""
    return [sys.executable, "-m", "postroom.ops.procgroup", name, str(os.getpid())]


class ProcessGroup:
    """The parent of N workers of one service; see the module docstring."""

    def __init__(self, name: str, service: str, settings: Settings, count: int,
                 reactor: Reactor, environ: Mapping[str, str]) -> None:
        from postroom.ops.localinfra import free_port

        self.name = name
        self.service = service
        self.settings = settings
        self.count = count
        self.reactor = reactor
        self.serving = False
        self.stopping = False
        self.exit_code = 0
        self.labels = [str(k) for k in range(1, count + 1)]
        self.ports: dict[str, int] = {}
        envs: dict[str, dict[str, str]] = {}
        # the workers' shared secret (their verified logins, postroom.queue.loginshare)
        key = secrets.token_hex(32)
        for k in self.labels:
            self.ports[k] = free_port("127.0.0.1")
            envs[self._child(k)] = {
                **environ,
                PREFIX + "PROCESSES": "1",
                PREFIX + "REUSE_PORT": "true",
                PREFIX + "HTTP_LISTEN": f"tcp:{self.ports[k]}:interface=127.0.0.1",
                GROUP_KEY: key,
            }
        self.supervisor = _Workers(self, reactor, {self._child(k): worker_argv(name)
                                                   for k in self.labels},
                                   envs, grace=settings.shutdown_grace + 5,
                                   on_all_given_up=self._all_given_up, json_output=True)
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool._factory = _QuietClientFactory
        self.agent = Agent(reactor, pool=pool)
        self._poll: LoopingCall | None = None
        self._http: Any = None
        self._stop_reactor = ReactorStop(reactor, log)

    def _child(self, label: str) -> str:
        return f"{self.service}.{label}"

    def pid(self, label: str) -> int | None:
        child = self.supervisor.children.get(self._child(label))
        return getattr(child.transport, "pid", None) if child is not None else None

    # --- asking the workers

    async def _ask(self, label: str, path: str) -> tuple[int, bytes]:
        headers = Headers()
        token = self.settings.internal_token
        if token and path == "/metrics":
            headers.addRawHeader(b"authorization", f"Bearer {token}".encode())
        url = f"http://127.0.0.1:{self.ports[label]}{path}".encode()
        d = self.agent.request(b"GET", url, headers)
        d.addTimeout(ASK_TIMEOUT, twisted_clock(self.reactor))
        response = await d
        body = readBody(response)
        body.addTimeout(ASK_TIMEOUT, twisted_clock(self.reactor))
        return int(response.code), await body

    async def _ask_all(self, path: str) -> list[tuple[str, int, bytes, str | None]]:
        """(label, status, body, error) of every worker; status 0 when it did not answer."""
        asks = [Deferred.fromCoroutine(self._ask(k, path)) for k in self.labels]
        results = await defer.DeferredList(asks, consumeErrors=True)
        found: list[tuple[str, int, bytes, str | None]] = []
        for label, (ok, value) in zip(self.labels, results, strict=True):
            if ok:
                found.append((label, value[0], value[1], None))
            else:
                assert isinstance(value, Failure)
                error = ("no answer in time" if value.check(defer.TimeoutError)
                         else "not answering")
                found.append((label, 0, b"", error))
        return found

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Every worker's /healthz as one answer: ok when all are and the group is not stopping."""
        answers = await self._ask_all("/healthz")
        checks: dict[str, dict[str, Any]] = {}
        processes = []
        for label, status, body, error in answers:
            entry: dict[str, Any] = {"ok": status == 200, "pid": self.pid(label)}
            if error:
                entry["error"] = error
            elif status != 200:
                entry["error"] = f"healthz answered {status}"
            checks[f"process {label}"] = entry
            try:
                inner = json.loads(body).get("checks", {}) if body else {}
            except (ValueError, AttributeError):
                inner = {}
            for check, value in inner.items():
                if isinstance(value, dict) and not value.get("ok"):
                    checks[f"process {label}: {check}"] = value
            processes.append({"process": int(label), "pid": self.pid(label),
                              "status": status,
                              "restarts": self.supervisor.restarts.get(self._child(label), 0)})
        if self.stopping:
            checks["service started"] = {"ok": False, "error": "stopping"}
        ok = all(entry["ok"] for entry in checks.values())
        return ok, {"status": "ok" if ok else "failing", "checks": checks,
                    "processes": processes}

    async def metrics(self) -> bytes:
        answers = await self._ask_all("/metrics")
        pages = [(label, body.decode("utf-8", "replace"))
                 for label, status, body, _error in answers if status == 200]
        return merge_metrics(pages).encode()

    # --- life

    async def start(self) -> None:
        port = await serverFromString(self.reactor, self.settings.http_listen).listen(
            _site(self))
        self._http = port
        self.supervisor.start()
        self._forward_sighup()
        log.info("processes starting", service=self.service, processes=self.count,
                 pids=[self.pid(k) for k in self.labels])
        self._poll = LoopingCall(lambda: Deferred.fromCoroutine(self._check_started()))
        self._poll.clock = twisted_clock(self.reactor)
        self._poll.start(0.5, now=False).addErrback(
            lambda f: log.error("start poll stopped", error=f.getErrorMessage()))

    def _forward_sighup(self) -> None:
        """SIGHUP (reload the certificate, docs/operations.md) goes on to every worker; its
        default action would end the parent, and with it the workers."""
        if threading.current_thread() is not threading.main_thread():
            return  # an embedded reactor: signal handlers belong to the main thread

        def forward(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self._signal_workers, "HUP")

        signal.signal(signal.SIGHUP, forward)

    def _signal_workers(self, sig: str) -> None:
        for child in list(self.supervisor.children.values()):
            child.signal(sig)
        log.info("signal forwarded to the workers", signal=f"SIG{sig}",
                 workers=len(self.supervisor.children))

    async def _check_started(self) -> None:
        ok, _body = await self.health()
        if ok and not self.serving:
            self.serving = True
            log.info("service started", service=self.service, processes=self.count,
                     pids=[self.pid(k) for k in self.labels])
            if self._poll is not None and self._poll.running:
                self._poll.stop()

    def worker_failed_at_start(self, child: str, status: int) -> None:
        log.error("service failed to start", service=self.service, worker=child, status=status,
                  reason="a worker could not start; see its lines above")
        self.exit_code = EXIT_STARTUP
        self._stop("a worker could not start")

    def _all_given_up(self) -> None:
        self.exit_code = 1
        self._stop("every worker gave up")

    def _stop(self, reason: str) -> None:
        self._stop_reactor(reason)

    async def stop(self) -> None:
        """Drain: /healthz 503, SIGTERM to every worker, SIGKILL after the grace."""
        self.stopping = True
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        log.info("service stopping", service=self.service, processes=self.count,
                 grace=self.settings.shutdown_grace)
        await self.supervisor.stop()
        if self._http is not None:
            await defer.maybeDeferred(self._http.stopListening)


def _site(group: ProcessGroup) -> server.Site:
    root = resource.Resource()
    root.putChild(b"healthz", _GroupHealth(group))  # type: ignore[arg-type]
    root.putChild(b"metrics", _GroupMetrics(group))  # type: ignore[arg-type]
    warn_if_exposed("/metrics", [group.settings.http_listen], group.settings.internal_token, log)
    site = _QuietSite(root)
    site.displayTracebacks = False
    site.noisy = False
    return site


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False  # a line per connection to a worker's health port is noise


class _QuietSite(server.Site):
    def log(self, request: Any) -> None:
        pass  # probes every few seconds would drown the log


class _GroupHealth(resource.Resource):
    isLeaf = True

    def __init__(self, group: ProcessGroup) -> None:
        super().__init__()
        self.group = group

    def render_GET(self, request: Request) -> int:
        def respond(result: tuple[bool, dict[str, Any]]) -> None:
            ok, body = result
            request.setResponseCode(200 if ok else 503)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            request.write(json.dumps(body, separators=(",", ":")).encode() + b"\n")
            request.finish()

        _answer(request, Deferred.fromCoroutine(self.group.health()), respond)
        return server.NOT_DONE_YET


class _GroupMetrics(resource.Resource):
    isLeaf = True

    def __init__(self, group: ProcessGroup) -> None:
        super().__init__()
        self.group = group

    def render_GET(self, request: Request) -> bytes | int:
        if not authorized(request, self.group.settings.internal_token):
            return b"unauthorized\n"

        def respond(text: bytes) -> None:
            request.setHeader(b"content-type", CONTENT_TYPE.encode())
            request.write(text)
            request.finish()

        _answer(request, Deferred.fromCoroutine(self.group.metrics()), respond)
        return server.NOT_DONE_YET


def _answer(request: Request, d: Deferred[Any], respond: Any) -> None:
    finished = [False]
    request.notifyFinish().addBoth(lambda _r: finished.__setitem__(0, True))

    def send(value: Any) -> None:
        if not finished[0]:
            respond(value)

    def failed(failure: Failure) -> None:
        log.error("process group answer failed", error=failure.getErrorMessage())
        if not finished[0]:
            request.setResponseCode(500)
            request.write(b'{"status":"error"}\n')
            request.finish()

    d.addCallback(send).addErrback(failed)


class _Workers(Supervisor):
    """The Supervisor, told when a worker fails at start before the group ever served."""

    def __init__(self, group: ProcessGroup, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group

    def child_exited(self, child: Child, status: int) -> None:
        if status == EXIT_STARTUP and not self.group.serving and not self._stopping:
            # no restart into the same error: the group stops as the single process would
            if self.children.get(child.name) is child:
                del self.children[child.name]
            self.group.worker_failed_at_start(child.name, status)
            return
        super().child_exited(child, status)


def run_group(name: str, service: str, settings: Settings, count: int, *,
              reactor: Reactor | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run ``count`` workers of ``name`` under this process until SIGTERM/SIGINT."""
    if reactor is None:
        reactor = global_reactor()
    group = ProcessGroup(name, service, settings, count, reactor,
                         dict(os.environ if environ is None else environ))

    def start() -> None:
        def failed(failure: Failure) -> None:
            log.error("service failed to start", service=service,
                      reason=f"cannot serve {settings.http_listen}: {failure.getErrorMessage()}")
            group.exit_code = EXIT_STARTUP
            group._stop("start-up failed")

        Deferred.fromCoroutine(group.start()).addErrback(failed)

    reactor.addSystemEventTrigger("before", "shutdown",
                                  lambda: Deferred.fromCoroutine(group.stop()))
    reactor.callWhenRunning(start)
    reactor.run()
    ReactorStop.ignore_further()
    if group.supervisor.given_up and not group.exit_code:
        group.exit_code = 1
    log.info("service stopped", service=service, exit_code=group.exit_code)
    return group.exit_code


# --- a worker


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when the parent dies, whatever kills it (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def worker_main(argv: Sequence[str]) -> int:
    name, parent = argv[0], int(argv[1])
    _die_with_parent(parent)
    from postroom.runtime import run_service

    return run_service(name)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
