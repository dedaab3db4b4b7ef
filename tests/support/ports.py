"""Free loopback ports for servers that tests start."""

from __future__ import annotations

import random
import socket

import pytest

# Below Linux's ephemeral range (32768-60999 by default): a port the kernel handed out for
# bind(0) can be taken by any outgoing connection (a client, a database pool) between the
# moment it is read and the moment the server binds it; a port from this range cannot.
_RANGE = (20000, 32000)


# Each call moves on from where the last one stopped, so one test run never hands out the
# same port twice until the whole range has gone round: two free_port() calls made before either
# server binds (a service's listener and its health port) used to be able to draw the same
# random port, and the second bind failed with EADDRINUSE (a CI run lost a module that way).
_next = random.randrange(*_RANGE)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now, outside the ephemeral range, and that
    this test run has not handed out recently."""
    global _next
    low, high = _RANGE
    for _ in range(high - low):
        candidate = _next
        _next = low if _next + 1 >= high else _next + 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            return candidate
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()
