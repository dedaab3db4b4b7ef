"""Postroom under test: a fresh migrated database, a Redis prefix, and chosen services on loopback.

Each service runs as its own `postroom serve NAME` child (as compose runs it)
with every listener on a free 127.0.0.1 port, its /healthz polled until 200,
and a null DNS server on loopback. ``stop()`` SIGTERMs the children by PID,
drops the database and deletes the Redis keys.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import POSTROOM, PY, REPO, VAR, free_port, progress, python_env, run, stop_pid

PG_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
DOMAIN = "bench.test"
FRONT_DOORS = frozenset({"mta", "msa", "imap", "pop3"})
PASSWORD = "bench-password-1"


def processes_for(name: str, override: int | None = None) -> int:
    """How many processes of a service the suite runs: the one place that decides.

    Without ``override`` it is what the shipped `postroom up` defaults give (issue 23,
    "auto"): one process per core for each front door (mta, msa, imap, pop3) sharing its
    port, one process for everything else. ``override`` (`bench/run.py --replicas N`) sets
    the front doors' count explicitly. Today each process is its own `postroom serve NAME`
    child with POSTROOM_REUSE_PORT; once `postroom serve NAME --processes N` exists, the
    suite starts one child with that option instead (see ``Service``) and this count is
    what it passes.
    """
    if name not in FRONT_DOORS:
        return 1
    if override:
        return max(1, override)
    return os.cpu_count() or 1


def serve_has_processes() -> bool:
    """Whether this Postroom's `postroom serve` takes ``--processes N`` (branch `procs`);
    until it does, the suite starts N `postroom serve NAME` children itself."""
    import argparse

    from postroom.ops import cli

    parser = argparse.ArgumentParser()
    cli._serve_arguments(parser)
    return "--processes" in parser._option_string_actions


def installed_services() -> set[str]:
    from postroom.service import available_services

    return set(available_services())


class DNSNull:
    """The NXDOMAIN-everything DNS server (bench/dnsnull.py) as a child process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([PY, str(REPO / "bench" / "dnsnull.py"), str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"null DNS server did not start: {line!r}")

    @property
    def servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_pid(self.proc)


class Service:
    """One `postroom serve NAME` child."""

    def __init__(self, name: str, env: dict[str, str], processes: int = 0) -> None:
        self.name = name
        self.http_port = free_port()
        self.env = {**env, "POSTROOM_HTTP_LISTEN": f"tcp:{self.http_port}:interface=127.0.0.1"}
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log",
                                               delete=False)
        # processes: `postroom serve NAME --processes N` (one parent serving the health port,
        # N workers as its children); 0 = a plain `postroom serve NAME`
        argv = [POSTROOM, "serve", name] + (["--processes", str(processes)] if processes else [])
        self.proc = subprocess.Popen(argv, env=self.env, cwd=str(REPO),
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.http_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: "
                                   f"{self.output()[-1500:]}")
            if self.healthy():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not healthy in {timeout:.0f}s: {self.output()[-1500:]}")

    def stop(self) -> None:
        stop_pid(self.proc, timeout=25)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


