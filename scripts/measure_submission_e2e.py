"""Submission end to end (msa, mta, mda), this tree against ``--code DIR``, alternating rounds.

Each side: its own database and Redis prefix, one msa, one mta and one mda process
(``POSTROOM_PROCESSES=1``). A round: scripts/measure_msa.py's load (10 smtplib STARTTLS +
AUTH PLAIN clients, ``--per-client`` messages of ~2 KiB each to themselves), then a wait
until every recipient is delivered. Printed per round and as medians: CPU ms per message of
each service's process tree and of the side's PostgreSQL backends (utime+stime from /proc).
Redis is not counted (one server for both sides).

    .venv/bin/python scripts/measure_submission_e2e.py --code /tmp/base --rounds 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import measure_msa as M  # noqa: E402
from bench import cpu  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from tests.support.db import create_test_database, drop_test_database  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")

def start(name: str, env: dict[str, str], code: Path | None, log: Path) -> subprocess.Popen:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    paths = [str(REPO)]
    if code is not None:
        paths = [str(code / "shared"),
                 *(str(p) for p in sorted((code / "services").iterdir())), *paths]
    child_env["PYTHONPATH"] = os.pathsep.join(paths)
    child_env.update(env)
    argv = [sys.executable, "-c", "import sys; from postroom.runtime import run_service; "
            "sys.exit(run_service(sys.argv[1]))", f"postroom_{name}.main:SERVICE"]
    return subprocess.Popen(argv, env=child_env, stdout=log.open("wb"), stderr=subprocess.STDOUT)

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--code", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=30)
    args = ap.parse_args()
    from postroom.auth.passwords import hash_password
    from postroom.net.tls import make_self_signed
    from postroom.store import domains, users
    from postroom.store.db import Database
    from postroom.store.migrate import upgrade
    work = Path(tempfile.mkdtemp(prefix="msae2e-"))
    make_self_signed(work / "cert.pem", work / "key.pem", f"msa.{M.DOMAIN}")
    dns_port = free_port()
    dns = subprocess.Popen([sys.executable, str(REPO / "bench" / "dnsnull.py"), str(dns_port)],
                           stdout=subprocess.PIPE)
    assert dns.stdout is not None and b"ready" in dns.stdout.readline()
    names = [f"u{i}@{M.DOMAIN}" for i in range(10)]
    sides: dict[str, dict[str, Any]] = {}
    procs: list[subprocess.Popen] = []
    try:
        for side, code in (("before", args.code), ("after", None)):
            url = create_test_database("postroom_msae2e_")
            upgrade(url)
            db = Database(url, pool_size=1)
            db.run_sync(domains.add_domain, M.DOMAIN)
            for n in names:
                db.run_sync(users.add_user, n, M.PASSWORD, hash_fn=lambda p: hash_password(p, ln=4))
            db.dispose()
            prefix = f"msae2e:{os.getpid()}:{side}:"
            port = free_port()
            base = {"POSTROOM_DATABASE_URL": url, "POSTROOM_REDIS_URL": "redis://127.0.0.1:6379/0",
                    "POSTROOM_REDIS_PREFIX": prefix, "POSTROOM_HOSTNAME": f"mx.{M.DOMAIN}",
                    "POSTROOM_LOG_LEVEL": "warning", "POSTROOM_PROCESSES": "1",
                    "POSTROOM_DNS_SERVERS": f"127.0.0.1:{dns_port}",
                    "POSTROOM_TLS_CERT_FILE": str(work / "cert.pem"),
                    "POSTROOM_TLS_KEY_FILE": str(work / "key.pem"),
                    "POSTROOM_MSA_LISTEN": f"tcp:{port}:interface=127.0.0.1",
                    "POSTROOM_MSA_TLS_LISTEN": f"tcp:{free_port()}:interface=127.0.0.1",
                    "POSTROOM_MTA_LISTEN": f"tcp:{free_port()}:interface=127.0.0.1",
                    "POSTROOM_DMARC_URL": f"http://127.0.0.1:{free_port()}",
                    "POSTROOM_MSA_MAX_MESSAGES_PER_HOUR": "1000000",
                    "POSTROOM_MSA_MAX_RECIPIENTS_PER_DAY": "1000000"}
            svc = {}
            for name in ("msa", "mta", "mda"):
                http = free_port()
                env = dict(base, POSTROOM_HTTP_LISTEN=f"tcp:{http}:interface=127.0.0.1")
                svc[name] = start(name, env, code, work / f"{side}-{name}.log")
                procs.append(svc[name])
                M.proctools.wait_healthy(http, svc[name])
            eng = create_engine(url, pool_size=1, connect_args={"application_name": "bench"})
            sides[side] = {"url": url, "port": port, "svc": svc, "eng": eng, "sent": 0,
                           "pg": cpu.postgres_backends(url)}
        def delivered(s: dict[str, Any]) -> int:
            with s["eng"].connect() as c:
                return int(c.execute(text("SELECT count(*) FROM spool_recipients"
                                          " WHERE state = 'delivered'")).scalar_one())
        def run(side: str, per: int) -> dict[str, float]:
            s = sides[side]
            stats = cpu.all_stats()
            pg_pids = s["pg"]()
            before = {n: cpu.tree_ticks([p.pid], stats) for n, p in s["svc"].items()}
            before["pg"] = sum(cpu.tree_ticks([p], stats) for p in pg_pids)
            M.load(s["port"], names, per)
            s["sent"] += 10 * per
            deadline = time.monotonic() + 300
            while delivered(s) < s["sent"]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{side}: {delivered(s)} of {s['sent']} delivered")
                time.sleep(0.3)
            time.sleep(1.0)
            stats = cpu.all_stats()
            after = {n: cpu.tree_ticks([p.pid], stats) for n, p in s["svc"].items()}
            after["pg"] = sum(cpu.tree_ticks([p], stats) for p in set(pg_pids) | set(s["pg"]()))
            return {n: round((after[n] - before[n]) / TICK * 1000 / (10 * per), 3) for n in after}
        for side in ("before", "after"):
            run(side, 3)
        figures: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for i in range(args.rounds):
            for side in (("before", "after") if i % 2 == 0 else ("after", "before")):
                figures[side].append(run(side, args.per_client))
                print(side, figures[side][-1], flush=True)
        out: dict[str, Any] = {}
        for side, rows in figures.items():
            out[side] = {n: {"median": statistics.median(r[n] for r in rows),
                             "min": min(r[n] for r in rows), "max": max(r[n] for r in rows)}
                         for n in rows[0]}
            tot = [sum(r.values()) for r in rows]
            out[side]["total"] = {"median": statistics.median(tot), "min": min(tot),
                                  "max": max(tot)}
        print(json.dumps(out))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        dns.kill()
        import redis
        from tests.support.redisdb import delete_prefix
        rc = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        for side, s in sides.items():
            s["eng"].dispose()
            drop_test_database(s["url"])
            delete_prefix(rc, f"msae2e:{os.getpid()}:{side}:")
        rc.close()
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
