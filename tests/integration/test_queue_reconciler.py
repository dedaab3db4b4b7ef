"""The reconciler on real PostgreSQL and Redis: Redis may lose all, the spool loses nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.orm import Session
from twisted.python.threadpool import ThreadPool

from postroom.config import load_settings
from postroom.queue.envelope import Envelope, decode
from postroom.queue.reconciler import Enqueuer, Reconciler, enqueue_after_commit
from postroom.queue.streams import QueueClient, connect
from postroom.store import spool
from tests.support.ports import free_port
from tests.support.redisdb import in_reactor, wait_until

CLAIM_IDLE = 0.2


def spool_message(database: Any, recipients: list[tuple[str, str]], *,
                  enqueued: bool = True) -> tuple[str, list[int]]:
    """Commit a spooled message; its queue id and recipient ids."""

    def work(session: Session) -> tuple[str, list[int]]:
        qid = spool.create_spool(
            session, kind="inbound", mail_from="sender@example.org",
            recipients=[(address, stream, None, None) for address, stream in recipients],
            message=b"Subject: hi\r\n\r\nhello\r\n",
            enqueued_at=datetime.now(UTC) if enqueued else None)
        return qid, [r.id for r in spool.get_spool(session, qid).recipients]

    result: tuple[str, list[int]] = database.run_sync(work)
    return result


def entries(queue: QueueClient, stream: str) -> list[Envelope]:
    return [decode(fields) for _id, fields in queue.redis.xrange(queue.stream_key(stream))]


def enqueued_at(database: Any, queue_id: str) -> dict[int, datetime | None]:
    info = database.run_sync(spool.get_spool, queue_id)
    return {r.id: r.enqueued_at for r in info.recipients}


@pytest.fixture
def settings() -> Any:
    return load_settings({}).replace(queue_claim_idle=CLAIM_IDLE, reconcile_interval=3600.0)


@pytest.fixture
def private_queue(private_redis: str) -> Iterator[QueueClient]:
    client = connect(private_redis)
    yield QueueClient(client, "postroom:")
    client.close()


@pytest.fixture
def reconciler(twisted_reactor, database, clean_db, private_queue,
               settings) -> Iterator[Reconciler]:
    made = Reconciler(database, private_queue, settings, wake_poll_interval=0.05,
                      reactor=twisted_reactor)
    yield made
    in_reactor(made.stop)


def test_after_flushall_every_committed_pending_recipient_is_enqueued_and_nothing_else(
        database, reconciler, private_queue):
    q1, (a, b) = spool_message(database, [("a@example.com", "deliver"),
                                          ("b@example.com", "deliver")])
    q2, (c,) = spool_message(database, [("c@example.net", "outbound")])
    delivered, (d,) = spool_message(database, [("d@example.com", "deliver")])
    _later, (e,) = spool_message(database, [("e@example.net", "outbound")])
    _failed, (f,) = spool_message(database, [("f@example.net", "outbound")])
    database.run_sync(spool.mark_delivered, d)
    database.run_sync(spool.mark_deferred, e, "451 try later",
                      datetime.now(UTC) + timedelta(hours=1))
    database.run_sync(spool.mark_failed, f, "550 no such user")
    for qid, rids, stream in ((q1, (a, b), "deliver"), (q2, (c,), "outbound"),
                              (delivered, (d,), "deliver")):
        private_queue.enqueue(stream, Envelope(qid, rids, stream))
    private_queue.redis.flushall()
    time.sleep(CLAIM_IDLE + 0.05)

    assert in_reactor(reconciler.reconcile) == 3
    assert entries(private_queue, "deliver") == [Envelope(q1, (a, b), "deliver")]
    assert entries(private_queue, "outbound") == [Envelope(q2, (c,), "outbound")]
    assert all(at is not None for at in enqueued_at(database, q1).values())


def test_work_still_in_the_stream_is_not_enqueued_twice(database, reconciler, private_queue):
    qid, rids = spool_message(database, [("a@example.com", "deliver")])
    private_queue.enqueue("deliver", Envelope(qid, tuple(rids), "deliver"))
    time.sleep(CLAIM_IDLE + 0.05)
    assert in_reactor(reconciler.reconcile) == 0
    assert private_queue.length("deliver") == 1


def test_recently_enqueued_work_is_left_to_the_normal_path(database, reconciler, private_queue):
    spool_message(database, [("a@example.com", "deliver")])  # enqueued_at=now, but Redis lost it
    assert in_reactor(reconciler.reconcile) == 0
    time.sleep(CLAIM_IDLE + 0.05)
    assert in_reactor(reconciler.reconcile) == 1


def test_start_reconciles_at_once(database, reconciler, private_queue):
    qid, rids = spool_message(database, [("a@example.com", "deliver")], enqueued=False)
    assert in_reactor(reconciler.start) == 1
    assert entries(private_queue, "deliver") == [Envelope(qid, tuple(rids), "deliver")]


def test_a_due_wakeup_triggers_a_pass_before_the_interval(database, reconciler, private_queue):
    in_reactor(reconciler.start)
    qid, (rid,) = spool_message(database, [("x@example.net", "outbound")])
    due = datetime.now(UTC) + timedelta(seconds=0.3)
    database.run_sync(spool.mark_deferred, rid, "451 greylisted", due)
    private_queue.wake_at("outbound", qid, due.timestamp())
    wait_until(lambda: entries(private_queue, "outbound"), timeout=5)
    assert entries(private_queue, "outbound") == [Envelope(qid, (rid,), "outbound", attempt=1)]


def test_a_pass_with_redis_down_marks_nothing(twisted_reactor, database, clean_db, settings):
    down = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2,
                       retry=Retry(NoBackoff(), 0))
    reconciler = Reconciler(database, QueueClient(down, "postroom:"), settings,
                            reactor=twisted_reactor)
    qid, _ = spool_message(database, [("a@example.com", "deliver")], enqueued=False)
    with pytest.raises(redis.ConnectionError):
        in_reactor(reconciler.reconcile)
    assert set(enqueued_at(database, qid).values()) == {None}


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    threads = ThreadPool(minthreads=0, maxthreads=1, name="test-enqueue")
    threads.start()
    yield threads
    threads.stop()


def test_enqueue_after_commit_returns_the_entry_id(twisted_reactor, pool, queue_client):
    entry_id = in_reactor(enqueue_after_commit, queue_client, pool,
                          Envelope("Q1", (1,), "deliver"), reactor=twisted_reactor)
    assert [eid for eid, _ in queue_client.redis.xrange(queue_client.stream_key("deliver"))] \
        == [entry_id]


def test_enqueue_after_commit_with_redis_down_is_none_not_an_error(twisted_reactor, pool):
    down = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2,
                       retry=Retry(NoBackoff(), 0))
    result = in_reactor(enqueue_after_commit, QueueClient(down, "postroom:"), pool,
                        Envelope("Q1", (1,), "deliver"), reactor=twisted_reactor)
    assert result is None


def test_enqueuer_reports_redis_unavailable_before_a_commit(twisted_reactor, pool):
    down = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2,
                       retry=Retry(NoBackoff(), 0))
    enqueuer = Enqueuer(QueueClient(down, "postroom:"), pool, twisted_reactor)
    assert in_reactor(enqueuer.available) is False


def test_enqueuer_reports_redis_available(twisted_reactor, pool, queue_client):
    assert in_reactor(Enqueuer(queue_client, pool, twisted_reactor).available) is True


def test_enqueuer_trusts_a_recent_success_and_pings_again_after_a_failure(twisted_reactor, pool,
                                                                        queue_client):
    pings = []
    real_ping = queue_client.ping

    def counted_ping():
        pings.append(1)
        return real_ping()

    queue_client.ping = counted_ping
    enqueuer = Enqueuer(queue_client, pool, twisted_reactor, fresh=30.0)
    assert in_reactor(enqueuer.available) is True
    assert in_reactor(enqueuer.available) is True
    assert in_reactor(enqueuer.after_commit, Envelope("Q1", (1,), "deliver")) is not None
    assert in_reactor(enqueuer.available) is True
    assert len(pings) == 1  # the ping and the XADD answered: no second ping

    # a failed XADD forgets the success: the next message is asked about with a ping
    queue_client.redis.connection_pool.disconnect()
    broken = QueueClient(redis.Redis(host="127.0.0.1", port=free_port(),
                                     socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)),
                         "postroom:")
    enqueuer.queue = broken
    assert in_reactor(enqueuer.after_commit, Envelope("Q2", (2,), "deliver")) is None
    assert in_reactor(enqueuer.available) is False


def test_enqueuer_pings_again_once_the_success_is_stale(twisted_reactor, pool, queue_client):
    pings = []
    real_ping = queue_client.ping
    queue_client.ping = lambda: (pings.append(1), real_ping())[1]
    enqueuer = Enqueuer(queue_client, pool, twisted_reactor, fresh=0.0)
    assert in_reactor(enqueuer.available) is True
    assert in_reactor(enqueuer.available) is True
    assert len(pings) == 2


def test_enqueue_in_a_worker_thread_reports_and_notes_like_after_commit(twisted_reactor, pool,
                                                                      queue_client):
    enqueuer = Enqueuer(queue_client, pool, twisted_reactor, fresh=30.0)
    envelope = Envelope("Q1", (1,), "deliver")
    entry_id = enqueuer.enqueue_blocking(envelope)  # what Database.run_then's thread calls
    assert in_reactor(lambda: enqueuer.enqueued_in_thread(envelope, entry_id)) == entry_id
    assert [eid for eid, _ in queue_client.redis.xrange(queue_client.stream_key("deliver"))] \
        == [entry_id]
    assert in_reactor(enqueuer.available) is True  # the XADD counts as a recent success

    # a Redis error is None (the reconciler's job), and the next message pings again
    outcome = redis.ConnectionError("gone")
    assert in_reactor(lambda: enqueuer.enqueued_in_thread(envelope, outcome)) is None
    assert enqueuer._ok_at is None
    with pytest.raises(ValueError):  # anything else is a bug, not a Redis outage
        enqueuer.enqueued_in_thread(envelope, ValueError("bug"))
