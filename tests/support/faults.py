"""A private Postroom instance for fault campaigns: its own PostgreSQL, Redis and service processes.

The fault campaign kills and restarts PostgreSQL and Redis, so it must never
run against the machine's shared servers. :class:`FaultInstance` starts a
PostgreSQL cluster and a redis-server of its own (``postroom.ops.localinfra``)
under a temporary directory, migrates the database with ``postroom db
upgrade``, provisions one domain with users and DKIM keys, and runs msa, mta,
dmarc, mda, pop3 and imap as real ``postroom serve NAME`` processes on free
loopback ports. Every fault is a method (``kill``, ``restart``,
``kill_redis``, ``restart_postgres`` ...) acting on processes it started, by
PID. :meth:`FaultInstance.copies` reads what reached the mailboxes, straight
from PostgreSQL, for the campaign's ledger to compare with what clients sent.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from postroom.auth.passwords import hash_password
from postroom.net.tls import make_self_signed
from postroom.ops.localinfra import PrivatePostgres, PrivateRedis
from postroom.store import dkim, domains, users
from postroom.store.db import Database
from tests.support.ports import free_port
from tests.support.procs import REPO_ROOT, ServiceProcess, base_env

PASSWORD = "campaign horse battery"
SERVICES = ("dmarc", "mda", "mta", "msa", "imap", "pop3")
TOKEN_HEADER = b"X-Campaign-Token"
_TOKEN = re.compile(rb"^X-Campaign-Token: *(\S+)", re.MULTILINE | re.IGNORECASE)

# listen variables of every service; each gets a free loopback port
_LISTEN_VARS = {
    "msa": "POSTROOM_MSA_LISTEN", "msa_tls": "POSTROOM_MSA_TLS_LISTEN",
    "mta": "POSTROOM_MTA_LISTEN", "dmarc": "POSTROOM_DMARC_LISTEN",
    "imap": "POSTROOM_IMAP_LISTEN", "imap_tls": "POSTROOM_IMAP_TLS_LISTEN",
    "pop3": "POSTROOM_POP3_LISTEN", "pop3_tls": "POSTROOM_POP3_TLS_LISTEN",
}


@dataclass(frozen=True)
class Copy:
    """One message in one mailbox, as the store has it."""

    address: str
    mailbox: str
    token: str | None
    delivered_at: datetime | None


class FaultInstance:
    """One Postroom suite on private infrastructure; see the module docstring."""

    def __init__(self, dns_env: Mapping[str, str], *, domain: str = "campaign.test",
                 user_count: int = 20, extra_env: Mapping[str, str] | None = None) -> None:
        # under /tmp and world-traversable: as root, PostgreSQL runs as another user
        self.root = Path(tempfile.mkdtemp(prefix="postroom-faults-", dir="/tmp"))
        os.chmod(self.root, 0o755)
        self.domain = domain
        self.addresses = [f"u{i:02d}@{domain}" for i in range(user_count)]
        self.hostname = f"mail.{domain}"
        self.postgres = PrivatePostgres(self.root)
        self.redis = PrivateRedis(self.root)
        self.ports = {name: free_port() for name in _LISTEN_VARS}
        self.dns_env = dict(dns_env)
        self.extra_env = dict(extra_env or {})
        self.services: dict[str, ServiceProcess] = {}
        self._engine: Engine | None = None

    # --- start and stop

    def start(self) -> FaultInstance:
        """Infrastructure, schema, accounts, then every service (dmarc first); healthy."""
        database_url = self.postgres.start()
        self.redis.start()
        self._migrate(database_url)
        self._provision(database_url)
        make_self_signed(self.root / "cert.pem", self.root / "key.pem", self.hostname)
        env = self.env()
        for name in SERVICES:
            self.services[name] = ServiceProcess(name, env)
        # spawned together, then waited for: start-up is mostly imports, done in parallel
        for name in SERVICES:
            self.services[name].spawn()
        for name in SERVICES:
            self.services[name].wait_healthy(120)
        return self

    def env(self) -> dict[str, str]:
        """The POSTROOM_* environment every process of this instance shares."""
        env = {
            "POSTROOM_DATABASE_URL": self.postgres.url,
            "POSTROOM_REDIS_URL": self.redis.url,
            "POSTROOM_REDIS_PREFIX": "postroom:",
            "POSTROOM_HOSTNAME": self.hostname,
            "POSTROOM_TLS_CERT_FILE": str(self.root / "cert.pem"),
            "POSTROOM_TLS_KEY_FILE": str(self.root / "key.pem"),
            "POSTROOM_DMARC_URL": f"http://127.0.0.1:{self.ports['dmarc']}",
            "POSTROOM_DMARC_REPORTS": "false",
            "POSTROOM_DB_POOL_SIZE": "4",
            # short enough that Redis losses and dead consumers heal within the campaign
            "POSTROOM_QUEUE_CLAIM_IDLE": "3s",
            "POSTROOM_RECONCILE_INTERVAL": "3s",
            "POSTROOM_RETRY_INITIAL": "2s",
            "POSTROOM_RETRY_MAX": "10s",
            "POSTROOM_SHUTDOWN_GRACE": "5s",
            "POSTROOM_MTA_DMARC_TIMEOUT": "10s",
            "POSTROOM_MSA_MAX_MESSAGES_PER_HOUR": "100000",
            "POSTROOM_MSA_MAX_RECIPIENTS_PER_DAY": "100000",
            "POSTROOM_AUTH_FAIL_LIMIT": "100000",
            "POSTROOM_AUTH_ADDRESS_FAIL_LIMIT": "100000",
            "POSTROOM_AUTH_DELAY_MAX": "0",
            **self.dns_env,
        }
        for name, variable in _LISTEN_VARS.items():
            env[variable] = f"tcp:{self.ports[name]}:interface=127.0.0.1"
        env.update(self.extra_env)
        return env

    def _migrate(self, database_url: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "postroom.ops.cli", "db", "upgrade"], cwd=REPO_ROOT,
            env=base_env({"POSTROOM_DATABASE_URL": database_url}), capture_output=True,
            text=True, timeout=120, check=False)
        if result.returncode != 0:
            pytest.fail(f"postroom db upgrade failed:\n{result.stdout}{result.stderr}",
                        pytrace=False)

    def _provision(self, database_url: str) -> None:
        db = Database(database_url, pool_size=1)
        try:
            db.run_sync(domains.add_domain, self.domain)
            for address in self.addresses:
                # a cheap hash: the campaign logs in a thousand times, cost is not under test
                db.run_sync(users.add_user, address, PASSWORD,
                            hash_fn=lambda p: hash_password(p, ln=4))
            db.run_sync(dkim.generate_key, self.domain, "rsa-sha256")
            db.run_sync(dkim.generate_key, self.domain, "ed25519-sha256")
        finally:
            db.dispose()

    def close(self) -> None:
        """Stop every service, Redis and PostgreSQL (by PID), then remove the directory."""
        try:
            for name in reversed(SERVICES):
                if name in self.services:
                    self.services[name].close()
        finally:
            if self._engine is not None:
                self._engine.dispose()
            self.redis.stop()
            self.postgres.stop()
            shutil.rmtree(self.root, ignore_errors=True)

    # --- faults

    def kill(self, name: str) -> None:
        """SIGKILL one service process and reap it."""
        process = self.services[name]
        process.signal(signal.SIGKILL)
        process.wait_exit(10)

    def stop(self, name: str) -> None:
        """SIGTERM one service (a clean stop) and wait for it."""
        self.services[name].stop(timeout=30)

    def restart(self, name: str) -> None:
        """Start a stopped or killed service again on the same ports; wait for /healthz."""
        process = self.services[name]
        process.spawn()
        process.wait_healthy(60)

    def kill_redis(self) -> None:
        """SIGKILL redis-server: it keeps nothing on disk, so it comes back empty."""
        proc = self.redis.proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.redis.proc = None

    def start_redis(self) -> None:
        """Start an empty redis-server on the same port."""
        self.redis.start()

    def stop_postgres(self) -> None:
        """Fast shutdown: sessions are cut, as in a restart or a fail-over."""
        self.postgres.stop()

    def start_postgres(self) -> None:
        self.postgres.start()

    # --- what the store holds

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.postgres.url, pool_pre_ping=True, pool_size=2)
        return self._engine

    def pending_recipients(self) -> int:
        """Spool recipients still pending (on `outbound` or `deliver`)."""
        with self.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM spool_recipients WHERE state = 'pending'")).scalar_one())

    def recipient_states(self) -> dict[str, int]:
        """Spool recipients by state (pending, delivered, failed, bounced ...)."""
        with self.engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT state, count(*) FROM spool_recipients GROUP BY state")).all()
        return {str(state): int(count) for state, count in rows}

    def copies(self) -> list[Copy]:
        """Every message in every mailbox, with its campaign token and delivery time."""
        query = text(
            "SELECT u.localpart || '@' || d.name, mb.name, substring(m.blob from 1 for 4096), "
            "       sr.updated_at "
            "FROM mailbox_entries e "
            "JOIN mailboxes mb ON mb.id = e.mailbox_id "
            "JOIN users u ON u.id = mb.user_id "
            "JOIN domains d ON d.id = u.domain_id "
            "JOIN messages m ON m.id = e.message_id "
            "LEFT JOIN spool_recipients sr ON sr.id = e.spool_recipient_id")
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        result = []
        for address, mailbox, head, delivered_at in rows:
            found = _TOKEN.search(bytes(head))
            result.append(Copy(str(address), str(mailbox),
                               found.group(1).decode() if found else None, delivered_at))
        return result
