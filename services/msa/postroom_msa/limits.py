"""Per-account sending limits (messages per hour, recipients per day) counted in Redis.

A stolen password is mostly used to send spam; these limits contain the damage
(Postfix's anvil rate limits, Stalwart's per-sender throttles). Each limit is a
sliding window approximated from two fixed windows (the current and the
previous bucket, the previous one weighted by how much of it still overlaps
the window), so there is no burst of twice the limit at a window edge and
each account costs two small integer keys per limit. Keys:
``<prefix>msa:sent:<kind>:<user id>:<bucket>``, expiring after two windows.

Submission is checked before it is accepted (MAIL for messages, RCPT for
recipients) and counted after the spool commit, in the round trip of the
commit's XADDs (``Submitter._publish``). The MSA reads the counters
once per mail transaction, at MAIL, and checks each RCPT against that
reading plus the recipients already accepted in the transaction (nothing is
counted until the commit, so a fresh read would only add what other sessions
of the account committed in between). Concurrent sessions of one
account can overshoot a limit by what they have in flight: acceptable for a
containment measure. The methods that ask Redis block (redis-py): call them in a thread.

The values a commit's INCRBYs return are the account's current buckets as Redis
holds them at that moment, every process's messages in. The process keeps them
with the previous buckets (read at an earlier MAIL) as the account's last
reading, and for FRESH_SECONDS after that read or commit answers the account's
next MAIL from it instead of a Redis round trip (:meth:`SendingLimits.recent`,
docs/decisions/0039). A session sending message after message thus reads Redis
at most once every FRESH_SECONDS while it keeps committing; what other sessions
and processes of the account committed after this process's last reading is
seen at most FRESH_SECONDS later (docs/msa.md, "Sending limits").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from postroom.queue import counters
from postroom.queue.redisclient import RedisClient, RedisError

HOUR = 3600.0
DAY = 86400.0

MESSAGES = "msg"
RECIPIENTS = "rcpt"

# how long a reading of an account's counters (at MAIL, or returned by its commit's INCRBYs)
# answers the next MAIL of the account instead of Redis; and how many accounts are kept
FRESH_SECONDS = 1.0
READINGS_SIZE = 10000


class LimitUnavailable(Exception):
    """Redis could not be asked; the caller refuses with a temporary error (451 4.3.0)."""


def sliding_estimate(previous: int, current: int, elapsed: float, window: float) -> float:
    """How many events the sliding window ending now holds, from two fixed buckets.

    ``elapsed`` is how far into the current bucket we are; the previous bucket
    still overlaps the window by ``window - elapsed``.
    """
    overlap = max(0.0, min(1.0, 1.0 - elapsed / window))
    return previous * overlap + current


@dataclass(frozen=True)
class Usage:
    """An account's sending so far in each window (estimates, see :func:`sliding_estimate`)."""

    messages_last_hour: float
    recipients_last_day: float


@dataclass(frozen=True)
class Reading:
    """Counter values by key (previous and current buckets of both limits), and when read."""

    at: float
    counts: dict[str, int]


