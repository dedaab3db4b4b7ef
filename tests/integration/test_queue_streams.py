"""QueueClient against a real Redis: enqueue, read, ack, claims, groups, wake-ups."""

from __future__ import annotations

import time

import pytest

from postroom.queue.envelope import Envelope, decode
from postroom.queue.streams import QueueClient

GROUP = "workers"


def env(queue_id: str = "Q1", *rids: int, stream: str = "deliver") -> Envelope:
    return Envelope(queue_id=queue_id, recipient_ids=rids or (1,), stream=stream)


def test_enqueued_entry_is_read_by_a_group_consumer(queue_client: QueueClient):
    queue_client.ensure_group("deliver", GROUP)
    entry_id = queue_client.enqueue("deliver", env("Q1", 7, 8))
    [(read_id, fields)] = queue_client.read("deliver", GROUP, "c1", count=10, block_ms=100)
    assert read_id == entry_id
    assert decode(fields) == env("Q1", 7, 8)


def test_entries_enqueued_before_the_group_exists_are_still_read(queue_client: QueueClient):
    queue_client.enqueue("deliver", env("Q1"))
    queue_client.ensure_group("deliver", GROUP)
    assert len(queue_client.read("deliver", GROUP, "c1", count=10, block_ms=100)) == 1


def test_ack_removes_the_entry_from_pending_and_from_the_stream(queue_client: QueueClient):
    queue_client.ensure_group("deliver", GROUP)
    entry_id = queue_client.enqueue("deliver", env("Q1", 5))
    queue_client.read("deliver", GROUP, "c1", count=10, block_ms=100)
    assert queue_client.pending_count("deliver", GROUP) == 1
    assert queue_client.ack("deliver", GROUP, [entry_id], [5]) == 1
    assert queue_client.pending_count("deliver", GROUP) == 0
    assert queue_client.length("deliver") == 0
    assert queue_client.queued("deliver", [5]) == set()


def test_ack_entries_acknowledges_several_entries_in_one_call(queue_client: QueueClient):
    queue_client.ensure_group("deliver", GROUP)
    first = queue_client.enqueue("deliver", env("Q1", 5, 6))
    second = queue_client.enqueue("deliver", env("Q2", 7))
    kept = queue_client.enqueue("deliver", env("Q3", 9))
    # recipient 6 was enqueued again meanwhile: its newer entry keeps it in `queued`
    newer = queue_client.enqueue("deliver", env("Q4", 6))
    queue_client.read("deliver", GROUP, "c1", count=10, block_ms=100)
    assert queue_client.ack_entries("deliver", GROUP, [(first, (5, 6)), (second, (7,))]) == 2
    assert queue_client.pending_count("deliver", GROUP) == 2
    assert [eid for eid, _ in queue_client.redis.xrange(
        queue_client.stream_key("deliver"))] == [kept, newer]
    assert queue_client.queued("deliver", [5, 6, 7, 9]) == {6, 9}
    assert queue_client.ack_entries("deliver", GROUP, []) == 0


def test_ensure_group_twice_is_harmless(queue_client: QueueClient):
    assert queue_client.ensure_group("outbound", GROUP) is True
    assert queue_client.ensure_group("outbound", GROUP) is False


def test_read_recreates_a_group_that_redis_lost(queue_client: QueueClient, redis_client):
    queue_client.ensure_group("deliver", GROUP)
    redis_client.delete(queue_client.stream_key("deliver"))
    assert queue_client.read("deliver", GROUP, "c1", count=1, block_ms=10) == []
    queue_client.enqueue("deliver", env("Q2"))
    assert len(queue_client.read("deliver", GROUP, "c1", count=1, block_ms=100)) == 1


def test_an_unacked_entry_is_claimed_by_another_consumer_after_min_idle(
        queue_client: QueueClient):
    queue_client.ensure_group("deliver", GROUP)
    entry_id = queue_client.enqueue("deliver", env("Q1"))
    queue_client.read("deliver", GROUP, "dead", count=1, block_ms=100)
    assert queue_client.claim_stale("deliver", GROUP, "alive", min_idle_ms=10_000, count=10) == []
    time.sleep(0.06)
    claimed = queue_client.claim_stale("deliver", GROUP, "alive", min_idle_ms=50, count=10)
    assert [eid for eid, _ in claimed] == [entry_id]


