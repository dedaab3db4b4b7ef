"""`postroom up`: the whole suite on one machine, each service its own supervised child process.

Order of start: private PostgreSQL/Redis when no URLs are set, a self-signed
certificate when none is configured, migrations, the optional demo account,
then one child per service with its output prefixed by its name. A front door
(mta, msa, imap, pop3) runs one process per core by default: its child is then
the parent of those workers (postroom.ops.procgroup, which uses this module's
Supervisor for them); `--replicas` sets other counts. A child that
dies is restarted with back-off; one that keeps dying at start is given up on
with a clear message. Ctrl-C/SIGTERM: children get SIGTERM, then SIGKILL after
the grace, and the private servers stop last.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from twisted.internet import defer, protocol
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from postroom.config import PREFIX, ConfigError, Settings, load_settings
from postroom.interfaces import Reactor, global_reactor
from postroom.logs import configure, get_logger
from postroom.runtime import ReactorStop, serve_argv
from postroom.secretbox import SecretError
from postroom.store.db import Database

if TYPE_CHECKING:  # imported where `up` starts it
    from postroom.ops.localinfra import LocalInfra

log = get_logger("supervisor")

MIN_UPTIME = 10.0  # a child that dies sooner than this failed "at start"
MAX_START_FAILURES = 5
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
DEMO_DOMAIN = "example.test"
DEMO_USER = "demo@example.test"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `postroom up` options (the cli may add them to its sub-parser)."""
    parser.add_argument("--demo", action="store_true",
                        help="also create a demo domain and user and print their credentials")
    parser.add_argument("--only", nargs="+", metavar="SERVICE", help="run only these services")
    parser.add_argument("--json", action="store_true",
                        help="pass the services' JSON log lines through unchanged (for tools); "
                        "by default they are shown for people, prefixed and coloured")
    parser.add_argument("--host", metavar="ADDRESS",
                        help="bind every listener not set by a POSTROOM_*_LISTEN variable to "
                        "this address (e.g. 127.0.0.1)")
    parser.add_argument("--replicas", metavar="N|SERVICE=N,...", type=parse_replicas,
                        default=None,
                        help="processes per service instead of the defaults (one per core for "
                        "mta, msa, imap and pop3, one for the others): N sets those four, "
                        "SERVICE=N any service, e.g. --replicas 1 or --replicas mta=3,imap=2")


def parse_replicas(text: str) -> dict[str, int]:
    """`--replicas`: ``N`` (key ``""``: every front door) and/or ``SERVICE=N``, comma-separated."""
    found: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        name, _, number = part.rpartition("=")
        if not number.isdigit() or int(number) < 1:
            raise argparse.ArgumentTypeError(
                f"{part!r}: expected N or SERVICE=N with N a positive number")
        found[name.strip()] = int(number)
    return found


def processes_for(name: str, replicas: Mapping[str, int] | None, settings: Settings,
                  cores: int | None = None) -> int:
    """How many processes `up` runs of ``name``: --replicas, else POSTROOM_PROCESSES's rule."""
    from postroom.ops.procgroup import FRONT_DOORS, resolve_processes

    replicas = replicas or {}
    if name in replicas:
        return replicas[name]
    if "" in replicas and name in FRONT_DOORS:
        return replicas[""]
    return resolve_processes(name, settings.processes, cores)


