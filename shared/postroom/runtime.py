"""The service runtime: `postroom serve NAME` builds a context, starts the service, runs.

Start-up is strict and quiet: every problem found before the service serves
(bad settings, missing URL, schema behind the code, unreadable certificate,
port in use) is one log line and exit code 2, never a traceback. Shutdown on
SIGTERM/SIGINT (the first of them; later ones only note that a stop is under
way, see ReactorStop): `/healthz` turns 503, listening ports close, the service's
stop hooks run (newest first) within POSTROOM_SHUTDOWN_GRACE, then pools and
connections close and the process exits 0.
"""

from __future__ import annotations

import gc
import importlib
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from postroom import health as health_mod
from postroom.config import ConfigError, Settings, load_settings, require, split_proxy
from postroom.interfaces import Reactor, global_reactor, twisted_clock
from postroom.logs import Logger, configure, get_logger
from postroom.metrics import Metrics
from postroom.net.proxyproto import ProxyProtocolFactory, refused_total
from postroom.net.tls import ServerTLS, TLSConfigError, wrap_implicit
from postroom.service import ServiceSpec, UnknownService, load_service

if TYPE_CHECKING:  # both imported when a service needs them (the store and Redis are optional)
    from postroom.net.certsync import CertificateSync
    from postroom.queue.redisclient import RedisClient
    from postroom.store.db import Database

EXIT_OK = 0
EXIT_STARTUP = 2
EXIT_INTERRUPTED = 130  # stopped by SIGINT before serving (the shell's 128 + 2)
#: a random key a process group's parent (postroom.ops.procgroup) gives its workers and
#: nobody else (postroom.config.NOT_SETTINGS)
GROUP_KEY = "POSTROOM_GROUP_KEY"


def group_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key this worker shares with the other workers of its group; None outside a group
    (a single process) or when the value is not 32 bytes of hex."""
    value = (os.environ if environ is None else environ).get(GROUP_KEY, "")
    try:
        key = bytes.fromhex(value)
    except ValueError:
        return None
    return key if len(key) == 32 else None


StopHook = Callable[[], "Deferred[Any] | None"]


class StartupError(Exception):
    """The service cannot start; the message is the one line the operator sees."""


class ReactorStop:
    """The one way a Postroom process stops its reactor: once, whether a signal or code asks.

    Twisted's own SIGINT/SIGTERM handlers call ``reactor.stop()`` on every signal.
    A terminal's Ctrl-C reaches `postroom up` and each of its children at once and
    the supervisor's SIGTERM follows, so every child got two, and the second
    ``stop()`` of the already stopping reactor raised ReactorNotRunning with a
    traceback. Once the reactor runs, this replaces those handlers; the first
    request stops the reactor, any later one (a second signal, a start-up failure
    during shutdown, a direct ``reactor.stop()`` before it) is only noted.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, reactor: Reactor, log: Logger) -> None:
        self.reactor = reactor
        self.log = log
        self.reason: str | None = None
        reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)
        # after startup: Twisted installs its handlers during startup, these replace them
        reactor.addSystemEventTrigger("after", "startup", self._install_signal_handlers)

    def __call__(self, reason: str) -> None:
        """Stop the reactor, unless a stop is already under way."""
        if self.reason is not None:
            self.log.info("stop already under way", reason=reason, stopping_for=self.reason)
            return
        self.reason = reason
        self.log.info("stop requested", reason=reason)
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass  # stopped directly (reactor.stop()) an instant before the trigger below ran

    def _shutting_down(self) -> None:
        if self.reason is None:  # a direct reactor.stop() counts as the one stop
            self.reason = "reactor stopped"

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (embedded reactors)
        for sig in self.SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # runs between two bytecodes of whatever the main thread was doing: hand over
        self.reactor.callFromThread(self, signal.Signals(signum).name)

    @classmethod
    def ignore_further(cls) -> None:
        """Once the reactor has stopped, the process is on its way out: ignore stop signals.

        Python resets its signal handlers to the default while the interpreter
        finalises, so a late SIGTERM (the supervisor's, after a Ctrl-C already
        stopped us) would otherwise end a clean exit as "killed by signal".
        """
        if threading.current_thread() is threading.main_thread():
            for sig in cls.SIGNALS:
                signal.signal(sig, signal.SIG_IGN)


def _describe_port(port: Any) -> str:
    host = port.getHost()
    if hasattr(host, "port"):
        address = host.host if ":" not in host.host else f"[{host.host}]"
        return f"{address}:{host.port}"
    return str(getattr(host, "name", host))


