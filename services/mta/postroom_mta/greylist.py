"""Greylisting (optional, off by default): the first try of an unknown triplet is deferred.

The triplet is (client network, sender, recipient), with the client's /24
(IPv4) or /64 (IPv6) so a sender's outbound pool retrying from a sibling
address is not greylisted again (Postgrey's default). State lives in Redis:
one key per triplet holding the first-seen time. A triplet retried after the
delay passes and is remembered for ``pass_ttl``; Redis trouble lets mail
through (greylisting is a spam filter, not a gate worth losing mail for).
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from typing import Any

import redis
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from postroom.logs import get_logger
from postroom.smtp.replies import Reply

_log = get_logger("greylist")

GREYLISTED = Reply(451, "4.7.1", "Greylisted, please try again later")
# how long a first sighting waits for its retry, and how long a passed triplet is remembered
RETRY_WINDOW = 2 * 86400
PASS_TTL = 36 * 86400


def client_network(ip: str) -> str:
    """The network greylisting keys on: /24 for IPv4, /64 for IPv6 (the address if unparsable)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def triplet_key(prefix: str, ip: str, sender: str, recipient: str) -> str:
    """The Redis key of a triplet (hashed: addresses are long and peer-controlled)."""
    raw = "\0".join((client_network(ip), sender.lower(), recipient.lower())).encode("utf-8")
    return f"{prefix}greylist:{hashlib.sha256(raw).hexdigest()[:32]}"


def check_triplet(client: redis.Redis, key: str, delay: float, now: float | None = None) -> bool:
    """True when the triplet may pass now (blocking: run it in a thread)."""
    now = time.time() if now is None else now
    if client.set(key, repr(now), nx=True, ex=RETRY_WINDOW):
        return False
    first = client.get(key)
    if first is None:  # expired between the two calls: a new sighting
        client.set(key, repr(now), ex=RETRY_WINDOW)
        return False
    first_seen = float(first.decode() if isinstance(first, bytes) else first)
    if now - first_seen < delay:
        return False
    client.expire(key, PASS_TTL)
    return True


class Greylist:
    """Greylisting on a Redis client, its blocking calls in a bounded thread pool."""

    def __init__(self, client: redis.Redis, prefix: str, delay: float, pool: ThreadPool, *,
                 reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.client = client
        self.prefix = prefix
        self.delay = delay
        self.pool = pool
        self.reactor = reactor

    def check(self, ip: str, sender: str, recipient: str) -> Deferred[Reply | None]:
        """None lets the recipient through; GREYLISTED defers it."""
        key = triplet_key(self.prefix, ip, sender, recipient)
        d: Deferred[bool] = deferToThreadPool(self.reactor, self.pool, check_triplet,
                                              self.client, key, self.delay)

        def decided(passed: bool) -> Reply | None:
            if passed:
                return None
            _log.info("greylisted", peer=ip, mail_from=sender, rcpt=recipient)
            return GREYLISTED

        def failed(failure: Failure) -> None:
            failure.trap(redis.RedisError, ValueError)
            _log.warning("greylist check failed; letting mail through",
                         error=failure.getErrorMessage())
            return None

        return d.addCallbacks(decided, failed)
