"""Measure the port-25 front door (accept only): mta and dmarc CPU per message.

A copy of scripts/measure_group_commit.py whose ``--code DIR`` runs the dmarc service from
that tree as well (its API changes with the mta), which reports the dmarc service's CPU,
and whose ``--profile DIR`` records both with ``py-spy record --gil`` during the load.

Its figures (CPU per message of the mta tree, the dmarc tree and the database's PostgreSQL
backends; commits per message; wall time, which holds only on a quiet machine) are read as
that script's docstring describes; the set-up and the helpers are shared
(bench/proctools.py, bench/cpu.py).

    .venv/bin/python scripts/measure_front_doors.py -m 2000 [--code DIR] [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import cpu, proctools  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

DOMAIN = "fdbench.test"


def listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table["ListenOverflows"])
    return 0


async def _one_session(port: int, latencies: list[float]) -> None:
    import asyncio
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return line

    await reply()
    head = (f"From: <loadgen@src.test>\r\nTo: <u0@{DOMAIN}>\r\nSubject: burst\r\n"
            f"Message-ID: <{time.monotonic_ns()}.{id(latencies)}@src.test>\r\n\r\n").encode()
    for command in (b"EHLO burst.test", b"MAIL FROM:<loadgen@src.test>",
                    f"RCPT TO:<u0@{DOMAIN}>".encode(), b"DATA"):
        writer.write(command + b"\r\n")
        await reply()
    writer.write(head + (b"x" * 70 + b"\r\n") * 28 + b".\r\n")
    answer = await reply()
    latencies.append(time.monotonic() - started if answer.startswith(b"250") else float("inf"))
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()


def burst(port: int, sessions: int) -> dict[str, float]:
    """``sessions`` clients connect at once, each sends one message: seconds from connect to
    the 250, by percentile (a refused or failed one counts as infinite)."""
    import asyncio

    async def run() -> list[float]:
        latencies: list[float] = []
        results = await asyncio.gather(
            *(asyncio.wait_for(_one_session(port, latencies), 60) for _ in range(sessions)),
            return_exceptions=True)
        latencies += [float("inf") for r in results if isinstance(r, BaseException)]
        return sorted(latencies)

    latencies = asyncio.run(run())
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3)  # noqa: E731
    return {"p50_s": pick(0.5), "p90_s": pick(0.9), "p99_s": pick(0.99), "max_s": latencies[-1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("on", "off"), default="on")
    parser.add_argument("--code", type=Path, help="run the mta from this source tree")
    parser.add_argument("-m", type=int, default=2000, help="messages measured")
    parser.add_argument("-s", type=int, default=20, help="concurrent sessions")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--burst", type=int, default=0,
                        help="instead of smtp-source: this many sessions at once, latencies")
    parser.add_argument("--rounds", type=int, default=3, help="bursts, with --burst")
    parser.add_argument("--env", action="append", default=[], help="K=V for the mta")
    parser.add_argument("--processes", type=int, default=2, help="mta processes")
    parser.add_argument("--profile", type=Path, help="py-spy --gil flame SVGs into this directory")
    parser.add_argument("-l", type=int, default=2048, help="message size, bytes")
    args = parser.parse_args()

    with proctools.inbound_rig("fdbench", DOMAIN) as rig:
        measure(args, rig)


def measure(args: argparse.Namespace, rig: proctools.Rig) -> None:
    url, dbname, work, common = rig.url, rig.dbname, rig.work, rig.env
    procs: list[subprocess.Popen] = []
    admin = create_engine(url)
    try:
        dmarc_port, dmarc_http, mta_port, mta_http = (free_port() for _ in range(4))
        dmarc_env = {**common, "POSTROOM_DMARC_LISTEN": f"tcp:{dmarc_port}:interface=127.0.0.1",
                     "POSTROOM_HTTP_LISTEN": f"tcp:{dmarc_http}:interface=127.0.0.1",
                     "POSTROOM_DMARC_REPORTS": "false"}
        dmarc = proctools.start_service("dmarc", dmarc_env, args.code, work / "dmarc.log")
        procs.append(dmarc)
        mta_env = {**common, "POSTROOM_MTA_LISTEN": f"tcp:{mta_port}:interface=127.0.0.1",
                   "POSTROOM_HTTP_LISTEN": f"tcp:{mta_http}:interface=127.0.0.1",
                   "POSTROOM_DMARC_URL": f"http://127.0.0.1:{dmarc_port}",
                   # the shipped default on this 2-core machine (docs/decisions/0017)
                   "POSTROOM_PROCESSES": str(args.processes)}
        mta_env.update(item.split("=", 1) for item in args.env)
        if args.mode == "off":
            mta_env["POSTROOM_SPOOL_GROUP_COMMIT"] = "1"
        mta = proctools.start_service("mta", mta_env, args.code, work / "mta.log")
        procs.append(mta)
        proctools.wait_healthy(dmarc_http, dmarc)
        proctools.wait_healthy(mta_http, mta)
        proctools.smtp_source(mta_port, args.warmup, args.s, f"u0@{DOMAIN}", args.l)
        if args.burst:
            rounds = []
            for _ in range(args.rounds):
                overflows = listen_overflows()
                rounds.append({**burst(mta_port, args.burst),
                               "listen_overflows": listen_overflows() - overflows})
                time.sleep(1.0)
            print(json.dumps({"env": args.env, "code": str(args.code), "burst": args.burst,
                              "rounds": rounds}))
            return
        spies = []
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            for name, proc in (("mta", mta), ("dmarc", dmarc)):
                spies.append(subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--gil",
                     "--subprocesses", "-r", "200",
                     "-f", "raw", "-o", str(args.profile / f"{name}.txt"), "-p", str(proc.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.0)
        cpu0, pg0 = cpu.tree_seconds(mta.pid), cpu.backend_seconds(admin, dbname)
        dcpu0 = cpu.tree_seconds(dmarc.pid)
        started = time.monotonic()
        proctools.smtp_source(mta_port, args.m, args.s, f"u0@{DOMAIN}", args.l)
        wall = time.monotonic() - started
        cpu1, pg1 = cpu.tree_seconds(mta.pid), cpu.backend_seconds(admin, dbname)
        dcpu1 = cpu.tree_seconds(dmarc.pid)
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(60)
        metrics = proctools.scrape_metrics(mta_http)
        spool_commits = proctools.metric_total(metrics, "postroom_spool_commits_total")
        spooled_msgs = proctools.metric_sum(metrics, "postroom_spool_commit_messages_sum")
        with admin.connect() as conn:
            spooled = int(conn.execute(text("SELECT count(*) FROM spool_messages")).scalar_one())
        total_commits = proctools.stop_then_commits(procs, admin, url, dbname)
        pg_cpu = sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items())
        result = {
            "mode": args.mode if args.code is None else f"code:{args.code}",
            "sessions": args.s, "messages": args.m, "size": args.l, "warmup": args.warmup,
            "spooled": spooled,
            "mta_cpu_ms_per_msg": round((cpu1 - cpu0) * 1000 / args.m, 3),
            "dmarc_cpu_ms_per_msg": round((dcpu1 - dcpu0) * 1000 / args.m, 3),
            "pg_backend_cpu_ms_per_msg": round(pg_cpu * 1000 / args.m, 3),
            "pg_commits_per_msg_whole_run": round(total_commits / (args.m + args.warmup), 3),
            "mta_spool_commits_per_msg_whole_run": (
                round(spool_commits / spooled_msgs, 3) if spooled_msgs is not None else None),
            "wall_s_loaded_machine": round(wall, 1),
        }
        print(json.dumps(result))
    finally:
        for proc in procs:
            proc.kill()


if __name__ == "__main__":
    main()
