"""Group commit of spool rows (postroom.store.groupcommit) on a real PostgreSQL and Redis:
messages finishing together share one transaction, each caller hears back only once its
own rows are committed, a bad member fails alone, and a dead database fails every member."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from twisted.internet.defer import DeferredList

from postroom.metrics import Metrics
from postroom.queue import counters
from postroom.queue.envelope import Envelope
from postroom.queue.streams import QueueClient, connect
from postroom.store import spool
from postroom.store.db import UNAVAILABLE, Database, StoreSession
from postroom.store.groupcommit import GroupCommit
from postroom.store.queueid import new_queue_id
from tests.support.ports import free_port
from tests.support.redisdb import PrivateRedis, in_reactor

MESSAGE = b"From: a@example.com\r\nSubject: group\r\n\r\nbody\r\n"


def spool_one(session: StoreSession, *, queue_id: str, address: str) -> tuple[list[int], int]:
    """The spool rows of one message, and the id of the transaction that wrote them."""
    _queue_id, ids = spool.create_spool_ids(
        session, kind="inbound", mail_from="a@example.com",
        recipients=[(address, "deliver", None, None)], message=MESSAGE + queue_id.encode(),
        queue_id=queue_id)
    return ids, int(session.execute(text("SELECT txid_current()")).scalar_one())


@pytest.fixture
def observer(database_url: str) -> Iterator[Engine]:
    """A connection of its own: what another process sees committed."""
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def visible(engine: Engine, queue_id: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM spool_messages WHERE queue_id = :q"),
                            {"q": queue_id}).scalar_one() == 1


def samples(metrics: Metrics, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metrics.registry.collect() if family.name == name
            for s in family.samples}


def submit_together(group: GroupCommit[Any, Any, Any], members: Sequence[dict[str, Any]],
                    on_each: Any = None) -> list[tuple[bool, Any]]:
    """Submit every member in one turn of the reactor (all finishing DATA at once); each
    one's (success, value), in order, once all have fired."""
    def go() -> Any:
        deferreds = []
        for kwargs in members:
            d = group.submit(kwargs["queue_id"], len(MESSAGE), **kwargs)
            if on_each is not None:
                d.addCallback(on_each, kwargs["queue_id"])
            deferreds.append(d)
        return DeferredList(deferreds, consumeErrors=True)

    return list(in_reactor(go, timeout=60))


def test_messages_finishing_together_share_one_transaction_and_each_hears_after_its_commit(
        database: Database, clean_db: str, observer: Engine, twisted_reactor: Any):
    metrics = Metrics("test", process_metrics=False)
    published: list[list[str]] = []

    def after(committed: Sequence[tuple[str, Any]]) -> list[str]:
        published.append([queue_id for queue_id, _ in committed])
        return [f"entry-{queue_id}" for queue_id, _ in committed]

    group = GroupCommit(database, spool_one, after, metrics=metrics)
    members = [{"queue_id": new_queue_id(), "address": f"u{i}@example.com"} for i in range(10)]
    seen_at_reply: dict[str, bool] = {}

    def replied(result: Any, queue_id: str) -> Any:
        # what the front door does next is write 250: the rows must be visible by now
        seen_at_reply[queue_id] = visible(observer, queue_id)
        return result

    results = submit_together(group, members, replied)
    assert all(ok for ok, _ in results)
    assert seen_at_reply == {m["queue_id"]: True for m in members}
    transactions = [value[0][1] for _, value in results]
    # the first found no commit in flight and went alone; the other nine waited for it
    assert transactions[1:] == [transactions[1]] * 9
    assert transactions[0] != transactions[1]
    assert published == [[members[0]["queue_id"]], [m["queue_id"] for m in members[1:]]]
    assert [value[1] for _, value in results] == [f"entry-{m['queue_id']}" for m in members]
    counts = samples(metrics, "postroom_spool_commits")
    assert counts[("postroom_spool_commits_total", (("result", "ok"),))] == 2
    sizes = samples(metrics, "postroom_spool_commit_messages")
    assert sizes[("postroom_spool_commit_messages_sum", ())] == 10
    assert sizes[("postroom_spool_commit_messages_bucket", (("le", "1.0"),))] == 1
    assert sizes[("postroom_spool_commit_messages_bucket", (("le", "8.0"),))] == 1
    assert sizes[("postroom_spool_commit_messages_bucket", (("le", "16.0"),))] == 2


def test_a_batch_is_bounded_by_messages_and_bytes(database: Database, clean_db: str,
                                                  twisted_reactor: Any):
    group = GroupCommit(database, spool_one, lambda c: [None] * len(c), max_messages=3,
                        max_bytes=len(MESSAGE) * 2)
    members = [{"queue_id": new_queue_id(), "address": f"u{i}@example.com"} for i in range(5)]
    results = submit_together(group, members)
    transactions = [value[0][1] for _, value in results]
    # alone (nothing in flight), then two by the byte bound, then the last two
    assert len(set(transactions)) == 3
    assert transactions[1] == transactions[2] and transactions[3] == transactions[4]


