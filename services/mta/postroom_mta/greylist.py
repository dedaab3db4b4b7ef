"""Greylisting (optional, off by default): the first try of an unknown triplet is deferred.

The triplet is (client network, sender, recipient), with the client's /24
(IPv4) or /64 (IPv6) so a sender's outbound pool retrying from a sibling
address is not greylisted again (Postgrey's default). State lives in Redis,
kept by ``postroom.queue.greylist``: one key per triplet holding the
first-seen time. A triplet retried after the delay passes and is remembered
for ``pass_ttl``; Redis trouble lets mail through (greylisting is a spam
filter, not a gate worth losing mail for).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from postroom.interfaces import ReactorThreads, defer_to_pool, global_reactor
from postroom.logs import get_logger
from postroom.queue.greylist import check_triplet, triplet_key
from postroom.queue.redisclient import RedisClient, RedisError
from postroom.smtp.replies import Reply

_log = get_logger("greylist")

GREYLISTED = Reply(451, "4.7.1", "Greylisted, please try again later")


class Greylist:
    """Greylisting on a Redis client, its blocking calls in a bounded thread pool."""

    def __init__(self, client: RedisClient, prefix: str, delay: float, pool: ThreadPool, *,
                 reactor: ReactorThreads | None = None) -> None:
        if reactor is None:
            reactor = global_reactor()
        self.client = client
        self.prefix = prefix
        self.delay = delay
        self.pool = pool
        self.reactor = reactor

    def check(self, ip: str, sender: str, recipient: str) -> Deferred[Reply | None]:
        """None lets the recipient through; GREYLISTED defers it."""
        key = triplet_key(self.prefix, ip, sender, recipient)
        d: Deferred[bool] = defer_to_pool(self.reactor, self.pool, check_triplet,
                                          self.client, key, self.delay)

        def decided(passed: bool) -> Reply | None:
            if passed:
                return None
            _log.info("greylisted", peer=ip, mail_from=sender, rcpt=recipient)
            return GREYLISTED

        def failed(failure: Failure) -> None:
            failure.trap(RedisError, ValueError)
            _log.warning("greylist check failed; letting mail through",
                         error=failure.getErrorMessage())
            return None

        return d.addCallbacks(decided, failed)
