"""A private dockerd and the compose CLI for the real compose/Swarm test.

The daemon is Debian's docker.io, started by the test with its own socket, exec root
and pidfile under a temporary folder and its data root in the cache
(``POSTROOM_E2E_CACHE``, default /var/cache/postroom-e2e, so images persist between
runs), ``--iptables=false --ip-masq=false``: the host's firewall is never touched and
containers reach nothing but each other (published ports go through docker-proxy on
127.0.0.1). Networks come from 10.213.0.0/16. Stopped by its PID at the end, after
every container, service, network and volume it made is removed.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
CACHE = Path(os.environ.get("POSTROOM_E2E_CACHE", "/var/cache/postroom-e2e"))
IMAGES_SCRIPT = REPO / "scripts" / "docker-e2e-images.sh"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ADDRESS_POOL = "10.213.0.0/16"
SWARM_POOL = "10.214.0.0/16"
# the compose network of the test project, and the DNS stub's fixed address on it
COMPOSE_SUBNET = "10.213.250.0/24"
DNS_ADDRESS = "10.213.250.53"
# proxy mode's `proxied` network (compose.proxy.yaml's PROXY_SUBNET)
PROXY_SUBNET = "10.213.251.0/24"
# docker CLI: v28 (/usr/local/bin) takes the compose v2 plugin; Debian's 20.10 as fallback
DOCKER_CLI = next((p for p in ("/usr/local/bin/docker", "/usr/bin/docker") if Path(p).exists()),
                  "docker")


class E2EError(AssertionError):
    """A step of the end-to-end run failed; the message says which and shows its output."""


class Timings:
    """Phase durations, printed at the end of each test (and kept for the report)."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, float]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases.append((name, time.monotonic() - start))
            print(f"[docker-e2e] {name}: {self.phases[-1][1]:.1f}s", flush=True)

    def summary(self) -> str:
        total = sum(seconds for _, seconds in self.phases)
        lines = [f"  {name:<40} {seconds:7.1f}s" for name, seconds in self.phases]
        return "\n".join(["[docker-e2e] timings:", *lines, f"  {'total':<40} {total:7.1f}s"])


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 300, check: bool = True, input: str | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """Run a command, failing with its output when it fails (or times out)."""
    try:
        result = subprocess.run(list(cmd), env=env, cwd=cwd, timeout=timeout, text=True,
                                input=input, capture_output=True,
                                stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise E2EError(f"timed out after {timeout}s: {' '.join(cmd)}\n{exc.stdout or ''}"
                       f"\n{exc.stderr or ''}") from None
    if check and result.returncode != 0:
        raise E2EError(f"exit {result.returncode}: {' '.join(cmd)}\n--- stdout\n"
                       f"{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}")
    return result


class Dockerd:
    """Our own dockerd: start, a client environment for it, stop and clean."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = workdir / "docker.sock"
        self.pidfile = workdir / "dockerd.pid"
        self.log = workdir / "dockerd.log"
        self.data_root = CACHE / "docker"
        self.config = workdir / "docker-config"
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: Any = None

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(DOCKER_HOST=f"unix://{self.socket}", DOCKER_CONFIG=str(self.config),
                   DOCKER_CLI_HINTS="false", COMPOSE_ANSI="never", COMPOSE_STATUS_STDOUT="1")
        env.pop("COMPOSE_FILE", None)
        env.pop("COMPOSE_PROJECT_NAME", None)
        return env

    def docker(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return run([DOCKER_CLI, *args], env=self.env, **kwargs)

    def start(self) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        # one test daemon at a time on the cached data root
        self._lock = open(CACHE / "dockerd.lock", "w")
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise E2EError(f"{CACHE}/dockerd.lock held for 15 minutes by another "
                                   "run") from None
                time.sleep(2)
        # the compose v2 CLI plugin (scripts/ensure-services.sh fetched it; this is quick)
        plugin = run(["bash", str(IMAGES_SCRIPT), "plugin"], timeout=300).stdout.strip()
        (self.config / "cli-plugins").mkdir(parents=True, exist_ok=True)
        link = self.config / "cli-plugins" / "docker-compose"
        link.unlink(missing_ok=True)
        link.symlink_to(plugin)
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not Path(dockerd).exists():
            raise E2EError("dockerd is not installed (Debian docker.io; "
                           "scripts/ensure-services.sh installs it)")
        cmd = [dockerd, "--data-root", str(self.data_root),
               "--exec-root", str(self.workdir / "exec"),
               "--pidfile", str(self.pidfile), "-H", f"unix://{self.socket}",
               "--iptables=false", "--ip-masq=false", "--ip6tables=false", "--bridge=none",
               "--default-address-pool", f"base={ADDRESS_POOL},size=24",
               # a port published without an address (proxy mode's bare PUBLISH_*) binds
               # loopback only (Swarm's host-mode ports ignore this: the test publishes none)
               "--ip=127.0.0.1",
               "--storage-driver=overlay2", "--log-level=warn"]
        log = open(self.log, "wb")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise E2EError(f"dockerd exited with {self.process.returncode}:\n{self.tail()}")
            if self.socket.exists() and run([DOCKER_CLI, "info"], env=self.env, check=False,
                                            timeout=20).returncode == 0:
                # a run that died before its clean-up left containers (restarted by their
                # policy) or a swarm in the cached data root: start from nothing
                self.clean()
                return
            time.sleep(0.5)
        raise E2EError(f"dockerd did not answer within 90s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no dockerd log)"

    def clean(self) -> None:
        """Remove what the tests made: stacks, swarm, containers, networks, volumes."""
        if self.process is None or self.process.poll() is not None:
            return
        self.docker("swarm", "leave", "--force", check=False, timeout=60)
        ids = self.docker("ps", "-aq", check=False, timeout=60).stdout.split()
        if ids:
            self.docker("rm", "-f", "-v", *ids, check=False, timeout=120)
        self.docker("network", "prune", "-f", check=False, timeout=60)
        self.docker("volume", "prune", "-f", check=False, timeout=60)
        # dangling layers from rebuilt images; the tagged ones stay cached
        self.docker("image", "prune", "-f", check=False, timeout=120)

    def stop(self) -> None:
        try:
            self.clean()
        finally:
            if self.process is not None and self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.kill(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=30)
            if self._lock is not None:
                self._lock.close()


def copy_project(dest: Path) -> Path:
    """The repository's files (tracked and untracked, not ignored) copied to ``dest``."""
    files = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO).stdout
    dest.mkdir(parents=True, exist_ok=True)
    for name in filter(None, files.split("\0")):
        source = REPO / name
        if not source.is_file():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return dest


