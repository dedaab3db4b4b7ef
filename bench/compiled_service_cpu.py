"""CPU per message (mta, dmarc, mda) and per IMAP operation, pure Python against a compiled tree.

The service-level half of the mypyc measurement (bench/README.md, "mypyc"):
``bench/micro_compiled.py`` times the candidate modules alone; this runs the
services themselves, once with the installed (pure-Python) tree and once with
``--compiled DIR`` first on their PYTHONPATH (a copy of the sources with the
candidate modules built by mypyc), alternating, and reads utime+stime of each
service process from /proc/PID/stat around the load, which a loaded machine
barely moves. ``--profile`` also samples the pure-Python mta, mda and imap
with py-spy and prints the share of samples inside the candidate modules: the
most a compiler could take off.

    .venv/bin/python bench/compiled_service_cpu.py \\
        --compiled /tmp/mypyc/shared:/tmp/mypyc/services/imap:/tmp/mypyc/services/mta
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
from pathlib import Path

import micro_compiled
from common import REPO, progress
from postroom_suite import PostroomSuite
from workloads import imap_mix, mailgen, smtp_load

# the modules bench/micro_compiled.py compiles, as py-spy names their files
CANDIDATE_FILES = tuple(f for files in micro_compiled.GROUPS.values() for f in files)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def share_in_candidates(raw: str) -> float:
    """Percent of py-spy samples with a candidate module's frame anywhere in the stack."""
    total = inside = 0
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        total += int(count_s)
        if any(f in stack for f in CANDIDATE_FILES):
            inside += int(count_s)
    return 100.0 * inside / total if total else 0.0


def profile(suite: PostroomSuite, names: list[str], load: collections.abc.Callable[[], object]
            ) -> dict[str, float]:
    import profiling

    prof = profiling.Profiler({n: suite.pid(n) for n in names}).start()
    try:
        load()
    finally:
        prof.stop()
    return {n: share_in_candidates(prof.outputs[n].read_text(errors="replace")) for n in names}


def smtp_side(pythonpath: str | None, messages: int, do_profile: bool) -> dict[str, object]:
    env = {"PYTHONPATH": pythonpath} if pythonpath else {}
    with PostroomSuite(["dmarc", "mta", "mda"], extra_env=env) as suite:
        rcpt = suite.user(0)
        port = suite.ports["mta"]
        # warm up (connections, prepared statements, caches)
        smtp_load.load_and_wait(port, rcpt, 200, suite.delivered, timeout=300)
        pids = {n: suite.pid(n) for n in ("mta", "dmarc", "mda")}
        before = {n: cpu_seconds(p) for n, p in pids.items()}
        smtp_load.load_and_wait(port, rcpt, messages, suite.delivered, timeout=900)
        after = {n: cpu_seconds(p) for n, p in pids.items()}
        result: dict[str, object] = {
            n: 1000.0 * (after[n] - before[n]) / messages for n in pids}
        if do_profile:
            result["profile_share_pct"] = profile(
                suite, ["mta", "mda"],
                lambda: smtp_load.load_and_wait(port, rcpt, messages, suite.delivered, 900))
        return result


def imap_side(pythonpath: str | None, duration: float, do_profile: bool) -> dict[str, object]:
    env = {"PYTHONPATH": pythonpath} if pythonpath else {}
    env["POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK"] = "true"
    maildir = mailgen.make_maildir("mix", imap_mix.SEEDED)
    with PostroomSuite(["imap"], users=imap_mix.CLIENTS, extra_env=env) as suite:
        users = [suite.user(n) for n in range(imap_mix.CLIENTS)]
        mailgen.seed_postroom(maildir, users[0], suite.env, timeout=300)
        suite.clone_inbox(users[0], users[1:])
        port = suite.ports["imap"]
        imap_mix.load(port, users, 3.0)  # warm up (the LOGIN cache, the SELECT cache)
        pid = suite.pid("imap")
        before = cpu_seconds(pid)
        rate, _, _, errors = imap_mix.load(port, users, duration)
        spent = cpu_seconds(pid) - before
        # ops counted as the load counts them: rate x its elapsed time is close to duration
        ops = rate * duration
        result: dict[str, object] = {"imap": 1000.0 * spent / ops, "errors": errors}
        if do_profile:
            result["profile_share_pct"] = profile(
                suite, ["imap"], lambda: imap_mix.load(port, users, duration))
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compiled", help="PYTHONPATH holding the compiled copy")
    parser.add_argument("--runs", type=int, default=2, help="alternating runs per side")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of IMAP mix")
    parser.add_argument("--only", choices=("smtp", "imap"))
    parser.add_argument("--profile", action="store_true", help="py-spy the pure-Python side")
    args = parser.parse_args()
    sides: list[tuple[str, str | None]] = [("pure", None)]
    if args.compiled:
        sides.append(("compiled", args.compiled))
    figures: dict[tuple[str, str], dict[str, list[float]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for run in range(args.runs):
        for side, path in sides:
            profiled = args.profile and side == "pure" and run == 0
            for kind in ("smtp", "imap"):
                if args.only and kind != args.only:
                    continue
                progress(f"run {run + 1} {side} {kind}")
                out = (smtp_side(path, args.messages, profiled) if kind == "smtp"
                       else imap_side(path, args.duration, profiled))
                progress(f"  {out}")
                for key, value in out.items():
                    if isinstance(value, float):
                        figures[(side, kind)][key].append(value)
    print(f"CPU ms per message (smtp: mta, dmarc, mda) / per IMAP operation (imap), "
          f"median of {args.runs} (repo {REPO})")
    for (side, kind), values in sorted(figures.items()):
        shown = ", ".join(f"{k} {statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})"
                          for k, v in values.items())
        print(f"  {side:<9} {kind}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
