"""CPU time of the processes under test, from /proc/PID/stat: per message and per IMAP operation.

A *group* is a label ("mta", "postgres", "Postfix+Dovecot") and a function giving its root
PIDs. The CPU of a group is the sum over its live processes and all their descendants of
``utime + stime + cutime + cstime``: a child that has exited and been reaped by a process of
the group (Postfix's smtpd by its master, Dovecot's per-connection imap by its master, a
`postroom serve --processes N` worker by its parent) has its time folded into its parent's
``cutime``/``cstime`` by the kernel, so nothing it did is lost between two samples. Sample
before and after a timed run, subtract, divide by the messages delivered or operations done.

PostgreSQL and Redis are shared with the rest of the machine: the postgres group is only the
backends connected to the bench's database (their PIDs from pg_stat_activity, which stay for
the run: the services keep pooled connections), and redis is the one redis-server (every
client's work, so read it on a quiet machine only).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROC = Path("/proc")


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat the accounting needs (times in clock ticks)."""

    pid: int
    comm: str
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int

    @property
    def own(self) -> int:
        return self.utime + self.stime

    @property
    def with_reaped(self) -> int:
        return self.utime + self.stime + self.cutime + self.cstime


def parse_stat(text: str) -> Stat:
    """One /proc/PID/stat line; ``comm`` may hold spaces and parentheses (ends at the last ')')."""
    pid_part, _, rest = text.partition(" (")
    comm, _, tail = rest.rpartition(") ")
    fields = tail.split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14-17
    return Stat(pid=int(pid_part), comm=comm, ppid=int(fields[1]), utime=int(fields[11]),
                stime=int(fields[12]), cutime=int(fields[13]), cstime=int(fields[14]))


def read_stat(pid: int) -> Stat | None:
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def all_stats() -> dict[int, Stat]:
    out: dict[int, Stat] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                out[stat.pid] = stat
    return out


def tree(roots: Iterable[int], stats: Mapping[int, Stat]) -> set[int]:
    """The roots that are alive and every descendant of them."""
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: set[int] = set()
    todo = [pid for pid in roots if pid in stats]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def tree_ticks(roots: Iterable[int], stats: Mapping[int, Stat]) -> int:
    """CPU of a process tree, reaped children included (see the module docstring)."""
    return sum(stats[pid].with_reaped for pid in tree(roots, stats))


# --- one process or tree at a time, for the A/B scripts (bench/*_ab.py, scripts/measure_*.py)

def own_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds; OSError when it is gone."""
    return parse_stat((PROC / str(pid) / "stat").read_text()).own / TICKS


def tree_seconds(pid: int) -> float:
    """CPU of a process and every process it forked (workers), reaped ones too, in seconds."""
    return tree_ticks([pid], all_stats()) / TICKS


def ticks(pids: Iterable[int], *, children: bool) -> int:
    """Ticks of the live ``pids``: with ``children`` their trees (reaped children in), else
    their own time only (PostgreSQL backends, whose parent serves others too)."""
    stats = all_stats()
    if children:
        return tree_ticks(pids, stats)
    return sum(stats[p].own for p in pids if p in stats)


def self_ticks() -> int:
    """This process's own CPU (a client driving the load from its threads), in ticks."""
    t = os.times()
    return int((t.user + t.system) * TICKS)


