"""Measure group delivery in the mda (docs/decisions/0022): mda and PostgreSQL CPU per message.

Spools ``-m`` distinct messages of ``--size`` bytes (2 KB; one recipient each, spread
over ``--users`` accounts) on a fresh database while no mda runs, starts one mda
(``postroom_mda.main:SERVICE``, as the tests do), enqueues every entry at once (a backlog,
as under a burst of inbound mail) and waits until all are delivered. Reports, for the
delivery only:

* the mda process's CPU (utime + stime from /proc/PID/stat) per message,
* the CPU of the PostgreSQL backends serving the database (this script's own polling
  connection left out), per message,
* the mda's delivery transactions per message (``postroom_delivery_commits_total`` and
  the alone deliveries: ``--group 1`` has no groups, one transaction per message),
* the mda process's peak resident memory (VmHWM), to see what ``--concurrency`` costs.

``--group N`` sets POSTROOM_MDA_GROUP_COMMIT (1: off, each recipient alone); ``--code DIR``
runs the mda from another tree. CPU figures hold on a loaded machine; wall-clock ones do not.

    .venv/bin/python scripts/measure_mda_group.py --group 64 -m 2000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import cpu, proctools  # noqa: E402
from tests.support.db import create_test_database, drop_test_database  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

DOMAIN = "mdabench.test"


def message(n: int, size: int = 2048) -> bytes:
    head = (f"From: Sender {n} <s{n}@remote.test>\r\nTo: u@{DOMAIN}\r\n"
            f"Subject: bench message {n}\r\nMessage-ID: <{n}.{time.time_ns()}@remote.test>\r\n"
            "Date: Mon, 07 Dec 2026 15:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n")
    line = f"line of message {n}, some words to index and search later on. "
    body = (line * (size // len(line) + 1))[:size - len(head)]
    return (head + "\r\n".join(body[i:i + 70] for i in range(0, len(body), 70)) + "\r\n").encode()


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM from /proc/PID/status), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--code", type=Path, help="run the mda from this source tree")
    parser.add_argument("-m", type=int, default=2000, help="messages measured")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=10,
                        help="POSTROOM_MDA_CONCURRENCY (10: the default before issue 23's 32)")
    parser.add_argument("--size", type=int, default=2048, help="bytes per message")
    args = parser.parse_args()

    import redis
    from tests.support.redisdb import delete_prefix

    from postroom.auth.passwords import hash_password
    from postroom.queue.envelope import Envelope
    from postroom.queue.streams import QueueClient
    from postroom.store import domains, spool, users
    from postroom.store.db import Database
    from postroom.store.migrate import upgrade

    url = create_test_database("postroom_mdabench_")
    dbname = url.rsplit("/", 1)[1]
    prefix = f"mdabench:{os.getpid()}:"
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    mda = None
    try:
        upgrade(url)
        db = Database(url, pool_size=1)
        db.run_sync(domains.add_domain, DOMAIN)
        for i in range(args.users):
            db.run_sync(users.add_user, f"u{i}@{DOMAIN}", "a long password 1",
                        hash_fn=lambda p: hash_password(p, ln=4))
        now = datetime.now(UTC)
        envelopes = []
        for n in range(args.m):
            data = message(n, args.size)
            qid, ids = db.run_sync(spool.create_spool_ids, kind="inbound",
                                   mail_from=f"s{n}@remote.test",
                                   recipients=[(f"u{n % args.users}@{DOMAIN}", "deliver",
                                                None, None)],
                                   message=data, size=len(data), enqueued_at=now)
            envelopes.append(Envelope(qid, tuple(ids), "deliver"))
        db.dispose()
        http = free_port()
        env = {"POSTROOM_DATABASE_URL": url, "POSTROOM_REDIS_URL": "redis://127.0.0.1:6379/0",
               "POSTROOM_REDIS_PREFIX": prefix, "POSTROOM_HOSTNAME": f"mx.{DOMAIN}",
               "POSTROOM_LOG_LEVEL": "warning", "POSTROOM_QUEUE_CLAIM_IDLE": "30m",
               "POSTROOM_HTTP_LISTEN": f"tcp:{http}:interface=127.0.0.1",
               "POSTROOM_MDA_CONCURRENCY": str(args.concurrency),
               **({} if args.code else {"POSTROOM_MDA_GROUP_COMMIT": str(args.group)})}
        log = Path(tempfile.gettempdir()) / f"mdabench-{os.getpid()}.log"
        mda = proctools.start_service("mda", env, args.code, log)
        proctools.wait_healthy(http, mda)
        admin = create_engine(url, pool_size=1)
        with admin.connect() as conn:
            me = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            cpu0, pg0 = cpu.own_seconds(mda.pid), cpu.backend_seconds(admin, dbname, me)
            queue = QueueClient(client, prefix)
            for i in range(0, len(envelopes), 200):
                queue.enqueue_many(envelopes[i:i + 200])
            while True:
                done = int(conn.execute(text(
                    "SELECT count(*) FROM spool_recipients WHERE state = 'delivered'"))
                    .scalar_one())
                conn.rollback()
                if done >= args.m:
                    break
                if mda.poll() is not None:
                    raise RuntimeError("mda exited")
                time.sleep(0.5)
            time.sleep(1.0)  # the last acknowledgements
            cpu1, pg1 = cpu.own_seconds(mda.pid), cpu.backend_seconds(admin, dbname, me)
        metrics = proctools.scrape_metrics(http)
        group_commits = proctools.metric_total(metrics, "postroom_delivery_commits_total")
        grouped = proctools.metric_sum(metrics, "postroom_delivery_commit_messages_sum")
        peak_rss = _peak_rss_mb(mda.pid)
        mda.send_signal(signal.SIGTERM)
        mda.wait(30)
        admin.dispose()
        pg_cpu = sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items())
        print(json.dumps({
            "group": args.group if args.code is None else f"code:{args.code}",
            "messages": args.m, "users": args.users, "concurrency": args.concurrency,
            "mda_cpu_ms_per_msg": round((cpu1 - cpu0) * 1000 / args.m, 3),
            "pg_backend_cpu_ms_per_msg": round(pg_cpu * 1000 / args.m, 3),
            "group_commits": group_commits,
            "messages_in_groups": grouped if grouped is not None else 0.0,
            "mda_peak_rss_mb": peak_rss,
        }))
    finally:
        if mda is not None and mda.poll() is None:
            mda.kill()
        drop_test_database(url)
        delete_prefix(client, prefix)
        client.close()


if __name__ == "__main__":
    main()
