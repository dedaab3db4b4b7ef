"""The msa's per-account sending limits over a real Redis, with a hand-moved clock."""

from __future__ import annotations

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from postroom_msa.limits import DAY, HOUR, LimitUnavailable, SendingLimits
from tests.support.ports import free_port


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limits(client: redis.Redis, prefix: str, clock: Clock) -> SendingLimits:
    return SendingLimits(client, prefix, messages_per_hour=3, recipients_per_day=5, clock=clock)


def test_messages_are_allowed_up_to_the_hourly_limit(redis_client, redis_prefix):
    sl = limits(redis_client, redis_prefix, Clock(100 * HOUR))
    for _ in range(3):
        assert sl.message_allowed(7)
        sl.record(7, 1)
    assert not sl.message_allowed(7)
    assert sl.message_allowed(8)  # another account is not affected


def test_the_hourly_limit_frees_up_as_the_window_slides(redis_client, redis_prefix):
    clock = Clock(100 * HOUR + HOUR / 2)
    sl = limits(redis_client, redis_prefix, clock)
    for _ in range(3):
        sl.record(7, 1)
    clock.now += HOUR  # the three are now in the previous bucket, half overlapping
    assert sl.usage(7).messages_last_hour == pytest.approx(1.5)
    assert sl.message_allowed(7)
    clock.now += HOUR
    assert sl.usage(7).messages_last_hour == 0


def test_recipients_count_against_the_daily_limit(redis_client, redis_prefix):
    sl = limits(redis_client, redis_prefix, Clock(100 * DAY))
    sl.record(7, 4)
    assert sl.recipients_allowed(7, 1)
    assert not sl.recipients_allowed(7, 2)


def test_counters_expire(redis_client, redis_prefix):
    sl = limits(redis_client, redis_prefix, Clock(100 * DAY))
    sl.record(7, 1)
    keys = list(redis_client.scan_iter(match=redis_prefix + "msa:sent:*"))
    assert len(keys) == 2
    assert all(0 < redis_client.ttl(k) <= 2 * DAY + 60 for k in keys)


def test_unreachable_redis_raises_limit_unavailable(redis_prefix):
    client = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1,
                         retry=Retry(NoBackoff(), 0))
    sl = limits(client, redis_prefix, Clock(100 * HOUR))
    with pytest.raises(LimitUnavailable):
        sl.message_allowed(7)
    client.close()


def test_a_group_commit_counts_each_message_against_its_own_account(
        redis_client, redis_prefix, database):
    """The after-commit step (Submitter._publish) counts on the XADDs' pipeline: each
    committed message of a group counts once, with its own recipients, for its own sender."""
    from twisted.python.threadpool import ThreadPool

    from postroom.queue.reconciler import Enqueuer
    from postroom.queue.streams import QueueClient
    from postroom_msa.lookups import Spooled
    from postroom_msa.submission import Submitter

    sl = limits(redis_client, redis_prefix, Clock(100 * DAY))
    pool = ThreadPool(1, 1)  # never started: _publish runs in the caller's thread
    submitter = Submitter(database, Enqueuer(QueueClient(redis_client, redis_prefix), pool,
                                             reactor=None), sl,  # type: ignore[arg-type]
                          hostname="msa.example", sign_pool=pool, redis_pool=pool,
                          reactor=None)  # type: ignore[arg-type]
    committed = [(7, Spooled("Q1", (1, 2))), (8, Spooled("Q2", (3,))), (7, Spooled("Q3", (4,)))]
    results = submitter._publish(committed)
    assert [usage_error for _, usage_error, _ in results] == [None, None, None]
    # each message its `outbound` entry, by id
    assert [[isinstance(outcome, str) for _, outcome in enqueued] for enqueued, _, _ in results] \
        == [[True], [True], [True]]
    # and the counters' values its INCRBYs left, for the account's next MAIL
    bucket_h, bucket_d = int(100 * DAY // HOUR), int(100 * DAY // DAY)
    msg7 = f"{redis_prefix}msa:sent:msg:7:{bucket_h}"
    rcpt7 = f"{redis_prefix}msa:sent:rcpt:7:{bucket_d}"
    assert results[0][2] == {msg7: 1, rcpt7: 2}
    assert results[2][2] == {msg7: 2, rcpt7: 3}
    seven, eight = sl.usage(7), sl.usage(8)
    assert (seven.messages_last_hour, seven.recipients_last_day) == (2, 3)
    assert (eight.messages_last_hour, eight.recipients_last_day) == (1, 1)
    assert not sl.recipients_allowed(7, 3) and sl.recipients_allowed(7, 2)


def test_a_recent_reading_answers_mail_and_commits_keep_it_current(redis_client, redis_prefix):
    """recent(): the process's last reading for FRESH seconds, kept up to date by the counts
    its commits' INCRBYs return (SendingLimits.counted), then Redis again."""
    clock = Clock(100 * HOUR + 10)
    sl = limits(redis_client, redis_prefix, clock)
    assert sl.recent(7) is None  # never read: ask Redis
    assert sl.remember(7, sl.read(7)).messages_last_hour == 0
    assert sl.recent(7) == sl.usage(7)
    # a commit: what its INCRBYs returned becomes the reading, and it is fresh again
    totals = {key: int(redis_client.incrby(key, amount))
              for key, amount, _ttl in sl.increments(7, 2)}
    clock.now += 0.9
    sl.counted(7, totals)
    clock.now += 0.9
    recent = sl.recent(7)
    assert recent is not None
    assert (recent.messages_last_hour, recent.recipients_last_day) == (1, 2)
    clock.now += 0.2  # older than FRESH: Redis again
    assert sl.recent(7) is None
    assert sl.recent(8) is None  # another account has its own reading


def test_a_reading_is_forgotten_when_a_count_failed_or_the_bucket_moved(redis_client,
                                                                        redis_prefix):
    clock = Clock(100 * HOUR + HOUR - 0.5)
    sl = limits(redis_client, redis_prefix, clock)
    sl.remember(7, sl.read(7))
    sl.counted(7, None)  # the usage count failed: not known any more
    assert sl.recent(7) is None
    sl.remember(7, sl.read(7))
    clock.now += 0.6  # the next hour: its previous bucket was not read as previous
    assert sl.recent(7) is None
    totals = {key: 1 for key, _amount, _ttl in sl.increments(7, 1)}
    sl.counted(7, totals)  # counted in a bucket the reading does not hold
    assert sl.recent(7) is None


def test_another_process_sending_is_seen_once_the_reading_is_older_than_fresh(
        redis_client, redis_prefix):
    """Two processes (two SendingLimits on one Redis): the hourly limit holds across them;
    one sees the other's messages at its next read, at most FRESH seconds later."""
    clock = Clock(100 * HOUR + 10)
    one, other = limits(redis_client, redis_prefix, clock), limits(redis_client, redis_prefix,
                                                                   clock)
    assert one.message_fits(one.remember(7, one.read(7)))
    for _ in range(3):
        other.record(7, 1)
    assert one.message_fits(one.recent(7))  # type: ignore[arg-type] - within FRESH
    clock.now += 1.0
    assert one.recent(7) is None
    assert not one.message_fits(one.remember(7, one.read(7)))
    # and a commit of the first process returns the counts with the other's in them
    totals = {key: int(redis_client.incrby(key, amount))
              for key, amount, _ttl in one.increments(7, 1)}
    one.counted(7, totals)
    assert one.recent(7).messages_last_hour == 4  # type: ignore[union-attr]
