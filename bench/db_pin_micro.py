"""The store call alone, through the pool against on a pinned connection (decision 0029).

One process, no thread hop: `run_read`'s and `run_core_then`'s attempt on ``SELECT 1``,
alternating batches; CPU of this process (``time.process_time``) and of the PostgreSQL
backends it opened (``/proc`` ticks, found by application_name), per call.

    .venv/bin/python bench/db_pin_micro.py postgresql://postgres@127.0.0.1/postgres
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from sqlalchemy import text

APPNAME = "db-pin-micro"


def _ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def main() -> int:
    os.environ["PGAPPNAME"] = APPNAME
    from postroom.store.db import Database

    db = Database(sys.argv[1], pool_size=2)

    def one(session: object) -> object:
        return session.execute(text("SELECT 1")).scalar()  # type: ignore[attr-defined]

    ways = {"read, through the pool": db._attempt_autocommit,
            "read, pinned": db._attempt_pinned_read,
            "core, through the pool": db._attempt_core,
            "core, pinned": db._attempt_pinned_core}
    for attempt in ways.values():
        attempt(one)
    with db.engine.connect() as conn:
        pids = [int(r[0]) for r in conn.exec_driver_sql(
            # the pool's two connections: the pin and the one the other ways check out
            "SELECT pid FROM pg_stat_activity WHERE application_name = %(a)s",
            {"a": APPNAME})]
    cpu: dict[str, list[float]] = {k: [] for k in ways}
    pg: dict[str, list[float]] = {k: [] for k in ways}
    count = 2000
    for _ in range(6):
        for name, attempt in ways.items():
            before, ticks = time.process_time(), _ticks(pids)
            for _ in range(count):
                attempt(one)
            cpu[name].append((time.process_time() - before) / count * 1e6)
            pg[name].append((_ticks(pids) - ticks) / os.sysconf("SC_CLK_TCK") / count * 1e6)
    for name in ways:
        print(f"{name:24} client {statistics.median(cpu[name]):6.1f} µs "
              f"({min(cpu[name]):.0f}-{max(cpu[name]):.0f})  postgres "
              f"{statistics.median(pg[name]):6.1f} µs ({min(pg[name]):.0f}-{max(pg[name]):.0f})")
    db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
