"""Measure the spool group commit's effect: mta CPU and PostgreSQL commits per message.

Runs the dmarc service and an mta (``postroom_mta.main:SERVICE``, as the tests do) on a
fresh database and a null DNS server, sends a warm-up and then ``-m`` messages with
smtp-source (``-s`` sessions, 2 KB each), and reports, for the measured load only:

* the CPU of the mta's process tree (its parent and workers: utime + stime from
  /proc/PID/stat, reaped children included) per message,
* the CPU of the PostgreSQL backends serving the database, per message,
* PostgreSQL commits per message (``pg_stat_database.xact_commit`` of the database,
  read after the services stopped so every backend has flushed its counts; it includes
  the dmarc service's and the start-up's transactions, the same in every mode),
* the mta's own spool commits per message spooled (``postroom_spool_commits_total`` over
  ``postroom_spool_commit_messages_sum``, every worker's summed) when it exports them.

``--mode on`` / ``off`` set POSTROOM_SPOOL_GROUP_COMMIT (default / 1); ``--code DIR``
runs the mta from another tree (e.g. ``git archive`` of the commit before group commit)
for a true "before". CPU figures hold on a loaded machine; wall-clock ones do not.

    .venv/bin/python scripts/measure_group_commit.py --mode on -m 2000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import cpu, proctools  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

DOMAIN = "gcbench.test"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("on", "off"), default="on")
    parser.add_argument("--code", type=Path, help="run the mta from this source tree")
    parser.add_argument("-m", type=int, default=2000, help="messages measured")
    parser.add_argument("-s", type=int, default=20, help="concurrent sessions")
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()

    with proctools.inbound_rig("gcbench", DOMAIN) as rig:
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
        dmarc = proctools.start_service("dmarc", dmarc_env, None, work / "dmarc.log")
        procs.append(dmarc)
        mta_env = {**common, "POSTROOM_MTA_LISTEN": f"tcp:{mta_port}:interface=127.0.0.1",
                   "POSTROOM_HTTP_LISTEN": f"tcp:{mta_http}:interface=127.0.0.1",
                   "POSTROOM_DMARC_URL": f"http://127.0.0.1:{dmarc_port}"}
        if args.mode == "off":
            mta_env["POSTROOM_SPOOL_GROUP_COMMIT"] = "1"
        mta = proctools.start_service("mta", mta_env, args.code, work / "mta.log")
        procs.append(mta)
        proctools.wait_healthy(dmarc_http, dmarc)
        proctools.wait_healthy(mta_http, mta)
        proctools.smtp_source(mta_port, args.warmup, args.s, f"u0@{DOMAIN}")
        cpu0, pg0 = cpu.tree_seconds(mta.pid), cpu.backend_seconds(admin, dbname)
        started = time.monotonic()
        proctools.smtp_source(mta_port, args.m, args.s, f"u0@{DOMAIN}")
        wall = time.monotonic() - started
        cpu1, pg1 = cpu.tree_seconds(mta.pid), cpu.backend_seconds(admin, dbname)
        metrics = proctools.scrape_metrics(mta_http)
        spool_commits = proctools.metric_total(metrics, "postroom_spool_commits_total")
        spooled_msgs = proctools.metric_sum(metrics, "postroom_spool_commit_messages_sum")
        with admin.connect() as conn:
            spooled = int(conn.execute(text("SELECT count(*) FROM spool_messages")).scalar_one())
        total_commits = proctools.stop_then_commits(procs, admin, url, dbname)
        pg_cpu = sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items())
        result = {
            "mode": args.mode if args.code is None else f"code:{args.code}",
            "sessions": args.s, "messages": args.m, "warmup": args.warmup,
            "spooled": spooled,
            "mta_cpu_ms_per_msg": round((cpu1 - cpu0) * 1000 / args.m, 3),
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
