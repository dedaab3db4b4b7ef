"""Fixtures: a real Redis for tests (a unique key prefix each), a private Redis, a reactor thread.

``redis_url`` is POSTROOM_TEST_REDIS_URL (default redis://127.0.0.1:6379/0); an
unreachable Redis fails the test loudly rather than skipping it. Tests that
FLUSHALL or restart Redis use ``private_redis``, a redis-server of their own on
a free loopback port, so they never wipe other tests' keys on the shared one.
"""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from postroom.queue.streams import QueueClient, connect
from tests.support.ports import free_port

DEFAULT_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("POSTROOM_TEST_REDIS_URL", DEFAULT_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {url} is not reachable ({exc}); start it (see .ci/run)",
                    pytrace=False)
    finally:
        client.close()
    return url


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key under ``prefix`` (SCAN, never KEYS); how many were deleted."""
    deleted = 0
    batch: list[Any] = []
    for key in client.scan_iter(match=prefix + "*", count=500):
        batch.append(key)
        if len(batch) >= 500:
            deleted += client.delete(*batch)
            batch.clear()
    if batch:
        deleted += client.delete(*batch)
    return deleted


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"prtest:{secrets.token_hex(6)}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        delete_prefix(client, prefix)
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the shared test Redis (text replies), closed afterwards."""
    client = connect(redis_url)
    yield client
    client.close()


@pytest.fixture
def queue_client(redis_client: redis.Redis, redis_prefix: str) -> QueueClient:
    return QueueClient(redis_client, redis_prefix)


class PrivateRedis:
    """A redis-server started for one test, with nothing on disk; killed by PID."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH", pytrace=False)
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", "/tmp", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        pytest.fail("private redis-server did not start", pytrace=False)
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def private_redis() -> Iterator[str]:
    """The URL of a redis-server of this test's own (safe to FLUSHALL or restart)."""
    server = PrivateRedis()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


# --- the Twisted reactor, running in a background thread for tests that need a real one


_reactor_thread: threading.Thread | None = None


def start_reactor_thread() -> Any:
    """Run the global reactor in a daemon thread (once per test session) and return it."""
    global _reactor_thread
    from twisted.internet import reactor

    if _reactor_thread is None and not reactor.running:  # type: ignore[attr-defined]
        _reactor_thread = threading.Thread(
            target=reactor.run, kwargs={"installSignalHandlers": False},  # type: ignore[attr-defined]
            name="test-reactor", daemon=True)
        _reactor_thread.start()
        deadline = time.monotonic() + 5
        while not reactor.running and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.005)
    return reactor


def in_reactor(fn: Callable[..., Any], *args: Any, timeout: float = 10.0, **kwargs: Any) -> Any:
    """Call ``fn`` on the reactor thread and wait (at most ``timeout``) for its result.

    A returned Deferred is waited for; its failure is raised here.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import maybeDeferred
    from twisted.python.failure import Failure

    results: queue.Queue[tuple[bool, Any]] = queue.Queue()

    def call() -> None:
        d = maybeDeferred(fn, *args, **kwargs)
        d.addCallbacks(lambda value: results.put((True, value)),
                       lambda failure: results.put((False, failure)))

    reactor.callFromThread(call)  # type: ignore[attr-defined]
    try:
        ok, value = results.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"{getattr(fn, '__name__', fn)} did not finish in {timeout}s") from None
    if not ok:
        assert isinstance(value, Failure)
        value.raiseException()
    return value


def stop_reactor_thread() -> None:
    """Stop the reactor started by :func:`start_reactor_thread` (its shutdown triggers run)."""
    global _reactor_thread
    from twisted.internet import reactor

    if _reactor_thread is not None:
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]
        _reactor_thread.join(timeout=30)
        _reactor_thread = None


@pytest.fixture(scope="session")
def twisted_reactor() -> Iterator[Any]:
    """The global reactor, running in a background thread; use ``in_reactor`` to call into it."""
    yield start_reactor_thread()
    stop_reactor_thread()


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0,
               interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s", pytrace=False)
        time.sleep(interval)