class PostroomSuite:
    """A fresh store plus the named services; use as a context manager."""

    def __init__(self, services: Sequence[str], *, extra_env: dict[str, str] | None = None,
                 users: int = 1, replicas: int | None = None) -> None:
        self.names = list(services)
        # front doors run processes_for(name, replicas) processes on one port
        # (POSTROOM_REUSE_PORT): one per core unless overridden; the rest one process
        self.replicas = replicas
        self.extra_env = dict(extra_env or {})
        self.user_count = users
        self.ports = {"mta": free_port(), "msa": free_port(), "imap": free_port(),
                      "pop3": free_port(), "dmarc": free_port()}
        self.database_url = ""
        self.redis_prefix = f"bench:{secrets.token_hex(4)}:"
        self.dns: DNSNull | None = None
        self.services: dict[str, Service] = {}
        self._engine: Any = None

    # --- addresses

    def user(self, n: int = 0) -> str:
        return f"user{n}@{DOMAIN}"

    @property
    def env(self) -> dict[str, str]:
        tls = VAR / "tls"
        loop = "interface=127.0.0.1"
        env = python_env()
        env.update({
            "POSTROOM_DATABASE_URL": self.database_url,
            "POSTROOM_REDIS_URL": REDIS_URL,
            "POSTROOM_REDIS_PREFIX": self.redis_prefix,
            "POSTROOM_HOSTNAME": "mx.bench.test",
            "POSTROOM_TLS_CERT_FILE": str(tls / "cert.pem"),
            "POSTROOM_TLS_KEY_FILE": str(tls / "key.pem"),
            "POSTROOM_MTA_LISTEN": f"tcp:{self.ports['mta']}:{loop}",
            "POSTROOM_MSA_LISTEN": f"tcp:{self.ports['msa']}:{loop}",
            "POSTROOM_MSA_TLS_LISTEN": "",
            "POSTROOM_IMAP_LISTEN": f"tcp:{self.ports['imap']}:{loop}",
            "POSTROOM_IMAP_TLS_LISTEN": "",
            "POSTROOM_POP3_LISTEN": f"tcp:{self.ports['pop3']}:{loop}",
            "POSTROOM_POP3_TLS_LISTEN": "",
            "POSTROOM_DMARC_LISTEN": f"tcp:{self.ports['dmarc']}:{loop}",
            "POSTROOM_DMARC_URL": f"http://127.0.0.1:{self.ports['dmarc']}",
            "POSTROOM_LOG_LEVEL": "warning",
            # a bench is one client address opening many sessions and sending a lot
            "POSTROOM_MAX_CONNECTIONS_PER_IP": "10000",
            "POSTROOM_MSA_MAX_MESSAGES_PER_HOUR": "1000000",
            "POSTROOM_MSA_MAX_RECIPIENTS_PER_DAY": "1000000",
            "POSTROOM_AUTH_FAIL_LIMIT": "1000000",
            "POSTROOM_AUTH_ADDRESS_FAIL_LIMIT": "1000000",
            "POSTROOM_AUTH_DELAY_MAX": "0",
        })
        if any(self.processes(n) > 1 for n in self.names or FRONT_DOORS):
            env["POSTROOM_REUSE_PORT"] = "true"
        if self.dns is not None:
            env["POSTROOM_DNS_SERVERS"] = self.dns.servers
        env.update(self.extra_env)
        return env

    def processes(self, name: str) -> int:
        return processes_for(name, self.replicas)

    # --- life cycle

    def __enter__(self) -> PostroomSuite:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        from postroom.net.tls import make_self_signed

        tls = VAR / "tls"
        if not (tls / "cert.pem").exists():
            make_self_signed(tls / "cert.pem", tls / "key.pem", "mx.bench.test")
        server = make_url(PG_SERVER)
        dbname = "postroom_bench_" + secrets.token_hex(5)
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{dbname}"'))
        admin.dispose()
        self.database_url = server.set(database=dbname).render_as_string(hide_password=False)
        self.dns = DNSNull()
        run([POSTROOM, "db", "upgrade"], env=self.env, timeout=120)
        run([POSTROOM, "domain", "add", DOMAIN], env=self.env)
        # the operator's way for the first account; the rest in one process (a CLI start
        # per account costs seconds on a loaded machine)
        run([POSTROOM, "user", "add", self.user(0)], env=self.env,
            input=(PASSWORD + "\n").encode())
        if self.user_count > 1:
            self._add_users(range(1, self.user_count))
        forks = serve_has_processes()
        for name in self.names:
            count = self.processes(name)
            if forks:
                # one child that forks its workers (their CPU is counted through the tree);
                # always explicit: without it a front door would take POSTROOM_PROCESSES=auto
                self.services[name] = Service(name, self.env, processes=count)
                continue
            self.services[name] = Service(name, self.env)
            for n in range(1, count):
                self.services[f"{name}.{n}"] = Service(name, self.env)
        for service in self.services.values():
            service.wait_healthy()
        shown = [f"{n} x{self.processes(n)}" if self.processes(n) > 1 else n
                 for n in self.names]
        progress(f"  postroom up: {', '.join(shown)} (db {dbname})")

    def _add_users(self, numbers: range) -> None:
        from postroom.store import users
        from postroom.store.db import Database

        # one scrypt hash for every account (the same password): 500 hashes would cost
        # a minute on a loaded machine; a small SCRAM iteration count for the same reason
        hashed = users.hash_password(PASSWORD)
        database = Database(self.database_url, pool_size=1)
        try:
            for n in numbers:
                database.run_sync(users.add_user, self.user(n), PASSWORD,
                                  hash_fn=lambda _password: hashed, scram_iterations=4096)
        finally:
            database.dispose()

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()
        self.services.clear()
        if self.dns is not None:
            self.dns.stop()
            self.dns = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self.database_url:
            _drop_database(self.database_url)
            self.database_url = ""
        _delete_redis_prefix(self.redis_prefix)

    # --- the store

    def engine(self) -> Any:
        if self._engine is None:
            from sqlalchemy import create_engine

            # named, so the CPU accounting leaves the bench's own queries out (bench/cpu.py)
            self._engine = create_engine(self.database_url, pool_size=2,
                                         connect_args={"application_name": "bench"})
        return self._engine

    def scalar(self, sql: str, **params: Any) -> Any:
        from sqlalchemy import text

        with self.engine().connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def delivered(self) -> int:
        """Messages in every mailbox of the store."""
        return int(self.scalar("SELECT count(*) FROM mailbox_entries") or 0)

    def clone_inbox(self, source: str, targets: list[str]) -> None:
        """Give each target's INBOX the same messages as the source's (blobs shared, UIDs kept).

        Importing the same Maildir once per account costs a CLI run each; the
        store is content-addressed, so one import plus entry rows per account
        is the same data the import would have made.
        """
        from sqlalchemy import text

        inbox = ("SELECT m.id FROM mailboxes m JOIN users u ON u.id = m.user_id "
                 "WHERE u.address = :address AND m.name = 'INBOX'")
        with self.engine().begin() as conn:
            src = conn.execute(text(inbox), {"address": source}).scalar_one()
            for target in targets:
                dst = conn.execute(text(inbox), {"address": target}).scalar_one()
                conn.execute(text(
                    "INSERT INTO mailbox_entries (mailbox_id, uid, message_id, flags, modseq, "
                    "internaldate) SELECT :dst, uid, message_id, flags, modseq, internaldate "
                    "FROM mailbox_entries WHERE mailbox_id = :src"), {"src": src, "dst": dst})
                conn.execute(text(
                    "UPDATE mailboxes d SET uidnext = s.uidnext, highestmodseq = s.highestmodseq "
                    "FROM mailboxes s WHERE s.id = :src AND d.id = :dst"),
                    {"src": src, "dst": dst})

    def pid(self, name: str) -> int:
        return self.services[name].pid

    def pids(self, name: str) -> dict[str, int]:
        """Every process of a service (its replicas too), by label."""
        return {label: s.pid for label, s in self.services.items()
                if label == name or label.startswith(f"{name}.")}


def _drop_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    admin = create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        admin.dispose()


def _delete_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        batch = list(client.scan_iter(match=prefix + "*", count=500))
        for start in range(0, len(batch), 500):
            client.delete(*batch[start:start + 500])
    finally:
        client.close()
