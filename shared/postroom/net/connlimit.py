"""Concurrent connections per client, shared by the SMTP, POP3 and IMAP listeners.

A client is an IPv4 address or an IPv6 /64 (:func:`postroom.net.peers.client_key`,
the key the failed-login limiter uses too): a host given a /64 could otherwise
open ``limit`` connections from each of its 2**64 addresses.
"""

from __future__ import annotations

from collections import Counter

from postroom.net.peers import client_key


class PerAddressLimit:
    """Counts open connections by client; refuses past ``limit`` (a flood from one client)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[str] = Counter()

    def acquire(self, address: str) -> bool:
        """Count a new connection; False (and nothing counted) when it is over the limit."""
        key = client_key(address)
        if self.open[key] >= self.limit:
            return False
        self.open[key] += 1
        return True

    def release(self, address: str) -> None:
        key = client_key(address)
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]
