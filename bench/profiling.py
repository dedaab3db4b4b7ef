"""Sample a running Postroom service with py-spy and summarise where its time goes.

``Profiler(pids).start()`` runs ``py-spy record --format raw`` (collapsed
stacks) against each process for the duration of a load; ``stop()`` returns
per process the functions with the most samples, both "self" (the frame on
top) and "inclusive" (anywhere in the stack, Postroom frames only), which is
what bench/README.md's profile section is written from.
"""

from __future__ import annotations

import collections
import signal
import subprocess
from pathlib import Path
from typing import Any

from common import REPO, VAR, tool

PYSPY = REPO / ".venv" / "bin" / "py-spy"


def available() -> str | None:
    if not PYSPY.exists() and tool("py-spy") is None:
        return "py-spy is not installed (pip install -e '.[bench]')"
    return None


class Profiler:
    def __init__(self, pids: dict[str, int], *, rate: int = 200) -> None:
        self.pids = pids
        self.rate = rate
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.outputs: dict[str, Path] = {}

    def start(self) -> Profiler:
        binary = str(PYSPY) if PYSPY.exists() else (tool("py-spy") or "py-spy")
        (VAR / "profiles").mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            out = VAR / "profiles" / f"{name}.txt"
            self.outputs[name] = out
            # --idle off: only samples where the process is running (CPU), the hot paths
            self.procs[name] = subprocess.Popen(
                [binary, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw",
                 "--output", str(out), "--duration", "600", "--nonblocking"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        for name, proc in self.procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            out = self.outputs[name]
            if out.exists():
                summary[name] = summarise(out.read_text(errors="replace"))
            else:
                text = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                summary[name] = {"error": text[-500:]}
        return summary


def _frame_name(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    short = "/".join(Path(path).parts[-2:]) if path else "?"
    return f"{func} ({short})"


def summarise(raw: str, top: int = 12) -> dict[str, Any]:
    """Top frames by self samples and Postroom frames by inclusive samples."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = [f for f in stack.split(";") if f]
        if frames:
            own[_frame_name(frames[-1])] += count
        seen = set()
        for frame in frames:
            if "postroom" in frame:
                name = _frame_name(frame)
                if name not in seen:
                    seen.add(name)
                    inclusive[name] += count
    def pct(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]
    return {"samples": total, "self": pct(own), "inclusive_postroom": pct(inclusive)}
