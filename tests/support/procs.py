"""Real service processes for tests: start one, wait for /healthz 200, stop it by PID.

``ServiceProcess(name, env)`` runs ``postroom serve NAME`` (or any argv) with a
hermetic environment (no POSTROOM_* from the caller's shell), its own free
loopback POSTROOM_HTTP_LISTEN, one process (POSTROOM_PROCESSES=1 unless ``env`` says
otherwise), and output captured to a file that is shown
whenever the process fails to become healthy. The ``service_process`` fixture
is a factory whose processes are stopped at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def runtime_argv(name: str) -> list[str]:
    """Run a service through ``postroom.runtime.run_service`` (``module:ATTR`` names work)."""
    return [sys.executable, "-c",
            "import sys; from postroom.runtime import run_service; "
            "sys.exit(run_service(sys.argv[1]))", name]


def cli_argv(name: str) -> list[str]:
    """Run a service exactly as compose does: ``postroom serve NAME``."""
    return [sys.executable, "-m", "postroom.ops.cli", "serve", name]


def base_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment less POSTROOM_*, plus ``env`` (tests state what they use)."""
    result = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    result["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    result["PYTHONUNBUFFERED"] = "1"
    result.update(env or {})
    return result


def listener_env(database_url: str, redis_url: str, prefix: str, certs: Path, *,
                 hostname: str = "localhost", **listen: str) -> dict[str, str]:
    """The environment every listening service test shares: store, queue, TLS, small pool.

    ``listen`` maps settings to loopback ports, e.g. ``imap_listen=1143`` becomes
    ``POSTROOM_IMAP_LISTEN=tcp:1143:interface=127.0.0.1``.
    """
    env = {
        "POSTROOM_DATABASE_URL": database_url,
        "POSTROOM_REDIS_URL": redis_url,
        "POSTROOM_REDIS_PREFIX": prefix,
        "POSTROOM_HOSTNAME": hostname,
        "POSTROOM_TLS_CERT_FILE": str(certs / "cert.pem"),
        "POSTROOM_TLS_KEY_FILE": str(certs / "key.pem"),
        "POSTROOM_DB_POOL_SIZE": "3",
    }
    for setting, port in listen.items():
        env[f"POSTROOM_{setting.upper()}"] = f"tcp:{port}:interface=127.0.0.1"
    return env


class ServiceProcess:
    """One service process under test."""

    def __init__(self, name: str, env: Mapping[str, str] | None = None, *,
                 argv: Sequence[str] | None = None, http_port: int | None = None,
                 cwd: str | Path | None = None) -> None:
        self.name = name
        self.http_port = http_port or free_port()
        self.env = base_env(env)
        self.env.setdefault("POSTROOM_HTTP_LISTEN", f"tcp:{self.http_port}:interface=127.0.0.1")
        # one process, as tests of a service's behaviour expect (a front door's default is one
        # per core, a parent and its workers: tests/integration/test_process_group.py)
        self.env.setdefault("POSTROOM_PROCESSES", "1")
        self.argv = list(argv) if argv is not None else cli_argv(name)
        self.cwd = str(cwd or REPO_ROOT)
        self.proc: subprocess.Popen[bytes] | None = None
        self._out = tempfile.NamedTemporaryFile(prefix=f"postroom-{name.split(':')[-1]}-",
                                                suffix=".log", delete=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return Path(self._out.name).read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (other lines skipped)."""
        events = []
        for line in self.output.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def spawn(self) -> ServiceProcess:
        """Start the process without waiting for it to be healthy."""
        # a second start would lose the first process (it would outlive the test)
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already runs"
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd,
                                     stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT)
        return self

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        """Start and wait until /healthz answers 200; fail with the output otherwise."""
        self.spawn()
        self.wait_healthy(timeout)
        return self

    def healthz(self, timeout: float = 5.0) -> tuple[int, dict[str, Any] | None]:
        """(status, JSON body) of /healthz; (0, None) when nothing answers yet."""
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            return exc.code, json.loads(body) if body.startswith(b"{") else None
        except (OSError, ValueError):
            return 0, None

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        status: int = 0
        body: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode} before it was "
                            f"healthy; output:\n{self.output}", pytrace=False)
            status, body = self.healthz(timeout=2)
            if status == 200:
                return
            time.sleep(0.1)
        pytest.fail(f"{self.name} not healthy within {timeout}s (last /healthz {status} "
                    f"{body}); output:\n{self.output}", pytrace=False)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still running after {timeout}s; output:\n{self.output}",
                        pytrace=False)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        self._out.close()
        Path(self._out.name).unlink(missing_ok=True)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def service_process() -> Iterator[Any]:
    """Factory: ``service_process(name, env, argv=..., start=True)``; all stopped at teardown."""
    started: list[ServiceProcess] = []

    def make(name: str, env: Mapping[str, str] | None = None, *, start: bool = True,
             timeout: float = 30.0, **kwargs: Any) -> ServiceProcess:
        proc = ServiceProcess(name, env, **kwargs)
        started.append(proc)
        return proc.start(timeout) if start else proc.spawn()

    yield make
    for proc in started:
        proc.close()