class Child(protocol.ProcessProtocol):
    """One running service process; its output lines are prefixed with its name."""

    def __init__(self, supervisor: Supervisor, name: str) -> None:
        self.supervisor = supervisor
        self.name = name
        self.started_at = time.monotonic()
        self._buffers: dict[int, bytes] = {1: b"", 2: b""}
        self.ended: Deferred[int] = Deferred()
        self.last_line = ""

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffer = self._buffers.get(fd, b"") + data
        *lines, rest = buffer.split(b"\n")
        self._buffers[fd] = rest
        for line in lines:
            self._emit(line)

    def _emit(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if text:
            self.last_line = text
        self.supervisor.write_line(self.name, text)

    def processEnded(self, reason: Failure) -> None:
        for fd in (1, 2):
            if self._buffers[fd]:
                self._emit(self._buffers[fd])
                self._buffers[fd] = b""
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        status = code if code is not None else -(sig or 1)
        self.supervisor.child_exited(self, status)
        self.ended.callback(status)

    def signal(self, sig: str) -> None:
        try:
            transport: Any = self.transport
            transport.signalProcess(sig)
        except (OSError, AttributeError):
            pass  # already gone
        except Exception as exc:  # noqa: BLE001 (ProcessExitedAlready and friends)
            log.debug("signal not delivered", service=self.name, error=str(exc))


class Supervisor:
    """Starts, restarts and stops the service children."""

    def __init__(self, reactor: Reactor, commands: Mapping[str, Sequence[str]],
                 envs: Mapping[str, Mapping[str, str]], *, out: IO[str] | None = None,
                 grace: float = 20.0, min_uptime: float = MIN_UPTIME,
                 max_start_failures: int = MAX_START_FAILURES,
                 backoff_initial: float = BACKOFF_INITIAL, backoff_max: float = BACKOFF_MAX,
                 on_all_given_up: Callable[[], None] | None = None,
                 json_output: bool = False, colour: bool | None = None) -> None:
        self.reactor = reactor
        self.json_output = json_output
        self.commands = {name: list(argv) for name, argv in commands.items()}
        self.envs = {name: dict(env) for name, env in envs.items()}
        self.out = out or sys.stdout
        self.grace = grace
        self.min_uptime = min_uptime
        self.max_start_failures = max_start_failures
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.on_all_given_up = on_all_given_up
        self.children: dict[str, Child] = {}
        self.failures: dict[str, int] = dict.fromkeys(self.commands, 0)
        self.restarts: dict[str, int] = dict.fromkeys(self.commands, 0)
        self.given_up: set[str] = set()
        self._pending: dict[str, Any] = {}
        self._stopping = False
        self._width = max((len(n) for n in self.commands), default=4)
        self._colour = self.out.isatty() if colour is None else colour

    def write_line(self, name: str, text: str) -> None:
        if self.json_output:
            line = as_json_line(name, text)
        else:
            prefix = name.ljust(self._width)
            if self._colour:
                prefix = f"\x1b[{_COLOURS[sorted(self.commands).index(name) % len(_COLOURS)]}m" \
                    f"{prefix}\x1b[0m" if name in self.commands else prefix
            line = f"{prefix} | {for_people(text)}"
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except (OSError, ValueError):
            pass  # our own stdout went away; the children must keep running

    def start(self) -> None:
        for name in self.commands:
            self._spawn(name)

    def _spawn(self, name: str) -> None:
        self._pending.pop(name, None)
        if self._stopping:
            return
        child = Child(self, name)
        argv = self.commands[name]
        self.reactor.spawnProcess(child, argv[0], argv, env=self.envs[name],
                                  childFDs={0: "w", 1: "r", 2: "r"})
        self.children[name] = child
        log.info("service process started", service=name, pid=child.transport.pid)  # type: ignore[union-attr]

    def child_exited(self, child: Child, status: int) -> None:
        name = child.name
        if self.children.get(name) is child:
            del self.children[name]
        if self._stopping:
            log.info("service process exited", service=name, status=status)
            return
        uptime = time.monotonic() - child.started_at
        if uptime < self.min_uptime:
            self.failures[name] += 1
        else:
            self.failures[name] = 0
        if self.failures[name] >= self.max_start_failures:
            self.given_up.add(name)
            log.error("service keeps failing at start, giving up", service=name, status=status,
                      attempts=self.failures[name], last_output=child.last_line[-300:])
            self.write_line(name, f"*** gave up: exited {self.failures[name]} times within "
                                  f"{self.min_uptime:.0f}s of starting (last status {status}); "
                                  "see its output above")
            if self.on_all_given_up is not None and set(self.commands) <= self.given_up:
                self.on_all_given_up()
            return
        delay = min(self.backoff_max,
                    self.backoff_initial * (2 ** max(0, self.failures[name] - 1)))
        self.restarts[name] += 1
        log.warning("service process died, restarting", service=name, status=status,
                    uptime=round(uptime, 1), restart_in=delay)
        self._pending[name] = self.reactor.callLater(delay, self._spawn, name)

    async def stop(self) -> None:
        """SIGTERM every child, SIGKILL whatever is left after the grace."""
        self._stopping = True
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        children = list(self.children.values())
        for child in children:
            child.signal("TERM")
        waiting = defer.DeferredList([child.ended for child in children], consumeErrors=True)
        timer = self.reactor.callLater(self.grace, self._kill_all, children)
        await waiting
        if timer.active():
            timer.cancel()

    def _kill_all(self, children: Sequence[Child]) -> None:
        for child in children:
            if not child.ended.called:
                log.warning("service did not stop within grace, killing", service=child.name)
                child.signal("KILL")


# --- `postroom up` itself


def bind_host(endpoints: Sequence[str], host: str) -> list[str]:
    """Add ``interface=host`` to each tcp endpoint string that names no interface."""
    result = []
    for endpoint in endpoints:
        if endpoint.startswith(("tcp:", "tcp6:")) and "interface=" not in endpoint:
            endpoint = f"{endpoint}:interface={host}"
        result.append(endpoint)
    return result


def _free_port(host: str) -> int:
    from postroom.ops.localinfra import free_port
    return free_port(host)


def service_urls(envs: Mapping[str, Mapping[str, str]]) -> str:
    """POSTROOM_WEB_SERVICES for the web child: every other child's /healthz and /metrics."""
    found = []
    for name, env in sorted(envs.items()):
        if name != "web":
            port = env[PREFIX + "HTTP_LISTEN"].split(":")[1]
            found.append(f"{name}=http://127.0.0.1:{port}")
    return ",".join(found)


def _listen_overrides(settings: Settings, host: str | None,
                      environ: Mapping[str, str]) -> dict[str, str]:
    if not host:
        return {}
    overrides = {}
    for attr, value in vars(settings).items():
        env = PREFIX + attr.upper()
        if attr.endswith("_listen") and attr != "http_listen" and env not in environ:
            overrides[env] = ",".join(bind_host(value, host))
    return overrides


def _ensure_tls(settings: Settings, var: Path) -> dict[str, str]:
    if settings.tls_cert_file:
        return {}
    from postroom.net.tls import make_self_signed

    cert, key = var / "tls" / "cert.pem", var / "tls" / "key.pem"
    if not (cert.exists() and key.exists()):
        make_self_signed(cert, key, settings.hostname)
    return {PREFIX + "TLS_CERT_FILE": str(cert), PREFIX + "TLS_KEY_FILE": str(key)}


def _ensure_secret_key(settings: Settings, var: Path) -> dict[str, str]:
    """VAR_DIR/secret.key (made once, mode 0600) when POSTROOM_SECRET_KEY_FILE is unset, so
    the demo stores its DKIM keys encrypted as a careful production set-up would."""
    if settings.secret_key_file:
        return {}
    from postroom.secretbox import write_key_file

    path = var / "secret.key"
    if not path.exists():
        write_key_file(str(path))
    return {PREFIX + "SECRET_KEY_FILE": str(path)}


def _ensure_srs_key(settings: Settings, var: Path) -> dict[str, str]:
    """VAR_DIR/srs.keys (made once, mode 0600) when POSTROOM_SRS_KEY_FILE is unset, so the
    demo forwards off its domains with SRS as a production set-up would (docs/relay.md)."""
    if settings.srs_key_file:
        return {}
    from postroom.mailauth.srs import write_key_file

    path = var / "srs.keys"
    if not path.exists():
        write_key_file(str(path))
    return {PREFIX + "SRS_KEY_FILE": str(path)}


# ANSI colours for the service prefixes (cyan, green, yellow, magenta, blue, red)
_COLOURS = ("36", "32", "33", "35", "34", "31")
# keys every log line has; the human rendering shows them in its own way
_STANDARD_KEYS = ("ts", "level", "service", "event", "component")


def for_people(text: str) -> str:
    """A child's JSON log line as `HH:MM:SS level event key=value ...`; other text as it is."""
    if not text.startswith("{"):
        return text
    try:
        record = json.loads(text)
    except ValueError:
        return text
    if not isinstance(record, dict) or "event" not in record:
        return text
    clock = str(record.get("ts", ""))[11:19]
    fields = " ".join(f"{k}={_short(v)}" for k, v in record.items() if k not in _STANDARD_KEYS
                      and k != "traceback")
    line = f"{clock} {record.get('level', 'info')!s:<7} {record['event']}"
    if fields:
        line += f"  {fields}"
    if "traceback" in record:
        line += "\n" + str(record["traceback"])
    return line


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return json.dumps(text) if (" " in text or not text) else text


def as_json_line(name: str, text: str) -> str:
    """`--json`: a child's JSON lines pass through; anything else is wrapped as one."""
    if text.startswith("{"):
        try:
            if isinstance(json.loads(text), dict):
                return text
        except ValueError:
            pass
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    return json.dumps({"ts": f"{stamp}Z", "level": "info", "service": name,
                       "event": "output", "line": text}, ensure_ascii=False)


def _create_demo(url: str, secret_key_file: str | None,
                 old_key_files: Sequence[str] = ()) -> tuple[str, str]:
    from postroom.secretbox import Keyring
    from postroom.store import dkim, domains, users, webaccess
    from postroom.store.errors import AlreadyExists

    password = secrets.token_urlsafe(12)
    database = Database(url, pool_size=1)
    try:
        try:
            database.run_sync(domains.add_domain, DEMO_DOMAIN)
        except AlreadyExists:
            pass
        try:
            database.run_sync(users.add_user, DEMO_USER, password)
        except AlreadyExists:
            database.run_sync(users.set_password, DEMO_USER, password)
        # the demo account administers the web console (POSTROOM_WEB_LISTEN, docs/web.md)
        database.run_sync(webaccess.set_admin, DEMO_USER, True)
        # the demo's mail is DKIM-signed like a real domain's (RSA and ed25519)
        if not database.run_sync(dkim.list_keys, DEMO_DOMAIN):
            keyring = Keyring.from_files(secret_key_file, old_key_files)
            for algorithm in ("rsa-sha256", "ed25519-sha256"):
                database.run_sync(dkim.generate_key, DEMO_DOMAIN, algorithm, keyring=keyring)
    finally:
        database.dispose()
    return DEMO_USER, password


def _describe(name: str, settings: Settings, env: Mapping[str, str]) -> str:
    count = int(env.get(PREFIX + "PROCESSES") or 1)
    line = _describe_one(name, settings, env)
    return line + (f"   ({count} processes)" if count > 1 else "")


def _describe_one(name: str, settings: Settings, env: Mapping[str, str]) -> str:
    from postroom.runtime import resolve_spec

    health = env[PREFIX + "HTTP_LISTEN"].split(":")[1]
    try:
        spec = resolve_spec(name)
        child_settings = load_settings(env)
        listeners = [e for attr in spec.listen_settings
                     for e in getattr(child_settings, attr, ())]
    except Exception:  # noqa: BLE001 (the child will report the real error itself)
        listeners = []
    where = ", ".join(listeners) or "no listener"
    return f"  {name:<6} {where}   health http://127.0.0.1:{health}/healthz"


def main(args: argparse.Namespace, *, reactor: Reactor | None = None,
         environ: Mapping[str, str] | None = None) -> int:
    """Run `postroom up`; returns the exit code."""
    configure("up")
    environ = dict(os.environ if environ is None else environ)
    try:
        settings = load_settings(environ)
    except ConfigError as exc:
        log.error("cannot start", reason=str(exc))
        return 2
    configure("up", settings.log_level)
    from postroom.ops.localinfra import InfraError, LocalInfra
    from postroom.service import available_services

    names = list(getattr(args, "only", None) or sorted(available_services()))
    if not names:
        log.error("cannot start", reason="no services installed")
        return 2
    replicas = getattr(args, "replicas", None) or {}
    unknown = sorted(set(replicas) - set(names) - {""})
    if unknown:
        log.error("cannot start", reason=f"--replicas names a service not started: "
                                         f"{', '.join(unknown)}")
        return 2
    var = Path(settings.var_dir).resolve()
    infra = LocalInfra(var)
    overrides: dict[str, str] = {}
    # until the reactor's handlers take over, SIGTERM interrupts start-up as Ctrl-C does,
    # so that the private servers already started are stopped rather than left running
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        try:
            var.mkdir(parents=True, exist_ok=True)
            database_url = settings.database_url
            if not database_url:
                database_url = infra.start_postgres()
                overrides[PREFIX + "DATABASE_URL"] = database_url
            if not settings.redis_url:
                overrides[PREFIX + "REDIS_URL"] = infra.start_redis()
            overrides.update(_ensure_tls(settings, var))
            overrides.update(_ensure_secret_key(settings, var))
            overrides.update(_ensure_srs_key(settings, var))
            overrides.update(_listen_overrides(settings, getattr(args, "host", None), environ))
            from postroom.store import migrate

            migrate.upgrade(database_url)
            log.info("database schema is current",
                     revision=migrate.current_revision(database_url))
            secret_key_file = overrides.get(PREFIX + "SECRET_KEY_FILE", settings.secret_key_file)
            demo = (_create_demo(database_url, secret_key_file, settings.secret_old_key_files)
                    if getattr(args, "demo", False) else None)
        except (InfraError, ConfigError, OSError, ImportError, SecretError) as exc:
            log.error("cannot start", reason=str(exc))
            return 2
        except Exception as exc:
            log.exception("cannot start", exc, reason=f"{type(exc).__name__}: {exc}")
            return 2
        return _supervise(names, settings, environ, overrides, demo, reactor,
                          json_output=bool(getattr(args, "json", False)), replicas=replicas)
    except KeyboardInterrupt:
        log.info("stopped before the services started")
        return 130
    finally:
        _stop_infra(infra)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_infra(infra: LocalInfra) -> None:
    """Stop the private servers (bounded by their timeouts) with stop signals ignored.

    `up` is on its way out; a second Ctrl-C here would otherwise leave a
    postmaster running in its own session, and a root run's per-run directory.
    """
    ReactorStop.ignore_further()
    infra.stop()


def _supervise(names: Sequence[str], settings: Settings, environ: Mapping[str, str],
               overrides: Mapping[str, str], demo: tuple[str, str] | None,
               reactor: Reactor | None, *, json_output: bool = False,
               replicas: Mapping[str, int] | None = None) -> int:
    if reactor is None:
        reactor = global_reactor()
    envs: dict[str, dict[str, str]] = {}
    for name in names:
        env = {**environ, **overrides}
        env[PREFIX + "HTTP_LISTEN"] = f"tcp:{_free_port('127.0.0.1')}:interface=127.0.0.1"
        # more than one: that child is the parent of its workers (postroom.ops.procgroup)
        env[PREFIX + "PROCESSES"] = str(processes_for(name, replicas, settings))
        env[PREFIX + "UP_CHILD"] = "1"
        env[PREFIX + "SERVICE"] = name
        envs[name] = env
    if "web" in envs and PREFIX + "WEB_SERVICES" not in environ:
        envs["web"][PREFIX + "WEB_SERVICES"] = service_urls(envs)
    exit_code = [0]
    stop = ReactorStop(reactor, log)

    def all_given_up() -> None:
        exit_code[0] = 1
        stop("every service gave up")

    supervisor = Supervisor(reactor, {n: serve_argv(n) for n in names}, envs,
                            grace=settings.shutdown_grace + 5, on_all_given_up=all_given_up,
                            json_output=json_output)
    print("postroom up: starting " + ", ".join(
        name + (f" x{envs[name][PREFIX + 'PROCESSES']}"
                if envs[name][PREFIX + "PROCESSES"] != "1" else "") for name in names),
        flush=True)
    for name in names:
        print(_describe(name, settings, envs[name]), flush=True)
    if demo is not None:
        print(f"demo account: {demo[0]}  password: {demo[1]}  (domain {DEMO_DOMAIN}; "
              "an admin of the web console)", flush=True)
    print("Ctrl-C stops everything.", flush=True)
    reactor.addSystemEventTrigger("before", "shutdown",
                                  lambda: Deferred.fromCoroutine(supervisor.stop()))
    reactor.callWhenRunning(supervisor.start)
    # SIGTERM and SIGINT stop the reactor once (ReactorStop), which stops the children;
    # then main stops the private servers
    reactor.run()
    if supervisor.given_up and not exit_code[0]:
        exit_code[0] = 1
    return exit_code[0]