def backend_seconds(engine: Any, dbname: str, skip: int | None = None) -> dict[int, float]:
    """Own CPU seconds of each PostgreSQL backend connected to ``dbname`` (but ``skip``, the
    caller's own polling connection), by PID; a backend gone between the two reads is left out."""
    from sqlalchemy import text

    with engine.connect() as conn:
        pids = [r[0] for r in conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": dbname})]
    out = {}
    for pid in pids:
        if pid != skip:
            try:
                out[pid] = own_seconds(pid)
            except OSError:
                pass
    return out


def by_command(roots: Iterable[int], stats: Mapping[int, Stat]) -> dict[str, int]:
    """Own CPU ticks of the live processes of a tree by command name (smtpd, cleanup, imap...)."""
    out: dict[str, int] = {}
    for pid in tree(roots, stats):
        out[stats[pid].comm] = out.get(stats[pid].comm, 0) + stats[pid].own
    return out


@dataclass
class Sample:
    ticks: dict[str, int]
    commands: dict[str, dict[str, int]]


@dataclass
class Meter:
    """Named groups of processes; ``measure`` runs a callable between two samples.

    ``own`` groups count only the listed PIDs' own time (for processes whose parent also
    serves others: PostgreSQL backends under the shared postmaster).
    """

    groups: dict[str, Callable[[], Iterable[int]]] = field(default_factory=dict)
    own: set[str] = field(default_factory=set)
    detail: set[str] = field(default_factory=set)

    def add(self, label: str, pids: Callable[[], Iterable[int]], *, own: bool = False,
            detail: bool = False) -> Meter:
        self.groups[label] = pids
        if own:
            self.own.add(label)
        if detail:
            self.detail.add(label)
        return self

    def sample(self) -> Sample:
        stats = all_stats()
        ticks: dict[str, int] = {}
        commands: dict[str, dict[str, int]] = {}
        for label, pids in self.groups.items():
            roots = list(pids())
            if label in self.own:
                ticks[label] = sum(stats[p].own for p in roots if p in stats)
            else:
                ticks[label] = tree_ticks(roots, stats)
            if label in self.detail:
                commands[label] = by_command(roots, stats)
        return Sample(ticks, commands)


def used_ms(before: Sample, after: Sample) -> dict[str, float]:
    """CPU milliseconds each group used between two samples (never negative: a PID that
    vanished from an ``own`` group takes its time with it)."""
    return {label: max(0, after.ticks.get(label, 0) - ticks) * 1000 / TICKS
            for label, ticks in before.ticks.items()}


def commands_ms(before: Sample, after: Sample) -> dict[str, dict[str, float]]:
    """Per group, CPU ms of each live command name between the samples (peers' breakdown)."""
    out: dict[str, dict[str, float]] = {}
    for label, after_cmds in after.commands.items():
        before_cmds = before.commands.get(label, {})
        out[label] = {cmd: round((t - before_cmds.get(cmd, 0)) * 1000 / TICKS, 1)
                      for cmd, t in after_cmds.items() if t - before_cmds.get(cmd, 0) > 0}
    return out


@dataclass
class Tally:
    """CPU of a workload's side over every run: totals, so the figure is sum(ms) / sum(count)."""

    unit: str
    ms: dict[str, float] = field(default_factory=dict)
    count: int = 0
    commands: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, used: Mapping[str, float], count: int,
            commands: Mapping[str, Mapping[str, float]] | None = None) -> None:
        for label, ms in used.items():
            self.ms[label] = self.ms.get(label, 0.0) + ms
        self.count += count
        for label, cmds in (commands or {}).items():
            mine = self.commands.setdefault(label, {})
            for cmd, ms in cmds.items():
                mine[cmd] = round(mine.get(cmd, 0.0) + ms, 1)

    def between(self, before: Sample, after: Sample, count: int) -> None:
        self.add(used_ms(before, after), count, commands_ms(before, after))

    def per_unit(self) -> dict[str, float]:
        if not self.count:
            return {}
        return {label: ms / self.count for label, ms in self.ms.items()}

    def total(self) -> float | None:
        per = self.per_unit()
        return sum(per.values()) if per else None

    def as_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "count": self.count, "cpu_ms": dict(self.ms),
                "ms_per_unit": self.per_unit(), "by_command_ms": self.commands}


def measure(meter: Meter, tally: Tally, action: Callable[[], int]) -> int:
    """Run ``action`` (it returns how many messages/operations it did) between two samples."""
    before = meter.sample()
    count = action()
    tally.between(before, meter.sample(), count)
    return count


