"""Free loopback ports for servers that tests start."""

from __future__ import annotations

import socket

import pytest


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (bind to 0, read, release)."""
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
