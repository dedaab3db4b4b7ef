"""Measure the msa's CPU per submitted message: two msa process groups (this tree and
``--code DIR``) on one database, loaded in alternating rounds.

Each round: 10 smtplib clients (STARTTLS + AUTH PLAIN, as bench/workloads/submission.py), each
``--per-client`` messages of ~2 KiB from its own address to itself; msa CPU is utime+stime of
the process tree from /proc, per message. Only the msa runs (nothing consumes ``outbound``).

    .venv/bin/python scripts/measure_msa.py --code /tmp/base --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import smtplib
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import cpu, proctools  # noqa: E402
from tests.support.db import create_test_database, drop_test_database  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

DOMAIN = "msabench.test"
PASSWORD = "a long password 1"  # noqa: S105 - a bench account on a throwaway database
BODY = ("x" * 70 + "\r\n") * 28


def client(port: int, user: str, count: int, errors: list[str]) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            smtp.ehlo("client.msabench.test")
            smtp.starttls(context=context)
            smtp.ehlo("client.msabench.test")
            smtp.login(user, PASSWORD)
            for i in range(count):
                message = (f"From: <{user}>\r\nTo: <{user}>\r\nSubject: bench {i}\r\n"
                           f"Message-ID: <{time.monotonic_ns()}.{i}@{DOMAIN}>\r\n\r\n{BODY}")
                smtp.sendmail(user, [user], message.encode())
    except (OSError, smtplib.SMTPException) as exc:
        errors.append(f"{user}: {exc}")


def load(port: int, users: list[str], per_client: int) -> None:
    errors: list[str] = []
    threads = [threading.Thread(target=client, args=(port, u, per_client, errors))
               for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed, first: {errors[0]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", type=Path, required=True, help="the other tree (before)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-client", type=int, default=50)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()

    from postroom.auth.passwords import hash_password
    from postroom.net.tls import make_self_signed
    from postroom.store import domains, users
    from postroom.store.db import Database
    from postroom.store.migrate import upgrade

    url = create_test_database("postroom_msabench_")
    work = Path(tempfile.mkdtemp(prefix="msabench-"))
    procs: dict[str, subprocess.Popen] = {}
    prefix = f"msabench:{os.getpid()}:"
    try:
        upgrade(url)
        db = Database(url, pool_size=1)
        db.run_sync(domains.add_domain, DOMAIN)
        names = [f"u{i}@{DOMAIN}" for i in range(args.clients)]
        for name in names:
            db.run_sync(users.add_user, name, PASSWORD, hash_fn=lambda p: hash_password(p, ln=4))
        db.dispose()
        make_self_signed(work / "cert.pem", work / "key.pem", f"msa.{DOMAIN}")
        ports = {}
        for side, code in (("before", args.code), ("after", None)):
            port, http = free_port(), free_port()
            env = {"POSTROOM_DATABASE_URL": url, "POSTROOM_REDIS_URL": "redis://127.0.0.1:6379/0",
                   "POSTROOM_REDIS_PREFIX": prefix, "POSTROOM_HOSTNAME": f"msa.{DOMAIN}",
                   "POSTROOM_LOG_LEVEL": "warning", "POSTROOM_PROCESSES": "2",
                   "POSTROOM_TLS_CERT_FILE": str(work / "cert.pem"),
                   "POSTROOM_TLS_KEY_FILE": str(work / "key.pem"),
                   "POSTROOM_MSA_LISTEN": f"tcp:{port}:interface=127.0.0.1",
                   "POSTROOM_MSA_TLS_LISTEN": f"tcp:{free_port()}:interface=127.0.0.1",
                   "POSTROOM_HTTP_LISTEN": f"tcp:{http}:interface=127.0.0.1",
                   "POSTROOM_MSA_MAX_MESSAGES_PER_HOUR": "1000000",
                   "POSTROOM_MSA_MAX_RECIPIENTS_PER_DAY": "1000000"}
            procs[side] = proctools.start_service("msa", env, code, work / f"{side}.log")
            proctools.wait_healthy(http, procs[side])
            ports[side] = port
        for side in ("before", "after"):  # warm-up
            load(ports[side], names, 5)
        figures: dict[str, list[float]] = {"before": [], "after": []}
        for i in range(args.rounds):
            order = ("before", "after") if i % 2 == 0 else ("after", "before")
            for side in order:
                used = cpu.tree_seconds(procs[side].pid)
                load(ports[side], names, args.per_client)
                used = cpu.tree_seconds(procs[side].pid) - used
                figures[side].append(round(used * 1000 / (args.clients * args.per_client), 3))
        print(json.dumps({side: {"rounds": v, "median": statistics.median(v)}
                          for side, v in figures.items()}))
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        drop_test_database(url)
        proctools.forget_redis_prefix(prefix)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
