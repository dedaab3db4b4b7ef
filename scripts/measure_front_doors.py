"""Measure the port-25 front door (accept only): mta and dmarc CPU per message.

A copy of scripts/measure_group_commit.py whose ``--code DIR`` runs the dmarc service from
that tree as well (its API changes with the mta), which reports the dmarc service's CPU,
and whose ``--profile DIR`` records both with ``py-spy record --gil`` during the load.

The original's description:

Runs the dmarc service and an mta (``postroom_mta.main:SERVICE``, as the tests do) on a
fresh database and a null DNS server, sends a warm-up and then ``-m`` messages with
smtp-source (``-s`` sessions, 2 KB each), and reports, for the measured load only:

* the mta process's CPU (utime + stime from /proc/PID/stat) per message,
* the CPU of the PostgreSQL backends serving the database, per message,
* PostgreSQL commits per message (``pg_stat_database.xact_commit`` of the database,
  read after the services stopped so every backend has flushed its counts; it includes
  the dmarc service's and the start-up's transactions, the same in every mode),
* the mta's own spool commits (``postroom_spool_commits_total``) when it exports them.

``--mode on`` / ``off`` set POSTROOM_SPOOL_GROUP_COMMIT (default / 1); ``--code DIR``
runs the mta from another tree (e.g. ``git archive`` of the commit before group commit)
for a true "before". CPU figures hold on a loaded machine; wall-clock ones do not.

    .venv/bin/python scripts/measure_group_commit.py --mode on -m 2000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import cpu  # noqa: E402
from tests.support.db import create_test_database, drop_test_database  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
DOMAIN = "fdbench.test"


def tree_seconds(pid: int) -> float:
    """CPU of a service and the worker processes it forked (POSTROOM_PROCESSES), reaped ones too."""
    stats = cpu.all_stats()
    return cpu.tree_ticks([pid], stats) / TICK


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def backend_cpu(engine, dbname: str) -> dict[int, float]:
    with engine.connect() as conn:
        pids = [r[0] for r in conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": dbname})]
    out = {}
    for pid in pids:
        try:
            out[pid] = cpu_seconds(pid)
        except OSError:
            pass
    return out


def commits(engine, dbname: str) -> int:
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(conn.execute(text(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = :d"),
            {"d": dbname}).scalar_one())


def start(name: str, env: dict[str, str], code: Path | None, log: Path) -> subprocess.Popen:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    paths = [str(REPO)]
    if code is not None:
        paths = [str(code / "shared"), *(str(p) for p in sorted((code / "services").iterdir())),
                 *paths]
    child_env["PYTHONPATH"] = os.pathsep.join(paths)
    child_env.update(env)
    argv = [sys.executable, "-c", "import sys; from postroom.runtime import run_service; "
            "sys.exit(run_service(sys.argv[1]))", f"postroom_{name}.main:SERVICE"]
    return subprocess.Popen(argv, env=child_env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("not healthy")


SIZE = 2048


def smtp_source(port: int, messages: int, sessions: int) -> None:
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(SIZE),
                    "-f", "loadgen@src.test", "-t", f"u0@{DOMAIN}", f"127.0.0.1:{port}"],
                   check=True, timeout=900)


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
    global SIZE
    SIZE = args.l

    from postroom.auth.passwords import hash_password
    from postroom.store import domains, users
    from postroom.store.db import Database
    from postroom.store.migrate import upgrade

    url = create_test_database("postroom_fdbench_")
    dbname = url.rsplit("/", 1)[1]
    work = Path(tempfile.mkdtemp(prefix="fdbench-"))
    procs: list[subprocess.Popen] = []
    dns = subprocess.Popen([sys.executable, str(REPO / "bench" / "dnsnull.py"),
                            str(dns_port := free_port())], stdout=subprocess.PIPE)
    assert dns.stdout is not None and b"ready" in dns.stdout.readline()
    admin = create_engine(url)
    try:
        upgrade(url)
        db = Database(url, pool_size=1)
        db.run_sync(domains.add_domain, DOMAIN)
        db.run_sync(users.add_user, f"u0@{DOMAIN}", "a long password 1",
                    hash_fn=lambda p: hash_password(p, ln=4))
        db.dispose()
        from postroom.net.tls import make_self_signed
        make_self_signed(work / "cert.pem", work / "key.pem", f"mx.{DOMAIN}")
        prefix = f"fdbench:{os.getpid()}:"
        common = {"POSTROOM_DATABASE_URL": url, "POSTROOM_REDIS_URL": "redis://127.0.0.1:6379/0",
                  "POSTROOM_REDIS_PREFIX": prefix, "POSTROOM_HOSTNAME": f"mx.{DOMAIN}",
                  "POSTROOM_DNS_SERVERS": f"127.0.0.1:{dns_port}", "POSTROOM_LOG_LEVEL": "warning",
                  "POSTROOM_TLS_CERT_FILE": str(work / "cert.pem"),
                  "POSTROOM_TLS_KEY_FILE": str(work / "key.pem")}
        dmarc_port, dmarc_http, mta_port, mta_http = (free_port() for _ in range(4))
        dmarc_env = {**common, "POSTROOM_DMARC_LISTEN": f"tcp:{dmarc_port}:interface=127.0.0.1",
                     "POSTROOM_HTTP_LISTEN": f"tcp:{dmarc_http}:interface=127.0.0.1",
                     "POSTROOM_DMARC_REPORTS": "false"}
        dmarc = start("dmarc", dmarc_env, args.code, work / "dmarc.log")
        procs.append(dmarc)
        mta_env = {**common, "POSTROOM_MTA_LISTEN": f"tcp:{mta_port}:interface=127.0.0.1",
                   "POSTROOM_HTTP_LISTEN": f"tcp:{mta_http}:interface=127.0.0.1",
                   "POSTROOM_DMARC_URL": f"http://127.0.0.1:{dmarc_port}",
                   # the shipped default on this 2-core machine (docs/decisions/0017)
                   "POSTROOM_PROCESSES": str(args.processes)}
        mta_env.update(item.split("=", 1) for item in args.env)
        if args.mode == "off":
            mta_env["POSTROOM_SPOOL_GROUP_COMMIT"] = "1"
        mta = start("mta", mta_env, args.code, work / "mta.log")
        procs.append(mta)
        wait_healthy(dmarc_http, dmarc)
        wait_healthy(mta_http, mta)
        smtp_source(mta_port, args.warmup, args.s)
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
        cpu0, pg0 = tree_seconds(mta.pid), backend_cpu(admin, dbname)
        dcpu0 = tree_seconds(dmarc.pid)
        started = time.monotonic()
        smtp_source(mta_port, args.m, args.s)
        wall = time.monotonic() - started
        cpu1, pg1 = tree_seconds(mta.pid), backend_cpu(admin, dbname)
        dcpu1 = tree_seconds(dmarc.pid)
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(60)
        with urllib.request.urlopen(f"http://127.0.0.1:{mta_http}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        spool_commits = sum(float(v) for v in re.findall(
            r"^postroom_spool_commits_total\{[^}]*\} (\S+)", metrics, re.MULTILINE))
        spooled_msgs = re.search(r"^postroom_spool_commit_messages_sum (\S+)", metrics,
                                 re.MULTILINE)
        with admin.connect() as conn:
            spooled = int(conn.execute(text("SELECT count(*) FROM spool_messages")).scalar_one())
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        procs.clear()
        admin.dispose()
        time.sleep(1.5)  # backends flush their statistics as they exit
        reader = create_engine(url)
        total_commits = commits(reader, dbname)
        reader.dispose()
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
                round(spool_commits / float(spooled_msgs.group(1)), 3) if spooled_msgs else None),
            "wall_s_loaded_machine": round(wall, 1),
        }
        print(json.dumps(result))
    finally:
        for proc in procs:
            proc.kill()
        dns.kill()
        drop_test_database(url)
        import redis
        from tests.support.redisdb import delete_prefix
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        delete_prefix(client, f"fdbench:{os.getpid()}:")
        client.close()
        if os.environ.get("KEEP") is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(work)


if __name__ == "__main__":
    main()
