"""DNS blocklist check at connect (optional, off by default): is the client listed in a zone?

A client is listed when ``<reversed address>.<zone>`` has an A record in
127.0.0.0/8. Answers in 127.255.255.0/24 are the lists' own error codes
(e.g. "query refused from public resolvers") and do not list anyone. Any DNS
trouble means "not listed": a blocklist outage must not stop inbound mail.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from postroom.interfaces import ReactorThreads, defer_to_pool, global_reactor
from postroom.logs import get_logger
from postroom.net.dns import DNSError, Resolver
from postroom.net.peers import parse_ip
from postroom.smtp.replies import Reply

_log = get_logger("dnsbl")

_LISTED = ipaddress.ip_network("127.0.0.0/8")
_ERROR_CODES = ipaddress.ip_network("127.255.255.0/24")


def query_name(ip: str, zone: str) -> str | None:
    """The name to look up for ``ip`` in ``zone`` (nibbles for IPv6), or None if not an IP."""
    address = parse_ip(ip)
    if address is None:
        return None
    if address.version == 4:
        labels = str(address).split(".")
    else:
        labels = list(address.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + zone.rstrip(".")


def is_listing(answer: str) -> bool:
    """True when an A answer means "listed" (127.0.0.0/8 less the error codes)."""
    try:
        address = ipaddress.ip_address(answer)
    except ValueError:
        return False
    return address in _LISTED and address not in _ERROR_CODES


def listed_in(resolver: Resolver, ip: str, zones: Sequence[str]) -> str | None:
    """The first zone listing ``ip``, or None (blocking: run it in a thread)."""
    for zone in zones:
        name = query_name(ip, zone)
        if name is None:
            return None
        try:
            answers = resolver.a(name)
        except DNSError:
            continue  # NXDOMAIN is "not listed"; a temporary error is treated the same
        if any(is_listing(str(a)) for a in answers):
            return zone
    return None


def blocked_reply(ip: str, zone: str) -> Reply:
    return Reply(554, "5.7.1", f"Service unavailable; client [{ip}] blocked using {zone}")


class DNSBL:
    """The connect-time check over a resolver, its lookups in a bounded thread pool."""

    def __init__(self, resolver: Resolver, zones: Sequence[str], pool: ThreadPool, *,
                 reactor: ReactorThreads | None = None) -> None:
        if reactor is None:
            reactor = global_reactor()
        self.resolver = resolver
        self.zones = tuple(zones)
        self.pool = pool
        self.reactor = reactor

    def check(self, ip: str) -> Deferred[Reply | None]:
        """None when the client is not listed; a 554 5.7.1 reply when it is."""
        d: Deferred[str | None] = defer_to_pool(self.reactor, self.pool, listed_in,
                                                 self.resolver, ip, self.zones)

        def decided(zone: str | None) -> Reply | None:
            if zone is None:
                return None
            _log.info("client blocked by dnsbl", peer=ip, zone=zone)
            return blocked_reply(ip, zone)

        def failed(failure: Failure) -> None:
            _log.warning("dnsbl check failed", peer=ip, error=failure.getErrorMessage())
            return None

        return d.addCallbacks(decided, failed)
