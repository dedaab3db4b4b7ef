"""Shared bench plumbing: progress lines, the run's time budget, statistics, ports and processes."""

from __future__ import annotations

import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
# runtime state (peer configs, queues, Maildirs, node_modules) lives under the gitignored var/
VAR = REPO / "var" / "bench"
PY = str(REPO / ".venv" / "bin" / "python")
POSTROOM = str(REPO / ".venv" / "bin" / "postroom")

_T0 = time.monotonic()


def progress(message: str) -> None:
    """One line per phase, with the time since the run started."""
    elapsed = time.monotonic() - _T0
    print(f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {message}", flush=True)


class Skip(Exception):
    """A workload (or one side of it) cannot run here; the message says why."""


@dataclass
class Budget:
    """The whole run's time limit: workloads ask before starting a run whether it still fits."""

    total: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.total - (time.monotonic() - self.started)

    def fits(self, seconds: float) -> bool:
        return self.left() > seconds


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (values need not be sorted)."""
    if not values:
        return None
    ordered = sorted(values)
    # the smallest value with at least pct% of the values at or below it (round() would
    # round half to even and pick the next value up for every other exact rank)
    rank = max(0, min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1))
    return ordered[rank]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is true; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout:.0f}s")
        time.sleep(interval)


def run(argv: Sequence[str], *, timeout: float = 120.0, input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion (bounded); raise with its output when it fails."""
    proc = subprocess.run(list(argv), input=input, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: "
                           f"{proc.stdout.decode(errors='replace')[-2000:]}")
    return proc


def stop_pid(proc: subprocess.Popen[Any] | None, timeout: float = 15.0) -> None:
    """SIGTERM a process we started, SIGKILL after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def rss_kib(pid: int) -> int:
    """Resident set size of one process in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size in KiB: shared pages split between the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file soft limit (children inherit it); the limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            # root may raise the hard limit as well
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            except (ValueError, OSError):
                pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def tool(name: str) -> str | None:
    """Path of a program, looking in the sbin directories too (postfix lives there)."""
    import shutil

    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return shutil.which(name, path=path)


def say_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


def python_env() -> dict[str, str]:
    """The caller's environment less POSTROOM_* (each suite states every setting it uses)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO)
    return env


def fatal(message: str) -> None:
    progress(f"FATAL: {message}")
    sys.exit(1)