_BACKLOG_GIVEN = re.compile(r"(^|:)backlog=", re.IGNORECASE)


class _SharedPort(tcp.Port):
    """A TCP listening port with SO_REUSEPORT: replicas of a service on one host share it."""

    def createInternetSocket(self) -> socket.socket:
        sock: socket.socket = super().createInternetSocket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return sock


def _listen_shared(reactor: Reactor, server: TCP4ServerEndpoint | TCP6ServerEndpoint,
                   factory: IProtocolFactory) -> IListeningPort:
    # what TCP4ServerEndpoint.listen does through reactor.listenTCP, with our port class
    port = _SharedPort(server._port, factory, server._backlog, server._interface, reactor)
    port.startListening()
    return IListeningPort(port)


class ServiceContext:
    """Everything a service gets at start: settings, logger, clients, TLS, metrics, health."""

    def __init__(self, name: str, settings: Settings, reactor: Reactor, *,
                 database: Database | None = None, redis: RedisClient | None = None,
                 tls: ServerTLS | None = None,
                 metrics: Metrics | None = None, health: health_mod.Health | None = None,
                 log: Logger | None = None) -> None:
        self.name = name
        self.settings = settings
        self.reactor = reactor
        self.database = database
        self.redis = redis
        self.tls = tls
        #: with POSTROOM_ACME: keeps the certificate files at the database's certificate
        self.cert_sync: CertificateSync | None = None
        self.metrics = metrics or Metrics(name)
        self.health = health or health_mod.Health(reactor)
        self.log = log or get_logger(name)
        self.listeners: list[tuple[str, Any]] = []
        self._stop_hooks: list[StopHook] = []
        self._pools: list[ThreadPool] = []
        self._stopping = False

    # --- what services call

    @property
    def db(self) -> Database:
        """The database, for a service whose spec sets ``needs_database`` (opened before start)."""
        if self.database is None:
            raise StartupError(f"{self.name} uses the database but its spec does not need it")
        return self.database

    @property
    def redis_client(self) -> RedisClient:
        """The Redis client, for a service whose spec sets ``needs_redis`` (opened before start)."""
        if self.redis is None:
            raise StartupError(f"{self.name} uses Redis but its spec does not need it")
        return self.redis

    def listen(self, endpoint: str, factory: IProtocolFactory, *,
               implicit_tls: bool = False) -> Deferred[IListeningPort]:
        """Listen on a Twisted endpoint string; ``implicit_tls`` wraps the factory in TLS.

        ``proxy:tcp:N`` (or ``haproxy:tcp:N``) listens on ``tcp:N`` behind the strict PROXY
        protocol wrapper, which believes a header only from POSTROOM_PROXY_TRUSTED; the
        header comes before any TLS, as a balancer that does not end TLS sends it.
        """
        check = f"listener {endpoint}"
        self.health.set_flag(check, False)
        factory.noisy = False  # type: ignore[attr-defined]  # we log "listening" ourselves
        if implicit_tls:
            if self.tls is None:
                return defer.fail(StartupError(
                    f"{endpoint}: implicit TLS needs POSTROOM_TLS_CERT_FILE and "
                    "POSTROOM_TLS_KEY_FILE"))
            factory = wrap_implicit(factory, self.tls)  # type: ignore[assignment]
        inner, proxied = split_proxy(endpoint)
        # every listening service exports the refusal counter (zero without PROXY listeners),
        # so dashboards and alerts see the series before the first refusal
        refused_total(self.metrics)
        if proxied:
            if not self.settings.proxy_trusted:
                return defer.fail(StartupError(
                    f"{endpoint}: a PROXY protocol listener needs POSTROOM_PROXY_TRUSTED"))
            factory = ProxyProtocolFactory(  # type: ignore[assignment]
                factory, self.settings.proxy_trusted, clock=self.reactor,
                metrics=self.metrics, listener=endpoint)
        server = serverFromString(self.reactor, inner)
        if isinstance(server, TCP4ServerEndpoint | TCP6ServerEndpoint) \
                and not _BACKLOG_GIVEN.search(inner):
            # Twisted's default backlog (50) overflows under a burst of connections: the kernel
            # drops the SYNs and each client waits 1 s (then 3 s) to retry
            server._backlog = self.settings.listen_backlog
        d: Deferred[IListeningPort]
        if self.settings.reuse_port and isinstance(server, TCP4ServerEndpoint | TCP6ServerEndpoint):
            d = defer.maybeDeferred(_listen_shared, self.reactor, server, factory)
        else:
            d = server.listen(factory)

        def bound(port: IListeningPort) -> IListeningPort:
            self.listeners.append((endpoint, port))
            self.health.set_flag(check, True)
            self.log.info("listening", endpoint=endpoint, address=_describe_port(port),
                          tls="implicit" if implicit_tls else None,
                          proxy_trusted=list(self.settings.proxy_trusted) if proxied else None)
            return port

        def failed(failure: Failure) -> Failure:
            if isinstance(failure.value, CannotListenError):
                raise StartupError(f"cannot listen on {endpoint}: {failure.value.socketError}")
            return failure

        return d.addCallbacks(bound, failed)

    async def listen_all(self, endpoints: Sequence[str], factory: IProtocolFactory, *,
                         implicit_tls: bool = False) -> list[IListeningPort]:
        """:meth:`listen` on each endpoint of a setting such as ``settings.msa_listen``."""
        return [await self.listen(e, factory, implicit_tls=implicit_tls) for e in endpoints]

    def on_stop(self, hook: StopHook) -> None:
        """Run ``hook`` on SIGTERM after the listeners close (newest first, within the grace)."""
        self._stop_hooks.append(hook)

    def add_health_check(self, name: str, fn: Callable[[], Any], *,
                         blocking: bool = False) -> None:
        """Make ``fn`` part of `/healthz` (``blocking=True`` runs it off the reactor thread)."""
        self.health.add_check(name, fn, blocking=blocking)

    def thread_pool(self, name: str, size: int) -> ThreadPool:
        """A started, bounded thread pool (never the reactor's default), stopped at shutdown."""
        pool = ThreadPool(minthreads=0, maxthreads=size, name=f"{self.name}-{name}")
        pool.start()
        self._pools.append(pool)
        return pool

    @property
    def stopping(self) -> bool:
        return self._stopping

    # --- what the runtime calls

    async def shutdown(self) -> None:
        """Stop accepting, run stop hooks within the grace, close pools and clients."""
        if self._stopping:
            return
        self._stopping = True
        self.health.set_flag("service started", False)  # drain: probes see 503 from now on
        self.log.info("service stopping", grace=self.settings.shutdown_grace)
        results = await defer.DeferredList(
            [defer.maybeDeferred(port.stopListening) for _, port in self.listeners],
            consumeErrors=True)
        for success, value in results:
            if not success:
                self.log.warning("stop listening failed", error=value.getErrorMessage())
        hooks = defer.Deferred.fromCoroutine(self._run_hooks())
        hooks.addTimeout(self.settings.shutdown_grace, twisted_clock(self.reactor))
        try:
            await hooks
        except defer.TimeoutError:
            self.log.warning("stop hooks did not finish within grace",
                             grace=self.settings.shutdown_grace)
        if self.tls is not None:
            self.tls.stop_watching()
        for pool in self._pools:
            pool.stop()
        self.health.stop()
        if self.database is not None:
            try:
                await defer.maybeDeferred(self.database.stop)
            except Exception as exc:  # noqa: BLE001 (shutdown goes on whatever the pool says)
                self.log.warning("database stop failed", error=str(exc))
        if self.redis is not None:
            try:
                self.redis.close()
            except Exception as exc:  # noqa: BLE001
                self.log.warning("redis close failed", error=str(exc))

    async def _run_hooks(self) -> None:
        for hook in reversed(self._stop_hooks):
            try:
                await defer.maybeDeferred(hook)
            except defer.CancelledError:
                raise
            except Exception as exc:
                self.log.exception("stop hook failed", exc)


