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
containment measure. The methods block (redis-py): call them in a thread.
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


class SendingLimits:
    """The two per-account limits, over one Redis client and key prefix."""

    def __init__(self, client: RedisClient, prefix: str, *, messages_per_hour: int,
                 recipients_per_day: int, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.prefix = prefix
        self.messages_per_hour = messages_per_hour
        self.recipients_per_day = recipients_per_day
        self.clock = clock

    def _key(self, kind: str, user_id: int, bucket: int) -> str:
        return f"{self.prefix}msa:sent:{kind}:{user_id}:{bucket}"

    def _windows(self, now: float) -> list[tuple[str, float, int]]:
        return [(MESSAGES, HOUR, int(now // HOUR)), (RECIPIENTS, DAY, int(now // DAY))]

    def usage(self, user_id: int) -> Usage:
        """What the account has sent in the last hour / day; LimitUnavailable without Redis."""
        now = self.clock()
        keys = []
        for kind, _window, bucket in self._windows(now):
            keys += [self._key(kind, user_id, bucket - 1), self._key(kind, user_id, bucket)]
        try:
            counts = counters.read(self.client, keys)
        except RedisError as exc:
            raise LimitUnavailable(str(exc)) from None
        estimates = [
            sliding_estimate(counts[2 * i], counts[2 * i + 1], now - bucket * window, window)
            for i, (_kind, window, bucket) in enumerate(self._windows(now))]
        return Usage(messages_last_hour=estimates[0], recipients_last_day=estimates[1])

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
