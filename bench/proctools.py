"""Process plumbing the A/B measuring scripts share (bench/*_ab.py, scripts/measure_*.py).

Start a service from this tree or another one (``git archive`` of a commit), wait for its
health port, stop it; PostgreSQL's backends and commit count for one database; smtp-source
as a load; py-spy's raw output as top frames. CPU itself is read by bench/cpu.py.

Importable both as ``proctools`` (bench/ on sys.path, as the bench scripts run) and as
``bench.proctools`` (the repository on sys.path, as scripts/ run): it imports no sibling at
module level.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/0"


# --- a service as its own process (postroom.runtime.run_service), from any source tree

def start_service(name: str, env: dict[str, str], code: Path | None,
                  log: Path) -> subprocess.Popen[bytes]:
    """``postroom_NAME.main:SERVICE`` in a child with ``env`` (and none of this process's
    POSTROOM_ settings); with ``code`` its shared/ and services/ come first on PYTHONPATH."""
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


def wait_healthy(port: int, proc: subprocess.Popen[Any], timeout: float = 90) -> None:
    """Until ``/healthz`` on ``port`` answers 200; raises if the process exits first."""
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


def archive(commit: str) -> Path:
    """The tree at ``commit`` in a temporary directory (its shared/ and services/)."""
    out = Path(tempfile.mkdtemp(prefix="imap-ab-base-"))
    tar = subprocess.run(["git", "-C", str(REPO), "archive", commit, "shared", "services"],
                         check=True, stdout=subprocess.PIPE).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=tar, check=True)
    return out


def base_imap(suite: Any, commit: str, processes: int) -> tuple[Any, int]:
    """A second imap service running the tree at ``commit`` on ``suite``'s database, with its
    own port, Redis prefix (so neither side parses the other's change events) and
    application_name ``imap-base``: (the started Service, its IMAP port)."""
    from common import free_port
    from postroom_suite import Service

    tree = archive(commit)
    env = dict(suite.env)
    port = free_port()
    env.update({"PYTHONPATH": f"{tree}/shared:{tree}/services/imap:{REPO}",
                "POSTROOM_IMAP_LISTEN": f"tcp:{port}:interface=127.0.0.1",
                "POSTROOM_REDIS_PREFIX": suite.redis_prefix + "base:",
                "PGAPPNAME": "imap-base"})
    return Service("imap", env, processes=processes), port


def scrape_metrics(http_port: int) -> str:
    """A service's /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def metric_total(metrics: str, family: str) -> float:
    """The sum of every labelled sample of a counter family (``family{...} value`` lines)."""
    return sum(float(v) for v in re.findall(rf"^{family}\{{[^}}]*\}} (\S+)", metrics,
                                            re.MULTILINE))


def metric_sum(metrics: str, name: str) -> float | None:
    """The sum of every sample named ``name``, labelled or not (a process group's page labels
    each worker's ``process="k"``), or None when the service does not export it."""
    found = re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)", metrics, re.MULTILINE)
    return sum(float(v) for v in found) if found else None


def metric_value(metrics: str, name: str) -> float | None:
    """An unlabelled sample (``name value``), or None when the service does not export it."""
    found = re.search(rf"^{name} (\S+)", metrics, re.MULTILINE)
    return float(found.group(1)) if found else None


@dataclass
class ImapSides:
    """The imap A/B set-up ``imap_ab`` yields."""

    suite: Any  # postroom_suite.PostroomSuite
    users: list[str]  # users[0] holds the seeded INBOX; every other account a copy of it
    ports: dict[str, int]  # side ("new", "base") -> IMAP port
    roots: dict[str, int]  # side -> PID of its imap process tree


@contextlib.contextmanager
def imap_ab(accounts: int, *, replicas: int | None, base: str | None,
            seeded: int) -> Iterator[ImapSides]:
    """A suite whose imap ("new", application_name imap-new, plaintext LOGIN on loopback)
    has ``accounts`` accounts, each INBOX a copy of a ``seeded``-message one; with ``base``,
    a second imap ("base") running that commit's tree with as many processes, stopped on
    exit with the suite."""
    from postroom_suite import PostroomSuite
    from workloads import mailgen

    env = {"POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK": "true", "PGAPPNAME": "imap-new"}
    maildir = mailgen.make_maildir("curve", seeded)
    with PostroomSuite(["imap"], users=accounts, extra_env=env, replicas=replicas) as suite:
        users = [suite.user(n) for n in range(accounts)]
        mailgen.seed_postroom(maildir, users[0], suite.env, timeout=300)
        suite.clone_inbox(users[0], users[1:])
        ports = {"new": suite.ports["imap"]}
        roots = {"new": suite.pid("imap")}
        base_service = None
        try:
            if base:
                base_service, ports["base"] = base_imap(suite, base, suite.processes("imap"))
                base_service.wait_healthy()
                roots["base"] = base_service.pid
            yield ImapSides(suite, users, ports, roots)
        finally:
            if base_service is not None:
                base_service.stop()


