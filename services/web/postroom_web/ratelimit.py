"""How many requests one client may make of the web service: a token bucket per client.

Each client (an IPv4 address or an IPv6 /64, :func:`postroom.net.peers.client_key`, after
X-Forwarded-For from a trusted proxy has been resolved) has a bucket of ``burst`` tokens
that refills at ``rate`` a second; a request takes one, and a request that finds the
bucket empty is answered 429 with Retry-After before any work is done for it (no
database, no session look-up, no handler). Static files are not counted: they are served
from memory and cached by the browser for a year.

Memory is bounded: at most ``max_clients`` buckets are kept, the least recently seen
dropped first. A dropped client starts again with a full bucket, which gives nothing to
someone who cycles through that many addresses: each address is limited on its own
anyway. One bucket per process: with several web replicas a client may get up to that
many times the rate (docs/web.md). Not thread-safe: used on the reactor only.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from postroom.net.peers import client_key

MAX_CLIENTS = 65_536


class RequestRate:
    """Token buckets by client: ``allow(client)`` takes one token or says how long to wait."""

    def __init__(self, rate: float, burst: int, *, max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst <= 0 or max_clients <= 0:
            raise ValueError("rate, burst and max_clients must be positive")
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        # client -> (tokens left, when they were counted); order: least recently seen first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str) -> float:
        """0.0 when ``client`` may go on (one token taken); else the seconds until a token
        will be there (nothing taken)."""
        key = client_key(client)
        now = self._clock()
        found = self._buckets.pop(key, None)
        if found is None:
            tokens = self.burst
        else:
            left, then = found
            tokens = min(self.burst, left + max(0.0, now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(wait: float) -> bytes:
    """The Retry-After value for a wait: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait))).encode("ascii")
