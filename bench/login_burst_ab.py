"""A burst of first logins against a running imap, two code versions side by side (issue 23).

While ``--burst`` new accounts (never logged in) log in at once (imaplib, plaintext LOGIN on
loopback, one thread each), ``--steady`` clients already logged in send NOOP and SELECT INBOX
in a loop; reported per block: the p50/p99 of those cheap commands during the burst, how
long the burst took, the imap tree's CPU, and the most and mean `db` connections 'idle in
transaction' (pg_stat_activity of the side's application_name, sampled every 10 ms).
With ``--base COMMIT`` a second imap group runs that commit's tree on the same database
(own accounts, own Redis prefix); the sides alternate (A B, then B A).

    .venv/bin/python bench/login_burst_ab.py --base HEAD~3 --burst 200 --rounds 3
"""

from __future__ import annotations

import argparse
import imaplib
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cpu
import proctools
from common import progress, raise_nofile
from postroom_suite import PASSWORD, PostroomSuite


def _steady(port: int, user: str, stop: threading.Event, ready: threading.Barrier,
            out: list[float]) -> None:
    client = imaplib.IMAP4("127.0.0.1", port)
    client.login(user, PASSWORD)
    ready.wait()
    n = 0
    while not stop.is_set():
        start = time.perf_counter()
        if n % 2:
            client.noop()
        else:
            client.select("INBOX")
        out.append((time.perf_counter() - start) * 1000)
        n += 1
    client.logout()


def _first_login(port: int, user: str, go: threading.Event, errors: list[str]) -> None:
    try:
        client = imaplib.IMAP4("127.0.0.1", port, timeout=120)
        go.wait()
        client.login(user, PASSWORD)
        client.logout()
    except Exception as exc:
        errors.append(str(exc)[:80])


def _sample(suite: PostroomSuite, appname: str, stop: threading.Event,
            out: list[int]) -> None:
    with suite.engine().connect() as conn:
        while not stop.is_set():
            out.append(int(conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %(a)s "
                "AND state = 'idle in transaction'", {"a": appname}).scalar_one()))
            conn.commit()
            time.sleep(0.01)


def _block(suite: PostroomSuite, port: int, root: int, appname: str, steady: list[str],
           burst: list[str]) -> dict[str, float]:
    stop, go = threading.Event(), threading.Event()
    ready = threading.Barrier(len(steady) + 1)
    lat: list[list[float]] = [[] for _ in steady]
    errors: list[str] = []
    runners = [threading.Thread(target=_steady, args=(port, u, stop, ready, lat[i]))
               for i, u in enumerate(steady)]
    for t in runners:
        t.start()
    ready.wait()
    logins = [threading.Thread(target=_first_login, args=(port, u, go, errors)) for u in burst]
    for t in logins:
        t.start()
    time.sleep(1.0)  # connected, greeted; the steady clients run
    for each in lat:
        each.clear()
    samples: list[int] = []
    stop_sample = threading.Event()
    sampler = threading.Thread(target=_sample, args=(suite, appname, stop_sample, samples))
    sampler.start()
    before = cpu.ticks([root], children=True)
    start = time.perf_counter()
    go.set()
    for t in logins:
        t.join()
    took = time.perf_counter() - start
    after = cpu.ticks([root], children=True)
    stop.set()
    stop_sample.set()
    for t in [*runners, sampler]:
        t.join()
    cmds = sorted(x for each in lat for x in each)
    q = statistics.quantiles(cmds, n=100) if len(cmds) > 2 else [0.0] * 99
    return {"burst_s": took, "p50": q[49], "p99": q[98], "cmds": len(cmds),
            "idle_tx_max": max(samples or [0]), "idle_tx_mean": statistics.fmean(samples or [0]),
            "imap_cpu_s": (after - before) / cpu.TICKS, "errors": len(errors)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--steady", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base", required=True, help="commit of the other side")
    parser.add_argument("--processes", type=int, default=0, help="imap processes (0: cores)")
    args = parser.parse_args()
    raise_nofile(4 * args.burst + 4096)
    sides = ["new", "base"]
    per_side = args.steady + args.rounds * args.burst
    env = {"POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK": "true", "PGAPPNAME": "imap-new"}
    with PostroomSuite(["imap"], users=per_side * 2, extra_env=env,
                       replicas=args.processes or None) as suite:
        users = [suite.user(n) for n in range(per_side * 2)]
        accounts = {s: users[i * per_side:(i + 1) * per_side] for i, s in enumerate(sides)}
        base, port = proctools.base_imap(suite, args.base, suite.processes("imap"))
        try:
            base.wait_healthy()
            ports = {"new": suite.ports["imap"], "base": port}
            roots = {"new": suite.pid("imap"), "base": base.pid}
            results: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
            for r in range(args.rounds):
                for side in (sides if r % 2 == 0 else sides[::-1]):
                    mine = accounts[side]
                    burst = mine[args.steady + r * args.burst:args.steady + (r + 1) * args.burst]
                    got = _block(suite, ports[side], roots[side], f"imap-{side}",
                                 mine[:args.steady], burst)
                    results[side].append(got)
                    progress(f"round {r} {side}: " + ", ".join(
                        f"{k} {v:.2f}" for k, v in got.items()))
            print("medians:")
            for side in sides:
                med = {k: statistics.median(b[k] for b in results[side])
                       for k in results[side][0]}
                print(f"  {side}: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
        finally:
            base.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