def test_one_bad_message_does_not_fail_the_others(database: Database, clean_db: str,
                                                   observer: Engine, twisted_reactor: Any):
    metrics = Metrics("test", process_metrics=False)
    group = GroupCommit(database, spool_one, lambda c: ["queued"] * len(c), metrics=metrics)
    taken = new_queue_id()
    database.run_sync(spool_one, queue_id=taken, address="first@example.com")
    members = [{"queue_id": new_queue_id(), "address": f"u{i}@example.com"} for i in range(5)]
    members[2] = {"queue_id": taken, "address": "dup@example.com"}  # unique queue_id refused
    results = submit_together(group, members)
    assert [ok for ok, _ in results] == [True, True, False, True, True]
    assert "unique" in str(results[2][1].value).lower()
    assert [value[1] for ok, value in results if ok] == ["queued"] * 4
    for member in members[:2] + members[3:]:
        assert visible(observer, member["queue_id"])
    with observer.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM spool_recipients "
                                 "WHERE address = 'dup@example.com'")).scalar_one() == 0
    counts = samples(metrics, "postroom_spool_commits")
    assert counts[("postroom_spool_commits_total", (("result", "split"),))] == 1


def test_database_down_fails_every_member_with_an_unavailable_error(twisted_reactor: Any):
    dead = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/postroom", pool_size=2)
    dead.start()
    try:
        metrics = Metrics("test", process_metrics=False)
        group = GroupCommit(dead, spool_one, lambda c: [None] * len(c), metrics=metrics)
        members = [{"queue_id": new_queue_id(), "address": f"u{i}@example.com"}
                   for i in range(4)]
        results = submit_together(group, members)
    finally:
        dead.stop()
    assert [ok for ok, _ in results] == [False] * 4
    assert all(isinstance(failure.value, UNAVAILABLE) for _, failure in results)
    counts = samples(metrics, "postroom_spool_commits")
    # the alone one and the three together: neither split into retries
    assert counts[("postroom_spool_commits_total", (("result", "failed"),))] == 2
    assert ("postroom_spool_commits_total", (("result", "split"),)) not in counts


def test_off_commits_each_message_alone(database: Database, clean_db: str,
                                        twisted_reactor: Any):
    group = GroupCommit(database, spool_one, lambda c: [None] * len(c), max_messages=1)
    members = [{"queue_id": new_queue_id(), "address": f"u{i}@example.com"} for i in range(4)]
    results = submit_together(group, members)
    assert len({value[0][1] for _, value in results}) == 4


def test_pipelined_enqueue_gives_each_entry_its_id(queue_client: QueueClient):
    envelopes = [Envelope(queue_id=new_queue_id(), recipient_ids=(i, i + 100), stream="deliver",
                          disposition="inbox") for i in range(1, 4)]
    ids = queue_client.enqueue_many(envelopes)
    assert all(isinstance(i, str) for i in ids)
    stream = queue_client.redis.xrange(queue_client.stream_key("deliver"))
    assert [entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            for entry_id, _ in stream] == ids
    assert queue_client.queued("deliver", [1, 2, 3, 101, 102, 103]) == {1, 2, 3, 101, 102, 103}


def test_pipelined_enqueue_loads_the_script_when_redis_lost_it():
    server = PrivateRedis()
    server.start()
    try:
        client = connect(server.url)
        queue = QueueClient(client, "prtest:noscript:")
        client.script_flush()  # as after a restart: EVALSHA answers NOSCRIPT
        envelopes = [Envelope(queue_id=new_queue_id(), recipient_ids=(i,), stream="deliver")
                     for i in range(1, 4)]
        ids = queue.enqueue_many(envelopes)
        assert all(isinstance(i, str) for i in ids), ids
        assert len(client.xrange(queue.stream_key("deliver"))) == 3
        client.close()
    finally:
        server.stop()


def test_counts_ride_the_enqueue_round_trip_and_are_not_sent_twice_after_noscript():
    """The msa's sending counts go on the XADDs' pipeline (QueueClient.enqueue_many_with):
    a single entry too, and an entry retried after NOSCRIPT does not count its message
    twice (a limit that counted double would refuse early; one that lost counts, late)."""
    server = PrivateRedis()
    server.start()
    try:
        client = connect(server.url)
        queue = QueueClient(client, "prtest:with:")
        key = "prtest:with:count"
        for flush in (False, True):
            if flush:
                client.script_flush()  # EVALSHA answers NOSCRIPT: the entry goes again
            envelope = Envelope(queue_id=new_queue_id(), recipient_ids=(1,), stream="outbound")
            ids, extra = queue.enqueue_many_with(
                [envelope], lambda pipe: counters.queue_add(pipe, [(key, 3, 100)]))
            assert all(isinstance(i, str) for i in ids), ids
            assert not any(isinstance(r, Exception) for r in extra) and len(extra) == 2
        assert int(client.get(key)) == 6 and 0 < client.ttl(key) <= 100
        assert len(client.xrange(queue.stream_key("outbound"))) == 2
        client.close()
    finally:
        server.stop()
