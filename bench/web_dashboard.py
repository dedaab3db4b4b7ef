"""Time the web console's heavy pages: the DMARC dashboard and the users page (median of 5).

A fresh database on the PostgreSQL at 127.0.0.1:5432 (POSTROOM_TEST_PG_URL to
change it), migrated to head, filled with 100,000 DMARC verdicts over 30 days
from ~500 sources, 90 aggregate reports from 3 receivers and 10,000 users;
then the dashboard of the 30 days is built (``build_dashboard``, without DNS:
names and the record are the resolver's part, bounded by its own budget) and
its Jinja2 fragment rendered, five times; the store's paginated users
listing (a page of 50 in the middle) is timed the same way. Dropped
afterwards. Prints ms per page; nothing is asserted. bench/web_pages.py
times the same pages over HTTP through a running web service.

    .venv/bin/python bench/web_dashboard.py [--verdicts 100000] [--users 10000] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import make_url

from postroom.mailauth.dmarcreport import IncomingReport, IncomingRow
from postroom.store import dmarc, domains, users
from postroom.store.db import Database
from postroom.store.migrate import upgrade
from postroom.store.models import Domain, User
from postroom_web.dmarc import dashboard

SERVER = os.environ.get("POSTROOM_TEST_PG_URL",
                        "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
DOMAIN = "bench.test"
DAYS = 30
RUNS = 5
# an imported SHA512-CRYPT hash: kept as it is, so making 10,000 accounts hashes nothing
STORED_HASH = ("{SHA512-CRYPT}$6$benchsalt$Zq0bV5j9x3kD1m2rI4lM3Yk1l0dQ8Kp7s6bQm5aX2c1vN0"
               "zY9wT8rU7qP6oL5kJ4hG3fE2dC1bA0zZ9yX8wV7u")


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def create_database() -> str:
    name = "postroom_bench_web_" + secrets.token_hex(4)
    admin = create_engine(make_url(SERVER), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(SERVER).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    name = make_url(url).database
    admin = create_engine(make_url(SERVER), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def sources(rng: random.Random, count: int = 500) -> list[tuple[str, float, float]]:
    """(address, weight, pass probability): a few busy legitimate senders, many small failing
    ones (spoofing, forwarders)."""
    out = []
    for i in range(count):
        ip = f"10.{i // 250}.{i % 250}.{1 + i % 7}" if i % 9 else f"2001:db8::{i:x}"
        legit = i < 40
        weight = (400.0 / (i + 1)) if legit else rng.uniform(0.2, 2.0)
        out.append((ip, weight, rng.uniform(0.97, 1.0) if legit else rng.uniform(0.0, 0.2)))
    return out


def fill_verdicts(db: Database, count: int, end: datetime, rng: random.Random) -> None:
    table = sources(rng)
    ips = [s[0] for s in table]
    weights = [s[1] for s in table]
    passing = {s[0]: s[2] for s in table}
    batch: list[dmarc.DmarcRecord] = []
    span = DAYS * 86400
    for n in range(count):
        ip = rng.choices(ips, weights)[0]
        spf = rng.random() < passing[ip]
        dkim = rng.random() < passing[ip] * 0.98
        ok = spf or dkim
        batch.append(dmarc.DmarcRecord(
            source_ip=ip, header_from=DOMAIN, spf_result="pass" if spf else "fail",
            dkim_result="pass" if dkim else "fail", dmarc_result="pass" if ok else "fail",
            disposition="none", reporting_domain=DOMAIN, spf_aligned=spf, dkim_aligned=dkim,
            policy="none", received_at=end - timedelta(seconds=rng.uniform(0, span))))
        if len(batch) == 5000 or n == count - 1:
            db.run_sync(dmarc.record_results, batch)
            batch = []


def fill_reports(db: Database, end: datetime, rng: random.Random) -> None:
    n = 0
    for org in ("google.com", "Microsoft Corporation", "Yahoo"):
        for day in range(DAYS):
            begin = end - timedelta(days=day + 1)
            rows = tuple(IncomingRow(source_ip=f"198.51.100.{r}", count=rng.randint(1, 400),
                                     disposition="none", dkim="pass" if r % 5 else "fail",
                                     spf="pass" if r % 3 else "fail", header_from=DOMAIN)
                         for r in range(20))
            report = IncomingReport(org_name=org, email="noreply@" + org.split()[0].lower(),
                                    report_id=f"{org}-{day}", domain=DOMAIN, begin=begin,
                                    end=begin + timedelta(days=1), policy={"p": "none"},
                                    rows=rows)
            db.run_sync(dmarc.store_incoming_report, f"{n:064x}", report)
            n += 1


def fill_users(db: Database, count: int) -> None:
    """``count`` accounts in INSERTs of 1,000 rows (an imported hash: nothing is hashed)."""
    def some(session: Any, start: int, stop: int) -> None:
        domain_id = session.execute(select(Domain.id).where(Domain.name == DOMAIN)).scalar_one()
        session.execute(insert(User), [
            {"domain_id": domain_id, "localpart": f"user{i:05d}",
             "address": f"user{i:05d}@{DOMAIN}", "password_hash": STORED_HASH}
            for i in range(start, stop)])

    for start in range(0, count, 1000):
        db.run_sync(some, start, min(count, start + 1000))


def timed(fn: Callable[[], Any]) -> list[float]:
    fn()  # warm: caches, prepared plans
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verdicts", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true",
                        help="keep the database (its URL is printed) to look at the plans")
    args = parser.parse_args()
    rng = random.Random(20261207)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=DAYS)
    url = create_database()
    db = Database(url, pool_size=2)
    try:
        upgrade(url)
        db.start()
        db.run_sync(domains.add_domain, DOMAIN)
        t0 = time.monotonic()
        fill_verdicts(db, args.verdicts, end, rng)
        fill_reports(db, end, rng)
        progress(f"{args.verdicts:,} verdicts and 90 reports in {time.monotonic() - t0:.1f} s")
        t0 = time.monotonic()
        fill_users(db, args.users)
        progress(f"{args.users:,} users in {time.monotonic() - t0:.1f} s")
        db.run_sync(lambda s: s.execute(text("ANALYZE")))

        templates = Path(dashboard.__file__).resolve().parents[1] / "templates"
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=True)
        fragment = env.get_template(dashboard.TEMPLATE)
        figures = db.run_sync(dashboard.load_figures, DOMAIN, start, end)
        built = dashboard.assemble(figures)
        html = fragment.render(dashboard=built)

        load = timed(lambda: db.run_sync(dashboard.load_figures, DOMAIN, start, end))
        assemble = timed(lambda: dashboard.assemble(figures))
        render = timed(lambda: fragment.render(dashboard=built))
        page = timed(lambda: fragment.render(dashboard=db.run_sync(
            dashboard.build_dashboard, DOMAIN, start, end)))
        print(f"\nDMARC dashboard, {args.verdicts:,} verdicts over {DAYS} days, "
              f"{len(figures.sources)} sources listed, {len(html) // 1024} KiB of HTML "
              f"(median of {RUNS}, min-max):")
        for label, times in (("  queries (load_figures)", load),
                             ("  charts, tables, verdict (assemble)", assemble),
                             ("  Jinja2 fragment", render),
                             ("dmarc dashboard page", page)):
            print(f"{label:40s} {statistics.median(times):8.1f} ms "
                  f"({min(times):.1f}-{max(times):.1f})")
        times = timed(lambda: db.run_sync(users.list_users_page, domains={DOMAIN},
                                          offset=args.users // 2, limit=50, search=None))
        print(f"{'users listing (list_users_page, 50 rows)':40s} "
              f"{statistics.median(times):8.1f} ms ({min(times):.1f}-{max(times):.1f})")
        print("(over HTTP, with the service's own overhead: bench/web_pages.py)")
    finally:
        db.stop()
        if args.keep:
            print(f"database kept: {url}")
        else:
            drop_database(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
