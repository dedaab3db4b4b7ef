"""SEARCH HEADER on an uncached field before/after the narrow header rows (0019, issue 23).

Builds a mailbox of N messages the way bench/workloads/imap_scale does (one
analysed message, copied in SQL with its X-Bench-Serial set; the 0019
trigger makes each copy's header row), then runs the search statement of
before 0019 (A: every entry joined to ``messages``) and of now (B:
``entries.search``, header rows first) in alternating blocks (A B B A ...),
each on its own connection, parallel query off (a parallel worker's CPU is
not in the backend's /proc entry, and the workers come and go). Reported per
statement: the PostgreSQL backend's CPU (utime+stime from /proc) and
wall-clock, medians of the blocks; then the cost of the 0019 backfill over
the same rows.

    .venv/bin/python scripts/measure_search_header.py [N] [blocks] [repeats]
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench import cpu  # noqa: E402
from tests.support.db import create_test_database, drop_test_database  # noqa: E402
from workloads.mailgen import message  # noqa: E402

from postroom.mime import analyze  # noqa: E402
from postroom.store import domains, entries, mailboxes, messages, users  # noqa: E402
from postroom.store.db import Database  # noqa: E402
from postroom.store.migrate import upgrade  # noqa: E402
from postroom.store.search import SearchHeader, search_where  # noqa: E402


def build(url: str, count: int) -> int:
    db = Database(url, pool_size=1)
    db.start()
    try:
        db.run_sync(domains.add_domain, "bench.test")
        user_id = db.run_sync(users.add_user, "user@bench.test", "pw").id
        data = message(0)

        def first(session: object) -> int:
            mid = messages.store_message(session, data, analyze(data).to_dict())  # type: ignore[arg-type]
            mailboxes.deliver_to_mailbox(session, user_id=user_id, mailbox_name="INBOX",  # type: ignore[arg-type]
                                         message_id=mid, spool_recipient_id=None)
            return int(mailboxes.get_mailbox(session, user_id, "INBOX").id)  # type: ignore[arg-type]
        box = int(db.run_sync(first))
    finally:
        db.stop()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TEMP TABLE bench_new ON COMMIT DROP AS SELECT g AS n, "
            "decode(replace(encode(t.blob, 'escape'), 'serial-0000000', "
            "'serial-' || lpad(g::text, 7, '0')), 'escape') AS blob, t.metadata "
            "FROM messages t, generate_series(1, :last) g"), {"last": count - 1})
        conn.execute(text(
            "INSERT INTO messages (sha256, size, blob, metadata) "
            "SELECT encode(sha256(blob), 'hex'), octet_length(blob), blob, metadata "
            "FROM bench_new"))
        conn.execute(text(
            "INSERT INTO mailbox_entries (mailbox_id, uid, message_id, flags, modseq, "
            "internaldate) "
            "SELECT :box, b.n + 1, m.id, ARRAY['\\Seen'], b.n + 1, now() "
            "FROM bench_new b JOIN messages m ON m.sha256 = encode(sha256(b.blob), 'hex')"),
            {"box": box})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return box


def old(conn, box: int, key: SearchHeader) -> list[int]:  # type: ignore[no-untyped-def]
    where, params = search_where(key)
    params.update({"mbox": box, "maxuid": 10**9})
    return [int(r[0]) for r in conn.execute(text(
        "SELECT e.uid, e.modseq FROM mailbox_entries e JOIN messages m ON m.id = e.message_id "  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
        f"WHERE e.mailbox_id = :mbox AND e.uid <= :maxuid AND ({where}) ORDER BY e.uid"),
        params)]


def new(conn, box: int, key: SearchHeader) -> list[int]:  # type: ignore[no-untyped-def]
    return [u for u, _ in entries.search(conn, box, key, 10**9)]


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    blocks = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    url = create_test_database("postroom_bench_hdr_")
    try:
        upgrade(url)
        started = time.perf_counter()
        box = build(url, count)
        print(f"built {count} messages in {time.perf_counter() - started:.0f} s", flush=True)
        engine = create_engine(url, pool_size=2)
        key = SearchHeader("x-bench-serial", f"serial-{count * 54321 // 100000:07d}")
        results: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
        answers = {}
        order = "".join("AB" if i % 2 == 0 else "BA" for i in range(blocks))
        for side in order:
            fn = old if side == "A" else new
            with engine.connect() as conn:
                pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
                # parallel workers' CPU is not the backend's: keep all of it in the backend
                conn.execute(text("SET max_parallel_workers_per_gather = 0"))
                answers[side] = fn(conn, box, key)  # untimed first run
                cpu0, wall0 = 1000 * cpu.own_seconds(pid), time.perf_counter()
                for _ in range(repeats):
                    fn(conn, box, key)
                results[side].append(((1000 * cpu.own_seconds(pid) - cpu0) / repeats,
                                      1000 * (time.perf_counter() - wall0) / repeats))
        assert answers["A"] == answers["B"], answers
        print(f"answer {answers['A']}; load {os.getloadavg()[0]:.1f}")
        for side, label in (("A", "before (messages joined)"), ("B", "after (header rows)")):
            cpus = [c for c, _ in results[side]]
            walls = [w for _, w in results[side]]
            print(f"{label}: PostgreSQL CPU median {statistics.median(cpus):.1f} ms "
                  f"{[round(c) for c in cpus]}, wall median {statistics.median(walls):.1f} ms")
        spec = importlib.util.spec_from_file_location("m0019", next(
            (ROOT / "shared/postroom/store/migrations/versions").glob("0019_*.py")))
        assert spec and spec.loader
        m0019 = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m0019)
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE message_headers"))
        with engine.begin() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            cpu0, wall0 = 1000 * cpu.own_seconds(pid), time.perf_counter()
            added = m0019.backfill(conn)
            used, wall = 1000 * cpu.own_seconds(pid) - cpu0, time.perf_counter() - wall0
        with engine.connect() as conn:
            size = conn.execute(text(
                "SELECT pg_total_relation_size('message_headers')")).scalar_one()
        print(f"backfill: {added} rows, PostgreSQL CPU {used / 1000:.1f} s, wall {wall:.1f} s "
              f"(per million: CPU {used / added * 1000:.0f} s, wall {wall / added * 1e6:.0f} s); "
              f"table {size / 1e6:.0f} MB")
        engine.dispose()
    finally:
        drop_test_database(url)


if __name__ == "__main__":
    main()
