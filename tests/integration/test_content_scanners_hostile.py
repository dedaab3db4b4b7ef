"""Scanners that misbehave: a huge, a silent and a garbled answer each end in tempfail, in time."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet import defer

from postroom.net.clamd import ClamdClient
from postroom_dmarc.content import ContentResult
from postroom_dmarc.content.rspamd import RspamdClient, ScanRequest
from tests.support.redisdb import in_reactor


@pytest.fixture
def fake_server() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """A loopback TCP server answering each connection with ``behave(conn)``; its port."""
    sockets: list[socket.socket] = []

    def start(behave: Callable[[socket.socket], None]) -> int:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        sockets.append(server)

        def loop() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                threading.Thread(target=_serve, args=(conn, behave), daemon=True).start()

        threading.Thread(target=loop, daemon=True).start()
        return int(server.getsockname()[1])

    yield start
    for s in sockets:
        s.close()


def _serve(conn: socket.socket, behave: Callable[[socket.socket], None]) -> None:
    try:
        conn.settimeout(10)
        conn.recv(65536)
        behave(conn)
    except OSError:
        pass
    finally:
        conn.close()


def _huge(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\n")
    chunk = b"x" * 65536
    for _ in range(800):
        conn.sendall(chunk)


def _silent(conn: socket.socket) -> None:
    time.sleep(8)


def _garbled(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"a\": 1}\n")


def _rspamd(port: int, reactor: Any, timeout: float = 2.0) -> ContentResult:
    client = RspamdClient(f"http://127.0.0.1:{port}", reactor=reactor, timeout=timeout)
    scan = ScanRequest(message=b"Subject: x\r\n\r\nbody\r\n", queue_id="HOSTILE1")
    try:
        result: ContentResult = in_reactor(
            lambda: defer.Deferred.fromCoroutine(client.check(scan)), timeout=20)
    finally:
        in_reactor(client.close)
    return result


@pytest.mark.parametrize("behave", [_huge, _silent, _garbled])
def test_rspamd_misbehaving_gives_tempfail_within_the_timeout(
        fake_server: Any, twisted_reactor: Any, behave: Callable[[socket.socket], None]) -> None:
    port = fake_server(behave)
    started = time.monotonic()
    result = _rspamd(port, twisted_reactor)
    assert result.action == "tempfail", result
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("reply", [b"x" * 100_000, b"stream: OK", b"stream: a\nb FOUND\0"])
def test_clamd_odd_or_endless_replies_are_errors_or_bounded(
        fake_server: Any, twisted_reactor: Any, reply: bytes) -> None:
    port = fake_server(lambda conn: conn.sendall(reply))
    client = ClamdClient(f"tcp:127.0.0.1:{port}", reactor=twisted_reactor, timeout=2)
    verdict = in_reactor(lambda: defer.Deferred.fromCoroutine(client.verdict(b"data")),
                         timeout=20)
    # "stream: OK" closed without its NUL still reads as clean; the rest are errors
    expected = "clean" if reply == b"stream: OK" else "error"
    assert verdict.outcome == expected, verdict