def resolve_spec(name: str) -> ServiceSpec:
    """An installed service by name, or ``package.module:ATTR`` (out-of-tree services, tests)."""
    if ":" not in name:
        return load_service(name)
    module_name, _, attr = name.partition(":")
    try:
        spec = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownService(f"cannot load service {name!r}: {exc}") from None
    if not isinstance(spec, ServiceSpec):
        raise UnknownService(f"{name!r} is not a ServiceSpec")
    return spec


def serve_argv(name: str) -> list[str]:
    """The command line that runs one service in its own process."""
    return [sys.executable, "-m", "postroom.ops.cli", "serve", name]


def _check_schema(url: str, log: Logger) -> None:
    from postroom.store import migrate  # lazy: the store is optional for services without a db

    try:
        at = migrate.check_schema(url)
    except migrate.SchemaOutOfDate as exc:
        raise StartupError(str(exc)) from None
    if at != migrate.head_revision():
        # a rollback inside the compatibility window (docs/upgrades.md)
        log.warning("database schema newer than this release", schema=at,
                    release=migrate.head_revision(), effect="compatible: expand migrations only")


def _open_database(settings: Settings) -> Any:
    from postroom.store.db import Database

    assert settings.database_url is not None
    database = Database(settings.database_url, settings.db_pool_size,
                        fts_config=settings.fts_config, fts_max_bytes=settings.fts_max_bytes)
    database.start()
    return database


