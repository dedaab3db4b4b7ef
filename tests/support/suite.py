"""A set of real Postroom service processes sharing one database, Redis prefix and certificate.

End-to-end tests start the services they need (e.g. mda + imap + pop3) as real
processes on free loopback ports, then talk to them with real clients::

    def test_something(suite):
        alice = suite.add_user("alice@example.test")
        imap = suite.start("imap")          # Running(process, port=143-style, tls_port=993-style)
        mda, pop3 = suite.start_all("mda", "pop3")   # several at once, started in parallel
        suite.deliver_and_wait("alice@example.test", b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        # extra POSTROOM_* for one process: suite.start("imap", POSTROOM_LOG_LEVEL="debug")

A :class:`Suite` owns a fresh migrated PostgreSQL database of its own (so it
may be renamed or dropped by a test without touching anyone else), a unique
Redis key prefix on the shared test Redis, and a self-signed certificate for
``localhost``/127.0.0.1 (``suite.cert_file``, for clients that pin it). Every
process and all of those are removed by :meth:`Suite.close`. The ``suite``
fixture is per test; a module that wants one suite for all its tests builds
``Suite(redis_url, tmp_path_factory.mktemp(...))`` in its own module fixture.
"""

from __future__ import annotations

import secrets
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from postroom.auth.passwords import hash_password
from postroom.mime import analyze
from postroom.net.tls import make_self_signed
from postroom.queue import events
from postroom.queue.envelope import Envelope
from postroom.queue.streams import QueueClient, connect
from postroom.store import domains, mailboxes, messages, spool, users
from postroom.store.db import Database
from postroom.store.migrate import upgrade
from tests.support.db import create_test_database, drop_test_database
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, runtime_argv
from tests.support.redisdb import delete_prefix, wait_until

PASSWORD = "correct horse battery"

# service name -> (plain/STARTTLS listen variable, implicit-TLS listen variable)
LISTEN_VARS: dict[str, tuple[str | None, str | None]] = {
    "imap": ("POSTROOM_IMAP_LISTEN", "POSTROOM_IMAP_TLS_LISTEN"),
    "pop3": ("POSTROOM_POP3_LISTEN", "POSTROOM_POP3_TLS_LISTEN"),
    "managesieve": ("POSTROOM_MANAGESIEVE_LISTEN", None),
    "msa": ("POSTROOM_MSA_LISTEN", "POSTROOM_MSA_TLS_LISTEN"),
    "mta": ("POSTROOM_MTA_LISTEN", None),
    "dmarc": ("POSTROOM_DMARC_LISTEN", None),
    "mda": (None, None),
    "web": ("POSTROOM_WEB_LISTEN", "POSTROOM_WEB_TLS_LISTEN"),
}


def _listen(port: int) -> str:
    return f"tcp:{port}:interface=127.0.0.1"


@dataclass
class Running:
    """A started service: its process and the loopback ports it listens on (0: no such port)."""

    name: str
    process: ServiceProcess
    port: int
    tls_port: int