E2E_OVERRIDE = "tests/deploy/docker_e2e/compose.e2e.yaml"


class Compose:
    """`docker compose` on the test project: shipped compose.yaml + the e2e override."""

    def __init__(self, daemon: Dockerd, project_dir: Path, name: str, image: str,
                 extra_files: Sequence[str] = (), profiles: Sequence[str] = (),
                 override: str = E2E_OVERRIDE) -> None:
        self.extra_files = list(extra_files)
        self.override = override
        self.profiles = list(profiles)
        self.daemon = daemon
        self.dir = project_dir
        self.name = name
        self.image = image

    @property
    def env(self) -> dict[str, str]:
        env = self.daemon.env
        env.update(POSTROOM_IMAGE=self.image, E2E_SUBNET=COMPOSE_SUBNET,
                   E2E_DNS_ADDRESS=DNS_ADDRESS, PROXY_SUBNET=PROXY_SUBNET)
        return env

    def base(self) -> list[str]:
        files = ["compose.yaml", *self.extra_files, self.override]
        return [DOCKER_CLI, "compose", "-p", self.name,
                *(arg for name in files for arg in ("-f", name)),
                *(arg for profile in self.profiles for arg in ("--profile", profile))]

    def __call__(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("timeout", 300)
        return run([*self.base(), *args], env=self.env, cwd=self.dir, **kwargs)

    def ps(self) -> list[dict[str, Any]]:
        out = self("ps", "-a", "--format", "json", timeout=60).stdout.strip()
        if not out:
            return []
        if out.startswith("["):
            return list(json.loads(out))
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_ready(self, one_shots: Sequence[str] = ("migrate", "tls"),
                   timeout: float = 240) -> list[dict[str, Any]]:
        """Every long-running container running and healthy, every one-shot exited 0."""
        deadline = time.monotonic() + timeout
        pending: list[str] = []
        while time.monotonic() < deadline:
            containers = self.ps()
            pending = []
            for c in containers:
                service, state, health = c.get("Service"), c.get("State"), c.get("Health", "")
                if service in one_shots:
                    if state != "exited" or c.get("ExitCode") != 0:
                        pending.append(f"{c['Name']}: {state} exit={c.get('ExitCode')}")
                elif state != "running" or health not in ("", "healthy"):
                    pending.append(f"{c['Name']}: {state} {health}")
            if containers and not pending:
                return containers
            time.sleep(2)
        raise E2EError(f"not ready within {timeout}s: {pending}\n{self.logs_tail()}")

    def log_lines(self, service: str) -> list[tuple[str, str]]:
        """``docker compose logs SERVICE`` as (container prefix, payload) pairs; compose
        2.26 writes a terminal erase code before each line even with --no-color."""
        out = self("logs", "--no-color", service, timeout=60).stdout
        pairs = []
        for line in ANSI.sub("", out).splitlines():
            if line.strip():
                prefix, _, payload = line.partition("|")
                pairs.append((prefix.strip(), payload.strip()))
        return pairs

    def logs_tail(self, lines: int = 30) -> str:
        result = self("logs", "--no-color", "--tail", str(lines), check=False, timeout=60)
        return result.stdout[-12000:] + result.stderr[-2000:]