def _open_redis(settings: Settings, log: Logger) -> RedisClient:
    import redis

    assert settings.redis_url is not None
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5,
                                  socket_connect_timeout=5, health_check_interval=30)
    try:
        client.ping()
    except redis.RedisError as exc:
        # Redis down is 451 at the front door, not a reason to refuse to start
        # (docs/architecture.md, "Durability")
        log.warning("redis not reachable at start", error=str(exc))
    return client


def _prepare(name: str, spec: ServiceSpec, settings: Settings, reactor: Reactor,
             log: Logger) -> ServiceContext:
    """Everything blocking that must succeed before the reactor runs."""
    if spec.needs_database:
        require(settings, "database_url")
    if spec.needs_redis:
        require(settings, "redis_url")
    if spec.needs_tls and (not settings.tls_cert_file or not settings.tls_key_file):
        raise ConfigError("POSTROOM_TLS_CERT_FILE / POSTROOM_TLS_KEY_FILE: required by "
                          "this service but not set")
    health = health_mod.Health(reactor)
    ctx = ServiceContext(spec.name, settings, reactor, health=health,
                         metrics=Metrics(spec.name), log=log)
    if spec.needs_database:
        assert settings.database_url
        _check_schema(settings.database_url, log)
        ctx.database = _open_database(settings)
        health.add_check("database", ctx.database.ping)
    # a service that needs TLS, or one whose optional TLS listener is configured (web)
    uses_tls = spec.needs_tls or ("web_tls_listen" in spec.listen_settings
                                  and bool(settings.web_tls_listen))
    if settings.acme and uses_tls and ctx.database is not None \
            and settings.tls_cert_file and settings.tls_key_file:
        # the certificate by ACME, from the database into this process's files (before the
        # listeners load them)
        from postroom.net.certsync import CertificateSync
        from postroom.secretbox import Keyring, SecretError

        try:
            keyring = Keyring.from_files(settings.secret_key_file, settings.secret_old_key_files)
            ctx.cert_sync = CertificateSync(ctx.database, settings.tls_cert_file,
                                            settings.tls_key_file, keyring=keyring,
                                            hostname=settings.hostname)
            # a sealed key without POSTROOM_SECRET_KEY_FILE: one line, not a traceback
            ctx.cert_sync.prepare()
        except SecretError as exc:
            raise ConfigError(f"the certificate by ACME: {exc}") from None
    if spec.needs_tls:
        assert settings.tls_cert_file and settings.tls_key_file
        ctx.tls = ServerTLS(settings.tls_cert_file, settings.tls_key_file)
        if ctx.cert_sync is not None:
            ctx.cert_sync.tls = ctx.tls
    if spec.needs_redis:
        ctx.redis = _open_redis(settings, log)
        health.add_check("redis", ctx.redis.ping, blocking=True)
    return ctx


def _startup_message(exc: BaseException) -> tuple[str, bool]:
    """The operator's one line, and whether it is a bug (then the traceback is logged too)."""
    expected = (ConfigError, StartupError, TLSConfigError, UnknownService, CannotListenError)
    if isinstance(exc, expected):
        return str(exc), False
    try:
        from postroom.store.migrate import SchemaOutOfDate
        if isinstance(exc, SchemaOutOfDate):
            return str(exc), False
    except ImportError:
        pass
    return f"{type(exc).__name__}: {exc}", True