class Suite:
    """Real service processes over one private database, Redis prefix and certificate."""

    def __init__(self, redis_url: str, workdir: Path, *, hostname: str = "localhost") -> None:
        self.redis_url = redis_url
        self.hostname = hostname
        self.prefix = f"prtest:{secrets.token_hex(6)}:"
        self.workdir = Path(workdir)
        self.cert_file = self.workdir / "cert.pem"
        self.key_file = self.workdir / "key.pem"
        make_self_signed(self.cert_file, self.key_file, hostname)
        self.database_url = create_test_database("postroom_e2e_")
        self.running: list[Running] = []
        self._domains: set[str] = set()
        try:
            upgrade(self.database_url)
        except BaseException:
            drop_test_database(self.database_url)
            raise
        # run_sync only (no thread pool): the test thread talks to the store directly
        self.db = Database(self.database_url, pool_size=2)
        self.redis: redis.Redis = connect(redis_url)
        self.queue = QueueClient(self.redis, self.prefix)

    # --- processes

    def env(self, **extra: str) -> dict[str, str]:
        """The POSTROOM_* variables every process of this suite shares, plus ``extra``."""
        env = {
            "POSTROOM_DATABASE_URL": self.database_url,
            "POSTROOM_REDIS_URL": self.redis_url,
            "POSTROOM_REDIS_PREFIX": self.prefix,
            "POSTROOM_HOSTNAME": self.hostname,
            "POSTROOM_TLS_CERT_FILE": str(self.cert_file),
            "POSTROOM_TLS_KEY_FILE": str(self.key_file),
            "POSTROOM_DB_POOL_SIZE": "4",
            "POSTROOM_QUEUE_CLAIM_IDLE": "2s",
            "POSTROOM_SHUTDOWN_GRACE": "5s",
        }
        env.update(extra)
        return env

    def start(self, name: str, *, wait: bool = True, **extra_env: str) -> Running:
        """Start ``postroom serve NAME``-equivalent on free ports; waits for /healthz unless not."""
        plain_var, tls_var = LISTEN_VARS[name]
        port = free_port() if plain_var else 0
        tls_port = free_port() if tls_var else 0
        listen: dict[str, str] = {}
        if plain_var and port:
            listen[plain_var] = _listen(port)
        if tls_var and tls_port:
            listen[tls_var] = _listen(tls_port)
        env = self.env(**{**listen, **extra_env})
        process = ServiceProcess(name, env, argv=runtime_argv(f"postroom_{name}.main:SERVICE"))
        running = Running(name, process, port, tls_port)
        self.running.append(running)
        if wait:
            process.start(timeout=60)
        else:
            process.spawn()
        return running

    def start_all(self, *names: str) -> list[Running]:
        """Start several services at once (in parallel: each takes seconds to import)."""
        started = [self.start(name, wait=False) for name in names]
        for running in started:
            running.process.wait_healthy(timeout=60)
        return started

    # --- accounts and mail

    def add_user(self, address: str, password: str = PASSWORD, **kwargs: Any) -> int:
        """Create the account (and its domain, once); returns the user id."""
        domain = address.rpartition("@")[2].lower()
        if domain not in self._domains:
            if not self.db.run_sync(domains.is_local_domain, domain):
                self.db.run_sync(domains.add_domain, domain)
            self._domains.add(domain)
        # a cheap hash: tests log in thousands of times, the cost parameter is not under test
        info = self.db.run_sync(users.add_user, address, password,
                                hash_fn=lambda p: hash_password(p, ln=4), **kwargs)
        return int(info.id)

    def store(self, user_id: int, data: bytes, mailbox: str = "INBOX",
              flags: list[str] | None = None) -> int:
        """Put a message straight into the store (no event published); returns its UID."""
        def work(session: Any) -> int:
            message_id = messages.store_message(session, data, analyze(data).to_dict())
            uid, _ = mailboxes.deliver_to_mailbox(
                session, user_id=user_id, mailbox_name=mailbox, message_id=message_id,
                spool_recipient_id=None, flags=flags)
            return int(uid)
        return int(self.db.run_sync(work))

    def store_many(self, user_id: int, items: list[tuple[bytes, list[str]]],
                   mailbox: str = "INBOX") -> list[int]:
        """Store ``(data, flags)`` pairs in one transaction (fast bulk set-up); their UIDs."""
        def work(session: Any) -> list[int]:
            uids = []
            for data, flags in items:
                message_id = messages.store_message(session, data, analyze(data).to_dict())
                uid, _ = mailboxes.deliver_to_mailbox(
                    session, user_id=user_id, mailbox_name=mailbox, message_id=message_id,
                    spool_recipient_id=None, flags=flags)
                uids.append(int(uid))
            return uids
        return list(self.db.run_sync(work))

    def publish_change(self, user_id: int, mailbox: str = "INBOX") -> None:
        """Wake IMAP sessions watching ``mailbox`` (after :meth:`store`, as the mda would)."""
        info = self.db.run_sync(mailboxes.get_mailbox, user_id, mailbox)
        events.publish(self.redis, self.prefix,
                       events.ChangeEvent(events.EXISTS, info.id, "test"))

    def enqueue_delivery(self, address: str, data: bytes,
                         mail_from: str = "sender@remote.test") -> str:
        """Spool ``data`` for ``address`` and put it on the `deliver` stream; the queue id."""
        queue_id = self.db.run_sync(
            spool.create_spool, kind="inbound", mail_from=mail_from,
            recipients=[(address, "deliver", None, None)], message=data,
            enqueued_at=datetime.now(UTC))
        info = self.db.run_sync(spool.get_spool, queue_id)
        self.queue.enqueue("deliver", Envelope(queue_id, tuple(r.id for r in info.recipients),
                                               "deliver"))
        return str(queue_id)

    def delivered(self, queue_id: str) -> bool:
        """Whether every recipient of ``queue_id`` is in the state `delivered`."""
        info = self.db.run_sync(spool.get_spool, queue_id)
        return all(r.state == "delivered" for r in info.recipients)

    def deliver_and_wait(self, address: str, data: bytes, timeout: float = 30.0) -> str:
        """:meth:`enqueue_delivery`, then wait until a running mda has delivered it."""
        queue_id = self.enqueue_delivery(address, data)
        wait_until(lambda: self.delivered(queue_id), timeout=timeout, interval=0.02)
        return queue_id

    # --- teardown

    def close(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL), drop the database, delete the keys."""
        for running in self.running:  # all at once: each takes a second or two to stop
            running.process.signal(signal.SIGTERM)
        for running in reversed(self.running):
            running.process.close()
        self.running.clear()
        self.db.dispose()
        try:
            drop_test_database(self.database_url)
        finally:
            try:
                delete_prefix(self.redis, self.prefix)
            finally:
                self.redis.close()
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Suite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def suite(redis_url: str, tmp_path: Path) -> Iterator[Suite]:
    """A Suite of this test's own; start services with ``suite.start("imap")`` etc."""
    with Suite(redis_url, tmp_path / "suite") as running:
        yield running
