"""What a workload returns: rows of Postroom-vs-peer figures (medians over alternating runs)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from common import Budget, median


@dataclass
class Row:
    """One metric: Postroom's runs and one peer's runs; the table shows medians and the ratio."""

    workload: str
    metric: str
    unit: str
    peer: str
    postroom: list[float] = field(default_factory=list)
    peer_runs: list[float] = field(default_factory=list)
    higher_is_better: bool = True
    note: str = ""

    @property
    def postroom_median(self) -> float | None:
        return median(self.postroom)

    @property
    def peer_median(self) -> float | None:
        return median(self.peer_runs)

    @property
    def ratio(self) -> float | None:
        p, q = self.postroom_median, self.peer_median
        if p is None or q is None or q == 0:
            return None
        return p / q

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(postroom_median=self.postroom_median, peer_median=self.peer_median,
                    ratio=self.ratio)
        return data


@dataclass
class Context:
    """What every workload gets: the budget, run count, sizes, and what is installed."""

    budget: Budget
    runs: int
    messages: int
    services: set[str]
    peers_missing: dict[str, str | None]
    scale_messages: int
    idle_connections: int
    profile: bool
    # processes per Postroom front door (one shared port): None = the shipped defaults
    # (postroom_suite.processes_for: one per core); an int = the --replicas override
    replicas: int | None = None
    # --quick: the curves' short sizes (a functional check, not figures to quote)
    quick: bool = False
    # --curve: which of the curves workload's curves run (empty: all)
    curves: tuple[str, ...] = ()
    # the 1-minute load average run.py read once before workload 1 started: what the machine
    # carried apart from the bench (a later reading includes the bench's own earlier
    # workloads); None when no run.py sampled it
    load_before: float | None = None
    # CPU per message / per operation, a column each in the CPU tables (bench/cpu.py)
    cpu: list[Any] = field(default_factory=list)
    # extra results a workload reports besides its rows (profiles, memory details)
    extras: dict[str, Any] = field(default_factory=dict)
    # this workload's slice of the budget (run.py sets it before each workload)
    share: Budget = field(default_factory=lambda: Budget(0))
    _first_run: float = 0.0

    def another_run(self, i: int) -> bool:
        """Whether run ``i`` (0-based) still fits this workload's share; the first always runs."""
        now = time.monotonic()
        if i == 0:
            self._first_run = now
            return True
        return self.share.fits((now - self._first_run) / i)

    def haraka_nodes(self) -> int:
        """Haraka gets as many nodes as Postroom has mta processes."""
        from postroom_suite import processes_for

        return processes_for("mta", self.replicas)

    def need_services(self, *names: str) -> None:
        from common import Skip

        missing = [n for n in names if n not in self.services]
        if missing:
            raise Skip(f"Postroom service(s) {', '.join(missing)} not installed yet "
                       "(not registered as postroom.services entry points)")
