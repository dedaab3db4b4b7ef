"""`make bench`: Postroom against Postfix + Dovecot and Haraka on loopback; a table of medians.

Installs the peers when missing, runs each workload (alternating Postroom and
peer runs), prints one progress line per phase, then a table of medians with
the ratio Postroom/peer, the CPU milliseconds per message and per IMAP
operation of every service and peer, and writes bench/results/<date>.json
(the scale curves' charts and tables under bench/results/curves/). Postroom
runs as the shipped defaults start it (postroom_suite.processes_for). A
workload whose Postroom part is not installed yet is skipped with the reason.
The whole run keeps to a time budget (default 20 minutes); every load is bounded
in count and time and stops by itself. Nothing is sent to any address but
127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cpu
from common import BENCH, Budget, Skip, progress, say_error
from workloads.base import Context, Row

# the curves come before the filter and full-text workloads: the issue-23 figures (workloads
# 1-5 and the curves) are the ones a run short of time must not leave out
WORKLOADS = ("smtp_inbound", "smtp_accept", "submission", "imap_mix", "imap_scale", "curves",
             "smtp_filter", "imap_fts")
# how the budget is shared between the workloads that are still to run
WEIGHTS = {"smtp_inbound": 3, "smtp_accept": 2, "submission": 2, "imap_mix": 3, "imap_scale": 3,
           "smtp_filter": 2, "imap_fts": 3, "curves": 7}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, help="run only these workloads")
    parser.add_argument("--runs", type=int, default=3,
                        help="alternating runs per side (medians over them; default 3)")
    parser.add_argument("--messages", type=int, default=2000,
                        help="messages per smtp-source load (default 2000, as issue 10 says)")
    parser.add_argument("--scale-messages", type=int, default=100_000,
                        help="size of the scale and full-text workloads' mailbox (default 100000)")
    parser.add_argument("--idle", type=int, default=5000,
                        help="IDLE connections for the memory figure (default 5000)")
    parser.add_argument("--budget", type=float, default=20 * 60,
                        help="seconds the whole run may take (default 1200)")
    parser.add_argument("--replicas", type=int, default=None,
                        help="override: processes of each Postroom front door (mta, msa, imap, "
                             "pop3) sharing its port, and Haraka's nodes (default: the shipped "
                             "defaults, one per core)")
    parser.add_argument("--quick", action="store_true",
                        help="the curves' small sizes (a functional check in a few minutes)")
    parser.add_argument("--curve", nargs="+", default=[], metavar="CURVE",
                        choices=("inbound", "imap_clients", "mailbox", "idle"),
                        help="run only these curves of the curves workload "
                             "(inbound, imap_clients, mailbox, idle)")
    parser.add_argument("--no-install", action="store_true", help="do not install peers")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    return parser.parse_args(argv)


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in ("ms",):
        return f"{value:.1f}"
    if unit in ("MiB", "KiB"):
        return f"{value:.1f}"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}"


def table(rows: list[Row], skipped: dict[str, str]) -> str:
    head = ("workload", "metric", "unit", "Postroom", "peer", "peer value", "ratio P/peer")
    lines = [head]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        lines.append((r.workload, r.metric, r.unit, fmt(r.postroom_median, r.unit), r.peer,
                      fmt(r.peer_median, r.unit), ratio))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
           for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for name, why in skipped.items():
        out.append(f"skipped {name}: {why}")
    return "\n".join(out)


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (timeout, CI) unwinds like Ctrl-C, so every peer and service we started stops
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = parse_args(argv)
    budget = Budget(args.budget)
    progress(f"postroom bench: budget {args.budget:.0f}s, {args.runs} alternating run(s) per side")
    from postroom_suite import installed_services

    services = installed_services()
    progress(f"postroom services installed: {', '.join(sorted(services))}")
    peers_missing: dict[str, str | None] = {}
    if not args.no_install:
        from peers.install import ensure_all

        progress("checking peers (postfix, smtp-source, dovecot imap/lmtp, swaks, Haraka)")
        peers_missing = ensure_all()
        for peer, why in peers_missing.items():
            if why:
                progress(f"  {peer}: {why}")
    ctx = Context(budget=budget, runs=args.runs, messages=args.messages, services=services,
                  peers_missing=peers_missing, scale_messages=args.scale_messages,
                  idle_connections=args.idle, profile=not args.no_profile,
                  replicas=args.replicas, quick=args.quick, curves=tuple(args.curve),
                  # before workload 1: the machine's own load, none of the bench's yet
                  load_before=os.getloadavg()[0])
    progress(f"load average before the first workload: {ctx.load_before:.1f}")
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    todo = list(args.only or WORKLOADS)
    for index, name in enumerate(todo):
        weights = sum(WEIGHTS[n] for n in todo[index:])
        ctx.share = Budget(budget.left() * WEIGHTS[name] / weights)
        module = __import__(f"workloads.{name}", fromlist=["run"])
        if not budget.fits(30):
            skipped[name] = "time budget used up"
            progress(f"{module.TITLE}: skipped, time budget used up")
            continue
        progress(f"{module.TITLE}: starting ({ctx.share.total:.0f}s share of "
                 f"{budget.left():.0f}s left)")
        started = time.monotonic()
        try:
            got = module.run(ctx)
        except Skip as exc:
            skipped[name] = str(exc)
            progress(f"  skipped: {exc}")
            continue
        except Exception as exc:
            skipped[name] = f"failed: {say_error(exc)}"
            progress(f"  FAILED: {say_error(exc)}")
            traceback.print_exc(limit=4)
            continue
        rows.extend(got)
        progress(f"  done in {time.monotonic() - started:.0f}s")
    print()
    print(table(rows, skipped))
    for title, unit in (("CPU ms per message (utime+stime of every process, per message "
                         "delivered/accepted)", "msg"),
                        ("CPU ms per IMAP operation (utime+stime of every process, per "
                         "operation done)", "op")):
        text = cpu.table(title, [f for f in ctx.cpu if f.unit == unit])
        if text:
            print()
            print(text)
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d")
    path = results / f"{stamp}.json"
    if path.exists():
        path = results / f"{dt.datetime.now().strftime('%Y-%m-%d-%H%M%S')}.json"
    path.write_text(json.dumps({
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "args": vars(args), "services": sorted(services), "load1_before": ctx.load_before,
        "rows": [r.as_dict() for r in rows], "skipped": skipped, "extras": ctx.extras,
        "cpu": [f.as_dict() for f in ctx.cpu],
        "elapsed_s": round(args.budget - budget.left(), 1),
    }, indent=2, default=str))
    progress(f"results written to {path.relative_to(BENCH.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