def run_service(name: str, settings: Settings | None = None, *,
                spec: ServiceSpec | None = None, reactor: Reactor | None = None) -> int:
    """Run one service until SIGTERM/SIGINT; the process exit code (0, or 2 at start-up)."""
    configure(name.rpartition(":")[2].lower() if ":" in name else name)
    log = get_logger("runtime")
    ctx: ServiceContext | None = None
    try:
        if settings is None:
            settings = load_settings()
        if spec is None:
            spec = resolve_spec(name)
        configure(spec.name, settings.log_level)
        if reactor is None:
            reactor = global_reactor()
        # POSTROOM_PROCESSES above 1: this process is the parent of that many workers
        # (postroom.ops.procgroup); 1 is the single process below, no parent
        from postroom.ops.procgroup import resolve_processes, run_group

        count = resolve_processes(spec.name, settings.processes)
        if count > 1:
            return run_group(name, spec.name, settings, count, reactor=reactor)
        ctx = _prepare(name, spec, settings, reactor, log)
    except KeyboardInterrupt:
        # Ctrl-C while starting (before the reactor and its handlers run): quiet, not a bug
        log.info("service stopped before it started", reason="SIGINT")
        if ctx is not None and ctx.database is not None:
            ctx.database.stop()
        return EXIT_INTERRUPTED
    except Exception as exc:
        message, bug = _startup_message(exc)
        if bug:
            log.exception("service failed to start", exc, reason=message)
        else:
            log.error("service failed to start", reason=message)
        if ctx is not None and ctx.database is not None:
            ctx.database.stop()
        return EXIT_STARTUP
    return _run(spec, ctx, reactor, log)


def _poll_certificates(ctx: ServiceContext, reactor: Reactor, log: Logger) -> None:
    """Every POSTROOM_TLS_DB_POLL, take a newer certificate from the database (POSTROOM_ACME)."""
    sync = ctx.cert_sync
    assert sync is not None
    poll = LoopingCall(lambda: Deferred.fromCoroutine(sync.poll()))
    poll.clock = twisted_clock(reactor)
    poll.start(ctx.settings.tls_db_poll, now=False).addErrback(
        lambda f: log.error("tls certificate poll stopped", error=f.getErrorMessage()))
    ctx.on_stop(lambda: poll.stop() if poll.running else None)


def freeze_startup_heap() -> int:
    """Move what start-up allocated (modules, settings, pools) out of the collector's sight.

    A service starts with hundreds of thousands of long-lived objects (Twisted,
    SQLAlchemy, the email package...). Every full collection walks them all
    again, although they never become garbage: under load that was 5-8% of the
    mta's CPU per message (bench/README.md, issue 23). ``gc.freeze()`` (CPython's
    advice for long-running servers) keeps them out of every later collection;
    per-message garbage is collected as before. Returns how many are frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _run(spec: ServiceSpec, ctx: ServiceContext, reactor: Reactor, log: Logger) -> int:
    exit_code = [EXIT_OK]
    stop = ReactorStop(reactor, log)
    ctx.health.set_flag("service started", False)

    async def boot() -> None:
        http_port: Any = await health_mod.listen(reactor, ctx.settings.http_listen, ctx.health,
                                            ctx.metrics, ctx.settings.internal_token)
        ctx.on_stop(lambda: http_port.stopListening())  # first registered: closes last
        if ctx.tls is not None:
            ctx.tls.start_watching(reactor)
            ctx.tls.install_sighup(reactor)
        if ctx.cert_sync is not None:
            _poll_certificates(ctx, reactor, log)
        await defer.maybeDeferred(spec.start, ctx)
        freeze_startup_heap()
        ctx.health.set_flag("service started", True)
        log.info("service started", service=spec.name, http=_describe_port(http_port),
                 listeners=[f"{e} ({_describe_port(p)})" for e, p in ctx.listeners])

    def boot_failed(failure: Failure) -> None:
        exc = failure.value
        assert exc is not None
        if isinstance(exc, CannotListenError):
            message, bug = f"cannot listen on {exc.interface}:{exc.port}: {exc.socketError}", False
        else:
            message, bug = _startup_message(exc)
        if bug:
            log.error("service failed to start", reason=message,
                      traceback=failure.getTraceback().rstrip())
        else:
            log.error("service failed to start", reason=message)
        exit_code[0] = EXIT_STARTUP
        stop("start-up failed")

    def start() -> None:
        Deferred.fromCoroutine(boot()).addErrback(boot_failed)

    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: Deferred.fromCoroutine(ctx.shutdown()))
    reactor.callWhenRunning(start)
    reactor.run()
    ReactorStop.ignore_further()
    log.info("service stopped", service=spec.name, exit_code=exit_code[0])
    return exit_code[0]
