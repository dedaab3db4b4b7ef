"""What the msa promises when things die: no 250 for a message that is not durable, and no
250 whose message is lost when Redis goes away (the reconciler enqueues it once Redis returns).
"""

from __future__ import annotations

import secrets
import signal
import smtplib
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from twisted.python.threadpool import ThreadPool

from postroom.auth.ratelimit import LoginRateLimiter
from postroom.net.tls import ServerTLS, make_self_signed, wrap_implicit
from postroom.queue.envelope import decode
from postroom.queue.reconciler import Enqueuer, reconcile_batch
from postroom.queue.streams import QueueClient, connect
from postroom.smtp.options import ServerOptions
from postroom.smtp.server import SMTPServerFactory
from postroom.store import domains, spool
from postroom.store.db import Database
from postroom_msa.limits import SendingLimits
from postroom_msa.lookups import Spooled
from postroom_msa.policy import MSAPolicy
from postroom_msa.submission import Submitter
from tests.integration.test_msa_service import (
    PASSWORD,
    Account,
    make_account,
    message,
    msa_env,
    queue_id_of,
    unverified,
)
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess
from tests.support.redisdb import PrivateRedis, in_reactor


@pytest.fixture(scope="module")
def local_domain(database: Database) -> str:
    name = f"dur{secrets.token_hex(4)}.example"
    database.run_sync(domains.add_domain, name)
    return name


@pytest.fixture
def account(local_domain: str, database: Database) -> Account:
    return make_account(database, local_domain)


@pytest.fixture
def own_redis() -> Iterator[PrivateRedis]:
    """A redis-server of the test's own, which the test may stop and start again."""
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def spooled_from(database: Database, sender: str) -> list[spool.SpoolSummary]:
    return [s for s in database.run_sync(spool.list_spool) if s.mail_from == sender]


def outbound(redis_url: str, prefix: str) -> list[Any]:
    client = connect(redis_url)
    try:
        key = QueueClient(client, prefix).stream_key("outbound")
        return [decode(fields) for _id, fields in client.xrange(key)]
    finally:
        client.close()


def start_msa(database_url: str, redis_url: str, prefix: str, certs: Path) -> tuple[
        ServiceProcess, int]:
    port = free_port()
    env = msa_env(database_url, redis_url, prefix, certs, port, free_port())
    return ServiceProcess("msa", env).start(), port


def authenticated(port: int, account: Account) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=20)
    client.ehlo("client.test")
    client.starttls(context=unverified())
    client.ehlo("client.test")
    client.login(account.address, PASSWORD)
    return client


