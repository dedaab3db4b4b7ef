"""Concurrent connections per client address, shared by the SMTP, POP3 and IMAP listeners."""

from __future__ import annotations

from collections import Counter


class PerAddressLimit:
    """Counts open connections by peer address; refuses past ``limit`` (a flood from one IP)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[str] = Counter()

    def acquire(self, address: str) -> bool:
        """Count a new connection; False (and nothing counted) when it is over the limit."""
        if self.open[address] >= self.limit:
            return False
        self.open[address] += 1
        return True

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]
