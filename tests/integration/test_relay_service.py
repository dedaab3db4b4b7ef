"""Real `mta` processes relaying the `outbound` stream to an SMTP sink: retries and crashes."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from postroom.net.tls import make_self_signed
from postroom.queue.envelope import Envelope
from postroom.queue.streams import QueueClient
from postroom.store import domains, spool
from tests.support.dns import LOOPBACK_ENV
from tests.support.procs import runtime_argv
from tests.support.redisdb import wait_until
from tests.support.smtpsink import Received, SinkConfig, SMTPSink

SERVICE = "postroom_mta.main:SERVICE"
MESSAGE = b"From: alice@one.test\r\nTo: bob@two.test\r\nSubject: via mta\r\n\r\nhello\r\n"


@pytest.fixture
def db(database, clean_db):
    database.run_sync(domains.add_domain, "one.test")
    return database


@pytest.fixture
def sink(twisted_reactor: Any, dns_server: Any):
    dns_server.load({"two.test": {"MX": [(10, "mx.two.test")]},
                     "mx.two.test": {"A": ["127.0.0.1"]}})
    server = SMTPSink()
    yield server
    server.stop()


@pytest.fixture
def mta_env(tmp_path: Path, database_url, redis_url, redis_prefix, dns_server, sink):
    make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "mx.one.test")
    return {"POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
            "POSTROOM_REDIS_PREFIX": redis_prefix, "POSTROOM_DB_POOL_SIZE": "3",
            "POSTROOM_HOSTNAME": "mx.one.test", "POSTROOM_SMTP_OUTBOUND_PORT": str(sink.port),
            "POSTROOM_QUEUE_CLAIM_IDLE": "2s", "POSTROOM_RECONCILE_INTERVAL": "1s",
            "POSTROOM_RETRY_INITIAL": "1s", "POSTROOM_RETRY_MAX": "2s",
            "POSTROOM_SHUTDOWN_GRACE": "5s", "POSTROOM_TLS_CERT_FILE": str(tmp_path / "cert.pem"),
            "POSTROOM_TLS_KEY_FILE": str(tmp_path / "key.pem"), **dns_server.env,
            **LOOPBACK_ENV}


def spool_and_enqueue(db, queue: QueueClient, address: str) -> tuple[str, int]:
    qid = db.run_sync(spool.create_spool, kind="submission", mail_from="alice@one.test",
                      recipients=[(address, "outbound", None, None)], message=MESSAGE,
                      enqueued_at=datetime.now(UTC))
    [rcpt] = db.run_sync(spool.get_spool, qid).recipients
    queue.enqueue("outbound", Envelope(qid, (rcpt.id,), "outbound"))
    return qid, rcpt.id


def state(db, qid: str) -> str:
    return str(db.run_sync(spool.get_spool, qid).recipients[0].state)


@pytest.mark.slow
def test_mta_retries_a_4xx_via_the_reconciler_and_stops_on_sigterm(
        db, sink, mta_env, service_process, redis_client, redis_prefix):
    replies = itertools.chain([b"451 4.7.1 greylisted"], itertools.repeat(b"250 2.1.5 ok"))
    sink.config = SinkConfig(rcpt=lambda _address: next(replies))
    mta = service_process("mta", mta_env, argv=runtime_argv(SERVICE))
    qid, _rid = spool_and_enqueue(db, QueueClient(redis_client, redis_prefix), "bob@two.test")
    wait_until(lambda: state(db, qid) == "delivered", timeout=20)
    assert [r.data for r in sink.received] == [MESSAGE]
    assert db.run_sync(spool.get_spool, qid).recipients[0].attempts == 1
    assert mta.stop() == 0
    results = [e.get("result") for e in mta.log_events() if e.get("queue_id") == qid]
    assert "deferred" in results and "delivered" in results


@pytest.mark.slow
def test_a_worker_killed_mid_delivery_has_its_entry_delivered_by_another(
        db, sink, mta_env, service_process, redis_client, redis_prefix):
    def hang_first(received: Received) -> bytes | None:
        return None if not sink.hung else b"250 2.0.0 queued"

    sink.config = SinkConfig(data=hang_first)
    first = service_process("mta", mta_env, argv=runtime_argv(SERVICE))
    qid, _rid = spool_and_enqueue(db, QueueClient(redis_client, redis_prefix), "bob@two.test")
    wait_until(lambda: sink.hung, timeout=15)
    assert first.proc is not None
    first.proc.kill()  # SIGKILL, by the PID we started: no chance to hand anything back
    first.proc.wait(10)
    assert state(db, qid) == "pending"
    second = service_process("mta", mta_env, argv=runtime_argv(SERVICE))
    wait_until(lambda: state(db, qid) == "delivered", timeout=20)
    # at least once: the hung copy may count as a duplicate at the remote end, never a loss
    assert [r.data for r in sink.received] == [MESSAGE]
    assert any(e.get("event") == "queue entries claimed" for e in second.log_events())