def test_touch_keeps_a_working_consumers_entry_from_being_claimed(queue_client: QueueClient):
    queue_client.ensure_group("deliver", GROUP)
    entry_id = queue_client.enqueue("deliver", env("Q1"))
    queue_client.read("deliver", GROUP, "busy", count=1, block_ms=100)
    time.sleep(0.06)
    assert queue_client.touch("deliver", GROUP, "busy", [entry_id]) == 1
    assert queue_client.claim_stale("deliver", GROUP, "other", min_idle_ms=50, count=10) == []


def test_claim_skips_entries_deleted_while_pending(queue_client: QueueClient, redis_client):
    queue_client.ensure_group("deliver", GROUP)
    entry_id = queue_client.enqueue("deliver", env("Q1"))
    queue_client.read("deliver", GROUP, "dead", count=1, block_ms=100)
    redis_client.xdel(queue_client.stream_key("deliver"), entry_id)
    time.sleep(0.02)
    assert queue_client.claim_stale("deliver", GROUP, "alive", min_idle_ms=1, count=10) == []
    assert queue_client.pending_count("deliver", GROUP) == 0


def test_queued_names_recipients_whose_entry_is_still_in_the_stream(queue_client: QueueClient,
                                                                    redis_client):
    queue_client.enqueue("deliver", env("Q1", 1, 2))
    gone = queue_client.enqueue("deliver", env("Q2", 3))
    redis_client.xdel(queue_client.stream_key("deliver"), gone)
    assert queue_client.queued("deliver", [1, 2, 3, 4]) == {1, 2}


def test_ack_of_an_older_entry_keeps_a_newer_entrys_recipients_queued(queue_client: QueueClient):
    queue_client.ensure_group("deliver", GROUP)
    old = queue_client.enqueue("deliver", env("Q1", 1))
    queue_client.enqueue("deliver", env("Q1", 1))
    queue_client.read("deliver", GROUP, "c1", count=10, block_ms=100)
    queue_client.ack("deliver", GROUP, [old], [1])
    assert queue_client.queued("deliver", [1]) == {1}


def test_enqueue_refuses_an_envelope_for_another_stream(queue_client: QueueClient):
    with pytest.raises(ValueError):
        queue_client.enqueue("deliver", env("Q1", stream="outbound"))


def test_due_wakeups_returns_only_due_members_once(queue_client: QueueClient):
    now = time.time()
    queue_client.wake_at("outbound", "QDUE", now - 1)
    queue_client.wake_at("outbound", "QLATER", now + 3600)
    assert queue_client.due_wakeups("outbound", now) == ["QDUE"]
    assert queue_client.due_wakeups("outbound", now) == []
    assert queue_client.next_wakeup("outbound") == pytest.approx(now + 3600)


def test_an_earlier_wakeup_is_never_postponed_by_a_later_one(queue_client: QueueClient):
    now = time.time()
    queue_client.wake_at("outbound", "Q1", now + 10)
    queue_client.wake_at("outbound", "Q1", now + 100)
    assert queue_client.next_wakeup("outbound") == pytest.approx(now + 10)


def test_blocking_read_is_capped_below_the_clients_socket_timeout(redis_url, redis_prefix):
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        queue = QueueClient(client, redis_prefix)
        assert queue.max_block_ms == 1000
        queue.ensure_group("deliver", GROUP)
        # bytes replies (no decode_responses) work too
        queue.enqueue("deliver", env("Q1"))
        [(entry_id, fields)] = queue.read("deliver", GROUP, "c1", count=1, block_ms=5000)
        assert isinstance(entry_id, str) and decode(fields).queue_id == "Q1"
    finally:
        client.close()


def test_prefix_fixture_removes_every_key_after_the_test(redis_url):
    import redis

    from tests.support.redisdb import delete_prefix

    client = redis.Redis.from_url(redis_url)
    try:
        queue = QueueClient(client, "prtest:cleanup-check:")
        queue.enqueue("deliver", env("Q1"))
        queue.wake_at("outbound", "Q1", 1.0)
        assert delete_prefix(client, "prtest:cleanup-check:") == 3
        assert list(client.scan_iter(match="prtest:cleanup-check:*")) == []
    finally:
        client.close()


def test_read_understands_resp3_replies(redis_url, redis_prefix):
    import redis

    client = redis.Redis.from_url(redis_url, protocol=3, decode_responses=True)
    try:
        queue = QueueClient(client, redis_prefix)
        queue.ensure_group("deliver", GROUP)
        entry_id = queue.enqueue("deliver", env("Q1", 3))
        [(read_id, fields)] = queue.read("deliver", GROUP, "c1", count=5, block_ms=100)
        assert read_id == entry_id and decode(fields) == env("Q1", 3)
    finally:
        client.close()