def test_msa_killed_mid_data_sends_no_250_and_spools_nothing(
        database_url: str, redis_url: str, redis_prefix: str, database: Database,
        account: Account, tmp_path: Path):
    process, port = start_msa(database_url, redis_url, redis_prefix, tmp_path)
    try:
        client = authenticated(port, account)
        assert client.mail(account.address)[0] == 250
        assert client.rcpt("friend@remote.example")[0] == 250
        code, _ = client.docmd("DATA")
        assert code == 354
        body = message(account.address)
        client.send(body[: len(body) // 2])
        time.sleep(0.2)  # the first half is in the server's buffers
        process.signal(signal.SIGKILL)
        process.wait_exit(10)
        with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
            client.send(body[len(body) // 2:] + b".\r\n")
            client.getreply()
        client.close()
    finally:
        process.close()
    assert spooled_from(database, account.address) == []
    assert outbound(redis_url, redis_prefix) == []


def test_redis_down_at_end_of_data_gives_451_then_250_once_it_returns(
        database_url: str, database: Database, account: Account, own_redis: PrivateRedis,
        tmp_path: Path):
    prefix = f"prtest:{secrets.token_hex(6)}:"
    process, port = start_msa(database_url, own_redis.url, prefix, tmp_path)
    try:
        with authenticated(port, account) as client:
            assert client.mail(account.address)[0] == 250
            assert client.rcpt("friend@remote.example")[0] == 250
            own_redis.stop()
            code, reply = client.data(message(account.address))
            assert (code, reply[:5]) == (451, b"4.3.0")
            assert spooled_from(database, account.address) == []
            own_redis.start()
            # a client retries a 4xx; the first try after the restart may still find a
            # stale connection, which is one more 4xx, never a lost message
            for _attempt in range(5):
                client.rset()
                if client.mail(account.address)[0] == 250 and \
                        client.rcpt("friend@remote.example")[0] == 250:
                    code, reply = client.data(message(account.address))
                    if code == 250:
                        break
                time.sleep(0.2)
            assert code == 250, reply
    finally:
        process.close()
    queue_id = queue_id_of(reply)
    assert [s.queue_id for s in spooled_from(database, account.address)] == [queue_id]
    assert [e.queue_id for e in outbound(own_redis.url, prefix)] == [queue_id]


# --- Redis dying between the availability check and the enqueue (in-process, real parts)


class RedisDiesAfterCommit(Submitter):
    """The real pipeline; Redis is killed right after the spool commit, before the XADD."""

    def __init__(self, *args: Any, redis_server: PrivateRedis, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.redis_server = redis_server
        self.spooled: list[Spooled] = []

    def _publish(self, committed: Any) -> Any:
        # in the spool's thread, after its COMMIT and before the XADDs
        self.spooled.extend(spooled for _user_id, spooled in committed)
        self.redis_server.stop()
        return super()._publish(committed)


class AfterCommitRaises(RedisDiesAfterCommit):
    """A bug in the after-commit steps: they raise instead of returning their errors."""

    def _publish(self, committed: Any) -> Any:
        self.spooled.extend(spooled for _user_id, spooled in committed)
        raise RuntimeError("a bug after the COMMIT")


@pytest.fixture
def inprocess_msa(request: pytest.FixtureRequest, twisted_reactor: Any, database: Database,
                  own_redis: PrivateRedis,
                  tmp_path: Path) -> Iterator[tuple[int, RedisDiesAfterCommit, str]]:
    """The msa policy and engine on a real implicit-TLS port in this process's reactor
    (the submitter class is the test's parameter, RedisDiesAfterCommit by default)."""
    submitter_class = getattr(request, "param", RedisDiesAfterCommit)
    make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "localhost")
    prefix = f"prtest:{secrets.token_hex(6)}:"
    client = redis.Redis.from_url(own_redis.url, socket_timeout=5, socket_connect_timeout=5)
    pools = [ThreadPool(0, 2, name="msa-test-redis"), ThreadPool(0, 1, name="msa-test-dkim")]
    for pool in pools:
        pool.start()
    limits = SendingLimits(client, prefix, messages_per_hour=100, recipients_per_day=100)
    submitter = submitter_class(
        database, Enqueuer(QueueClient(client, prefix), pools[0], twisted_reactor), limits,
        hostname="msa.test", sign_pool=pools[1], redis_pool=pools[0], reactor=twisted_reactor,
        redis_server=own_redis)
    policy = MSAPolicy(database, limiter=LoginRateLimiter(client, prefix, 10, 600),
                       limits=limits, submitter=submitter, redis_pool=pools[0],
                       reactor=twisted_reactor)
    factory = SMTPServerFactory(policy, ServerOptions(hostname="msa.test"), implicit_tls=True)
    tls = ServerTLS(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    port = in_reactor(lambda: twisted_reactor.listenTCP(
        0, wrap_implicit(factory, tls), interface="127.0.0.1"))
    try:
        yield port.getHost().port, submitter, prefix
    finally:
        in_reactor(port.stopListening)
        for pool in pools:
            pool.stop()
        client.close()


def test_redis_lost_after_commit_still_250_and_reconciler_enqueues_it(
        inprocess_msa: tuple[int, RedisDiesAfterCommit, str], database: Database,
        account: Account, own_redis: PrivateRedis):
    port, submitter, prefix = inprocess_msa
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=20, context=context) as client:
        client.login(account.address, PASSWORD)
        client.mail(account.address)
        client.rcpt("friend@remote.example")
        code, reply = client.data(message(account.address))
    assert code == 250, reply
    queue_id = queue_id_of(reply)
    assert [s.queue_id for s in submitter.spooled] == [queue_id]
    own_redis.start()
    assert outbound(own_redis.url, prefix) == []  # Redis came back empty: the signal is lost
    queue = QueueClient(connect(own_redis.url), prefix)
    later = datetime.now(UTC) + timedelta(seconds=1)
    try:
        # the reconciler's pass, as if queue_claim_idle had gone by
        database.run_sync(reconcile_batch, queue, later, later)
    finally:
        queue.redis.close()
    entries = [e for e in outbound(own_redis.url, prefix) if e.queue_id == queue_id]
    assert len(entries) == 1
    assert set(entries[0].recipient_ids) == set(submitter.spooled[0].recipient_ids)


@pytest.mark.parametrize("inprocess_msa", [AfterCommitRaises], indirect=True)
def test_a_raise_after_commit_still_250_and_reconciler_enqueues_it(
        inprocess_msa: tuple[int, RedisDiesAfterCommit, str], database: Database,
        account: Account, own_redis: PrivateRedis):
    # the group commit hands back the exception of its after-commit step in place of the
    # result: the message is committed, so the client must hear 250, not 451 (a retry
    # would send it twice), and the reconciler enqueues it as for a failed XADD
    port, submitter, prefix = inprocess_msa
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=20, context=context) as client:
        client.login(account.address, PASSWORD)
        client.mail(account.address)
        client.rcpt("friend@remote.example")
        code, reply = client.data(message(account.address))
    assert code == 250, reply
    queue_id = queue_id_of(reply)
    assert [s.queue_id for s in submitter.spooled] == [queue_id]  # the raise was reached
    assert [s.queue_id for s in spooled_from(database, account.address)] == [queue_id]
    assert outbound(own_redis.url, prefix) == []
    queue = QueueClient(connect(own_redis.url), prefix)
    later = datetime.now(UTC) + timedelta(seconds=1)
    try:
        database.run_sync(reconcile_batch, queue, later, later)
    finally:
        queue.redis.close()
    entries = [e for e in outbound(own_redis.url, prefix) if e.queue_id == queue_id]
    assert len(entries) == 1
