"""Measure inbound latency at one SMTP session: wall per message and where the client waits.

Runs the dmarc service and an mta (``postroom_mta.main:SERVICE``) on a fresh database and
a null DNS server (bench.proctools.inbound_rig, as scripts/measure_group_commit.py), then
``-s`` sessions (default 1) each send their share of ``-m`` messages over one connection
(MAIL, RCPT, DATA, the ~1 KB message of the scale curves, bench/workloads/curves.py), and
reports, for the measured messages only:

* wall ms per message at that session count (the curves' msg/s is its inverse at 1),
* the client's median wait for each reply (MAIL, RCPT, DATA's 354, the end of DATA's 250),
* CPU ms per message of the mta's and the dmarc service's process trees and of the
  PostgreSQL backends (utime + stime from /proc/PID/stat).

``--code DIR`` runs both services from another tree (main's checkout for an A/B pair).

    .venv/bin/python scripts/measure_single_session.py -m 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # bench/workloads import their siblings by name

from bench import cpu, proctools  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from workloads.curves import read_reply  # noqa: E402

DOMAIN = "single.test"
PHASES = ("mail", "rcpt", "data", "end")


def message(n: int) -> bytes:
    body = ("lorem ipsum dolor sit amet " * 3 + "\r\n") * 12
    return (f"From: Sender <sender{n % 97}@src.test>\r\nTo: <u0@{DOMAIN}>\r\n"
            f"Subject: report {n}\r\nMessage-ID: <{n}.single@src.test>\r\n\r\n"
            f"Message number {n}.\r\n{body}.\r\n").encode()


async def _session(port: int, count: int, first: int, waits: dict[str, list[float]]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await read_reply(reader)
        writer.write(b"EHLO single.bench.test\r\n")
        await read_reply(reader)
        for n in range(first, first + count):
            for phase, line, wanted in (("mail", b"MAIL FROM:<s@src.test>\r\n", 250),
                                        ("rcpt", f"RCPT TO:<u0@{DOMAIN}>\r\n".encode(), 250),
                                        ("data", b"DATA\r\n", 354), ("end", message(n), 250)):
                started = time.perf_counter()
                writer.write(line)
                code = await read_reply(reader)
                waits[phase].append(time.perf_counter() - started)
                if code != wanted:
                    raise ConnectionError(f"{phase}: {code}")
        writer.write(b"QUIT\r\n")
        await read_reply(reader)
    finally:
        writer.close()


def load(port: int, messages: int, sessions: int) -> tuple[float, dict[str, list[float]]]:
    waits: dict[str, list[float]] = {p: [] for p in PHASES}
    shares = [messages // sessions + (1 if i < messages % sessions else 0)
              for i in range(sessions)]

    async def main() -> None:
        await asyncio.gather(*(_session(port, n, i * 1_000_000 + int(time.time()) % 100_000,
                                        waits) for i, n in enumerate(shares)))

    started = time.monotonic()
    asyncio.run(main())
    return time.monotonic() - started, waits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", type=Path, help="run the services from this source tree")
    parser.add_argument("-m", type=int, default=1000, help="messages measured")
    parser.add_argument("-s", type=int, default=1, help="concurrent sessions")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--env", action="append", default=[], help="K=V for the mta")
    args = parser.parse_args()
    with proctools.inbound_rig("single", DOMAIN) as rig:
        measure(args, rig)


def measure(args: argparse.Namespace, rig: proctools.Rig) -> None:
    from sqlalchemy import create_engine

    procs: list[subprocess.Popen[bytes]] = []
    admin = create_engine(rig.url)
    try:
        dmarc_port, dmarc_http, mta_port, mta_http = (free_port() for _ in range(4))
        dmarc = proctools.start_service("dmarc", {
            **rig.env, "POSTROOM_DMARC_LISTEN": f"tcp:{dmarc_port}:interface=127.0.0.1",
            "POSTROOM_HTTP_LISTEN": f"tcp:{dmarc_http}:interface=127.0.0.1",
            "POSTROOM_DMARC_REPORTS": "false"}, args.code, rig.work / "dmarc.log")
        procs.append(dmarc)
        mta = proctools.start_service("mta", {
            **rig.env, "POSTROOM_MTA_LISTEN": f"tcp:{mta_port}:interface=127.0.0.1",
            "POSTROOM_HTTP_LISTEN": f"tcp:{mta_http}:interface=127.0.0.1",
            "POSTROOM_DMARC_URL": f"http://127.0.0.1:{dmarc_port}",
            **dict(kv.split("=", 1) for kv in args.env)}, args.code, rig.work / "mta.log")
        procs.append(mta)
        proctools.wait_healthy(dmarc_http, dmarc)
        proctools.wait_healthy(mta_http, mta)
        load(mta_port, args.warmup, args.s)
        mta0, dmarc0 = cpu.tree_seconds(mta.pid), cpu.tree_seconds(dmarc.pid)
        pg0 = cpu.backend_seconds(admin, rig.dbname)
        wall, waits = load(mta_port, args.m, args.s)
        mta1, dmarc1 = cpu.tree_seconds(mta.pid), cpu.tree_seconds(dmarc.pid)
        pg1 = cpu.backend_seconds(admin, rig.dbname)
        pg = sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items())
        per = 1000 / args.m
        print(json.dumps({
            "code": str(args.code or REPO), "sessions": args.s, "messages": args.m,
            "wall_ms_per_msg": round(wall * per, 3), "msg_per_s": round(args.m / wall, 1),
            **{f"{p}_wait_ms_p50": round(1000 * statistics.median(w), 3)
               for p, w in waits.items()},
            "end_wait_ms_p99": round(1000 * sorted(waits["end"])[int(0.99 * len(waits["end"]))],
                                     3),
            "mta_cpu_ms": round((mta1 - mta0) * per, 3),
            "dmarc_cpu_ms": round((dmarc1 - dmarc0) * per, 3),
            "pg_cpu_ms": round(pg * per, 3)}))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        admin.dispose()


if __name__ == "__main__":
    main()