# --- the groups the workloads use

def postgres_backends(database_url: str) -> Callable[[], list[int]]:
    """PIDs of the backends connected to the bench's database (asked at each sample)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(database_url).database
    engine = create_engine(database_url, pool_size=1,
                           connect_args={"application_name": "bench"})

    def pids() -> list[int]:
        # the bench's own connections (application_name "bench": this one, the suite's
        # polling of delivered counts) are not the services' work
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = :n AND backend_type = "
                "'client backend' AND application_name IS DISTINCT FROM 'bench'"),
                {"n": name}).all()
        return [int(r[0]) for r in rows]

    return pids


def redis_server(url: str) -> Callable[[], list[int]]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return lambda: [pid]


# Postroom's services in the order of the table; postgres and redis are the stores they use
SERVICES = ("mta", "dmarc", "mda", "msa", "imap", "pop3", "postgres", "redis")


def postroom_meter(suite: Any, names: Iterable[str]) -> Meter:
    """Every process of each named service (replicas and children too), the bench database's
    PostgreSQL backends and the Redis server."""
    from postroom_suite import REDIS_URL

    meter = Meter()
    for name in names:
        meter.add(name, lambda name=name: suite.pids(name).values())
    meter.add("postgres", postgres_backends(suite.database_url), own=True)
    try:
        meter.add("redis", redis_server(REDIS_URL))
    except Exception:  # no Redis PID: the figure is left out, not the run
        pass
    return meter


def peer_meter(label: str, *roots: Callable[[], Iterable[int]]) -> Meter:
    """One group for a peer: the trees under its root processes (Postfix's master, Dovecot's
    master, Haraka's master), with a breakdown by command name of the live processes."""
    def pids() -> list[int]:
        return [pid for fn in roots for pid in fn()]

    return Meter().add(label, pids, detail=True)


@dataclass
class Figure:
    """One column of the CPU tables: a workload's Postroom side against one peer."""

    workload: str
    unit: str  # "msg" or "op"
    peer: str
    postroom: Tally
    peer_side: Tally

    def as_dict(self) -> dict[str, Any]:
        return {"workload": self.workload, "unit": self.unit, "peer": self.peer,
                "postroom": self.postroom.as_dict(), "peer_side": self.peer_side.as_dict(),
                "postroom_total_ms": self.postroom.total(),
                "peer_total_ms": self.peer_side.total()}


def figure(workload: str, unit: str, peer: str) -> Figure:
    return Figure(workload, unit, peer, Tally(unit), Tally(unit))


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


def table(title: str, figures: list[Figure]) -> str:
    """Rows: each Postroom service, Postroom's total, the peer's total and the ratio;
    a column per workload (CPU ms per message or per operation)."""
    figures = [f for f in figures if f.postroom.count or f.peer_side.count]
    if not figures:
        return ""
    head = ["CPU ms per " + ("message" if figures[0].unit == "msg" else "operation")]
    head += [f"{f.workload} (vs {f.peer})" for f in figures]
    lines = [head]
    per = [f.postroom.per_unit() for f in figures]
    for label in SERVICES:
        if any(label in p for p in per):
            lines.append([label] + [_ms(p.get(label)) for p in per])
    lines.append(["Postroom total"] + [_ms(f.postroom.total()) for f in figures])
    lines.append(["peer total"] + [_ms(f.peer_side.total()) for f in figures])
    ratios = []
    for f in figures:
        mine, theirs = f.postroom.total(), f.peer_side.total()
        ratios.append(f"{mine / theirs:.2f}x" if mine is not None and theirs else "-")
    lines.append(["ratio P/peer", *ratios])
    lines.append(["count (P / peer)", *(f"{f.postroom.count} / {f.peer_side.count}"
                                        for f in figures)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
           for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return f"{title}\n" + "\n".join(out)