# --- PostgreSQL and Redis state of one run

def pg_pids(suite: Any, appname: str) -> list[int]:
    """PIDs of the backends of ``suite``'s database whose application_name is ``appname``."""
    with suite.engine().connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %(a)s", {"a": appname}).all()
    return [int(r[0]) for r in rows]


def xact_commits(engine: Any, dbname: str) -> int:
    """``pg_stat_database.xact_commit`` of ``dbname`` (a fresh snapshot)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(conn.execute(text(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = :d"),
            {"d": dbname}).scalar_one())


def stop_then_commits(procs: list[subprocess.Popen[Any]], admin: Any, url: str,
                      dbname: str) -> int:
    """SIGTERM every service (``procs`` is emptied once they are gone) and close ``admin``,
    then the database's commit count: read only now, as backends flush their statistics
    when they exit."""
    import signal

    from sqlalchemy import create_engine

    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(30)
    procs.clear()
    admin.dispose()
    time.sleep(1.5)  # backends flush their statistics as they exit
    reader = create_engine(url)
    total = xact_commits(reader, dbname)
    reader.dispose()
    return total


def forget_redis_prefix(prefix: str) -> None:
    """Delete every key a run's services wrote under ``prefix``."""
    import redis
    from tests.support.redisdb import delete_prefix

    client = redis.Redis.from_url(REDIS_URL)
    delete_prefix(client, prefix)
    client.close()


@dataclass
class Rig:
    """What an inbound (dmarc + mta) measurement runs on: see ``inbound_rig``."""

    url: str
    dbname: str
    work: Path
    prefix: str
    env: dict[str, str]


@contextlib.contextmanager
def inbound_rig(name: str, domain: str) -> Iterator[Rig]:
    """A fresh database (one domain, one account ``u0@domain``), a null DNS server, a
    self-signed certificate and the POSTROOM_ settings every service of the run shares;
    on exit the database, the Redis keys and (unless KEEP is set) the work directory go."""
    from tests.support.db import create_test_database, drop_test_database
    from tests.support.ports import free_port

    from postroom.auth.passwords import hash_password
    from postroom.net.tls import make_self_signed
    from postroom.store import domains, users
    from postroom.store.db import Database
    from postroom.store.migrate import upgrade

    url = create_test_database(f"postroom_{name}_")
    work = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    prefix = f"{name}:{os.getpid()}:"
    dns = subprocess.Popen([sys.executable, str(REPO / "bench" / "dnsnull.py"),
                            str(dns_port := free_port())], stdout=subprocess.PIPE)
    assert dns.stdout is not None and b"ready" in dns.stdout.readline()
    try:
        upgrade(url)
        db = Database(url, pool_size=1)
        db.run_sync(domains.add_domain, domain)
        db.run_sync(users.add_user, f"u0@{domain}", "a long password 1",
                    hash_fn=lambda p: hash_password(p, ln=4))
        db.dispose()
        make_self_signed(work / "cert.pem", work / "key.pem", f"mx.{domain}")
        env = {"POSTROOM_DATABASE_URL": url, "POSTROOM_REDIS_URL": REDIS_URL,
               "POSTROOM_REDIS_PREFIX": prefix, "POSTROOM_HOSTNAME": f"mx.{domain}",
               "POSTROOM_DNS_SERVERS": f"127.0.0.1:{dns_port}", "POSTROOM_LOG_LEVEL": "warning",
               "POSTROOM_TLS_CERT_FILE": str(work / "cert.pem"),
               "POSTROOM_TLS_KEY_FILE": str(work / "key.pem")}
        yield Rig(url, url.rsplit("/", 1)[1], work, prefix, env)
    finally:
        dns.kill()
        drop_test_database(url)
        forget_redis_prefix(prefix)
        if os.environ.get("KEEP") is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(work)


# --- load and profiles

def smtp_source(port: int, messages: int, sessions: int, rcpt: str, size: int = 2048) -> None:
    """Postfix's smtp-source: ``messages`` of ``size`` bytes to ``rcpt`` over ``sessions``."""
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
                    "-f", "loadgen@src.test", "-t", rcpt, f"127.0.0.1:{port}"],
                   check=True, timeout=900)


def print_top_frames(raw: Path, title: str, *, own: int, inclusive: int, width: int) -> None:
    """py-spy ``--format raw`` output: the frames most often on top and anywhere in a stack."""
    selfs: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        selfs[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"--- {title}: {total} samples ({raw})")
    for name, n in selfs.most_common(own):
        print(f"  self {100 * n / max(1, total):5.1f}%  {name[:width]}")
    for name, n in incl.most_common(inclusive):
        print(f"  incl {100 * n / max(1, total):5.1f}%  {name[:width]}")