class SendingLimits:
    """The two per-account limits, over one Redis client and key prefix.

    :meth:`usage`, :meth:`read` and :meth:`record` ask Redis (a thread); :meth:`recent`,
    :meth:`remember` and :meth:`counted` keep the process's last readings (the reactor).
    """

    def __init__(self, client: RedisClient, prefix: str, *, messages_per_hour: int,
                 recipients_per_day: int, clock: Callable[[], float] = time.time,
                 fresh: float = FRESH_SECONDS) -> None:
        self.client = client
        self.prefix = prefix
        self.messages_per_hour = messages_per_hour
        self.recipients_per_day = recipients_per_day
        self.clock = clock
        self.fresh = fresh
        # user id -> its last reading (see the module's docstring)
        self._readings: dict[int, Reading] = {}

    def _key(self, kind: str, user_id: int, bucket: int) -> str:
        return f"{self.prefix}msa:sent:{kind}:{user_id}:{bucket}"

    def _windows(self, now: float) -> list[tuple[str, float, int]]:
        return [(MESSAGES, HOUR, int(now // HOUR)), (RECIPIENTS, DAY, int(now // DAY))]

    def _keys(self, user_id: int, now: float) -> list[str]:
        """The previous and current bucket's key of each limit, in ``_windows``' order."""
        keys = []
        for kind, _window, bucket in self._windows(now):
            keys += [self._key(kind, user_id, bucket - 1), self._key(kind, user_id, bucket)]
        return keys

    def read(self, user_id: int) -> Reading:
        """The account's counters now (blocking); LimitUnavailable without Redis."""
        now = self.clock()
        keys = self._keys(user_id, now)
        try:
            counts = counters.read(self.client, keys)
        except RedisError as exc:
            raise LimitUnavailable(str(exc)) from None
        return Reading(now, dict(zip(keys, counts, strict=True)))

    def estimate(self, user_id: int, reading: Reading, now: float | None = None) -> Usage | None:
        """The usage ``reading`` gives at ``now`` (default: its own time); None when it
        lacks a bucket that ``now`` needs (the hour or day moved on since)."""
        now = reading.at if now is None else now
        counts = [reading.counts.get(key) for key in self._keys(user_id, now)]
        if any(count is None for count in counts):
            return None
        estimates = [
            sliding_estimate(counts[2 * i] or 0, counts[2 * i + 1] or 0,
                             now - bucket * window, window)
            for i, (_kind, window, bucket) in enumerate(self._windows(now))]
        return Usage(messages_last_hour=estimates[0], recipients_last_day=estimates[1])

    def usage(self, user_id: int) -> Usage:
        """What the account has sent in the last hour / day; LimitUnavailable without Redis."""
        reading = self.read(user_id)
        usage = self.estimate(user_id, reading)
        assert usage is not None  # its own keys
        return usage

    # --- the process's last readings (on the reactor)

    def recent(self, user_id: int) -> Usage | None:
        """The usage from the account's last reading when it is younger than ``fresh``
        seconds (and still has the buckets now needs), else None: ask Redis (:meth:`read`)."""
        reading = self._readings.get(user_id)
        if reading is None:
            return None
        now = self.clock()
        if not 0 <= now - reading.at < self.fresh:
            return None
        return self.estimate(user_id, reading, now)

    def remember(self, user_id: int, reading: Reading) -> Usage:
        """Keep ``reading`` (just made by :meth:`read`) for :meth:`recent`; its usage."""
        if len(self._readings) >= READINGS_SIZE and user_id not in self._readings:
            self._readings.clear()
        self._readings[user_id] = reading
        usage = self.estimate(user_id, reading)
        assert usage is not None  # its own keys
        return usage

    def counted(self, user_id: int, totals: dict[str, int] | None) -> None:
        """After a commit: the counters' values its INCRBYs returned (``totals``, key ->
        value) bring the account's kept reading up to date; None (not counted, or not
        known) forgets it, so the next MAIL asks Redis."""
        reading = self._readings.get(user_id)
        if reading is None:
            return
        if totals is None or any(key not in reading.counts for key in totals):
            # not counted, or counted in a bucket the reading does not hold (the hour or
            # day moved on: its previous bucket is no longer known exactly)
            del self._readings[user_id]
            return
        self._readings[user_id] = Reading(self.clock(), {**reading.counts, **totals})

    def message_allowed(self, user_id: int) -> bool:
        """True while one more message fits in the hourly limit."""
        return self.message_fits(self.usage(user_id))

    def recipients_allowed(self, user_id: int, count: int) -> bool:
        """True while ``count`` more recipients fit in the daily limit."""
        return self.recipients_fit(self.usage(user_id), count)

    def message_fits(self, usage: Usage) -> bool:
        """:meth:`message_allowed` for a usage already read (no Redis call)."""
        return usage.messages_last_hour + 1 <= self.messages_per_hour

    def recipients_fit(self, usage: Usage, count: int) -> bool:
        """:meth:`recipients_allowed` for a usage already read (no Redis call)."""
        return usage.recipients_last_day + count <= self.recipients_per_day

    def record(self, user_id: int, recipients: int) -> None:
        """Count one accepted message to ``recipients`` recipients (raises redis errors)."""
        counters.add(self.client, self.increments(user_id, recipients))

    def increments(self, user_id: int, recipients: int) -> list[tuple[str, int, int]]:
        """What :meth:`record` adds, as (key, amount, ttl) for ``counters.queue_add``: the
        msa queues them on the pipeline of its spool's XADDs (one round trip for both)."""
        now = self.clock()
        # the bucket is read as "previous" for one more window, then never again
        return [(self._key(kind, user_id, bucket), 1 if kind == MESSAGES else recipients,
                 int(2 * window) + 60)
                for kind, window, bucket in self._windows(now)]
