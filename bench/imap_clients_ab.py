"""The IMAP mix against client count, Postroom only, two code versions side by side (issue 23).

``bench/run.py --only curves --curve imap_clients`` runs Dovecot too and takes minutes; this
driver runs the mix of workload 4 (``imap_mix.load``: one account per client) against
Postroom's imap alone, at a few client counts, and reads CPU from /proc:

* the imap service's process tree (``postroom serve imap --processes N``: parent and workers),
* the PostgreSQL backends it opened (by ``application_name``, PGAPPNAME),
* the client (this process: its threads drive the load),

divided by the operations done. With ``--base COMMIT`` a second imap service runs the tree at
that commit (``git archive``, first on its PYTHONPATH) on the same database, with its own
accounts and its own Redis prefix (so neither side parses the other's change events), and
the blocks alternate between the sides (A B B A ...), so the drift of a shared machine
cancels in the medians. ``--profile N`` records py-spy ``--gil`` of every imap worker while
N clients run the mix, and prints the top frames.

    .venv/bin/python bench/imap_clients_ab.py --clients 10,200 --seconds 10 --rounds 3 \
        [--base main] [--profile 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cpu
import proctools
from common import REPO, progress, raise_nofile
from workloads import imap_mix

SEEDED = 50  # the curve's mailbox (workloads/curves.py SEEDED)


def _workers(root: int) -> list[int]:
    stats = cpu.all_stats()
    return sorted(p for p in cpu.tree([root], stats) if p != root) or [root]


def _block(port: int, users: list[str], seconds: float, imap_root: int,
           pg: list[int]) -> dict[str, float]:
    before = (cpu.ticks([imap_root], children=True), cpu.ticks(pg, children=False),
              cpu.self_ticks())
    rate, q50, q99, errors, done = imap_mix.load(port, users, seconds)
    after = (cpu.ticks([imap_root], children=True), cpu.ticks(pg, children=False),
             cpu.self_ticks())
    ms = [(a - b) * 1000 / cpu.TICKS / max(1, done) for a, b in zip(after, before, strict=True)]
    return {"ops_s": rate, "p50": q50, "p99": q99, "errors": errors, "ops": done,
            "imap_ms": ms[0], "pg_ms": ms[1], "client_ms": ms[2],
            "load1": os.getloadavg()[0]}


def _warm(port: int, users: list[str], times: int) -> None:
    """LOGIN + LOGOUT ``times`` per account (fills the processes' login caches)."""
    for _ in range(times):
        imap_mix.warm_logins(port, users)


def _profile(root: int, port: int, users: list[str], seconds: float,
             flags: list[str]) -> None:
    pyspy = str(REPO / ".venv" / "bin" / "py-spy")
    outs = {}
    procs = []
    for pid in _workers(root):
        out = Path(tempfile.mkstemp(prefix=f"imap-ab-{pid}-", suffix=".txt")[1])
        outs[pid] = out
        procs.append(subprocess.Popen(
            [pyspy, "record", *flags, "--format", "raw", "--rate", "200", "-d",
             str(int(seconds)), "-p", str(pid), "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)
    rate, _q50, q99, _errors, done = imap_mix.load(port, users, seconds)
    progress(f"  under the profiler: {rate:.0f} ops/s, p99 {q99:.0f} ms, {done} ops")
    for p in procs:
        p.wait(60)
    for pid, out in outs.items():
        proctools.print_top_frames(out, f"py-spy --gil, worker {pid}", own=25, inclusive=90,
                                   width=150)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="10,200")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base", help="commit of the other side (A/B)")
    parser.add_argument("--processes", type=int, default=0, help="imap processes (0: cores)")
    parser.add_argument("--profile", default="", help="py-spy at these client counts (10,200)")
    parser.add_argument("--spy-flags", default="--gil", help="py-spy record options")
    parser.add_argument("--warm", type=int, default=0,
                        help="before each block, log every account in this many times "
                             "(untimed), so the timed mix meets warm login caches")
    parser.add_argument("--fresh", action="store_true",
                        help="every block its own accounts, never logged in before (as each "
                             "point of the curve meets accounts new to it)")
    parser.add_argument("--json", help="append each block as a JSON line to this file")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    most = max(counts)
    sides = ["new"] + (["base"] if args.base else [])
    raise_nofile(4 * most + 4096)
    per_side = most if not args.fresh else args.rounds * sum(counts)
    with proctools.imap_ab(per_side * len(sides) + 1, replicas=args.processes or None,
                           base=args.base, seeded=SEEDED) as ab:
        suite, users, ports, roots = ab.suite, ab.users, ab.ports, ab.roots
        accounts = {side: users[i * per_side:(i + 1) * per_side]
                    for i, side in enumerate(sides)}
        # warm up: every side's processes import, connect (and cache logins, unless fresh
        # accounts are wanted: then a few accounts kept apart)
        for side in sides:
            imap_mix.load(ports[side], accounts[side][:most] if not args.fresh
                          else users[-1:], 3.0)
        used = {side: 0 for side in sides}
        for n in [int(c) for c in args.profile.split(",") if c]:
            for side in sides:
                progress(f"profile {side}, {n} clients")
                _profile(roots[side], ports[side], accounts[side][:n], args.seconds,
                         args.spy_flags.split())
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else list(reversed(sides))
            for clients in counts:
                for side in order:
                    mine = accounts[side][:clients]
                    if args.fresh:
                        mine = accounts[side][used[side]:used[side] + clients]
                        used[side] += clients
                    if args.warm:
                        _warm(ports[side], mine, args.warm)
                    pg = proctools.pg_pids(suite, f"imap-{side}")
                    got = _block(ports[side], mine, args.seconds,
                                 roots[side], pg)
                    got.update(side=side, clients=clients, round=r)
                    results.setdefault((side, clients), []).append(got)
                    progress(f"round {r} {side:4} {clients:4} clients: "
                             f"{got['ops_s']:.0f} ops/s p99 {got['p99']:.0f} ms, "
                             f"imap {got['imap_ms']:.3f} pg {got['pg_ms']:.3f} "
                             f"client {got['client_ms']:.3f} ms/op, "
                             f"{got['errors']} err, load {got['load1']:.1f}")
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(got) + "\n")
        print("medians:")
        for (side, clients), blocks in sorted(results.items()):
            med = {k: statistics.median(b[k] for b in blocks)
                   for k in ("ops_s", "p99", "imap_ms", "pg_ms", "client_ms")}
            print(f"  {side:4} {clients:4} clients: {med['ops_s']:.0f} ops/s, p99 "
                  f"{med['p99']:.0f} ms, imap {med['imap_ms']:.3f}, pg {med['pg_ms']:.3f}, "
                  f"client {med['client_ms']:.3f} ms/op ({len(blocks)} blocks)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
