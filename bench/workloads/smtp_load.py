"""One smtp-source load (`-s 20 -m N -l 2048`) and, optionally, the wait until it is all stored."""

from __future__ import annotations

import time
from collections.abc import Callable

from common import run, tool

SESSIONS = 20
SIZE = 2048
SENDER = "loadgen@src.test"


def smtp_source(port: int, recipient: str, messages: int, timeout: float) -> float:
    """Send the load to 127.0.0.1:port; seconds until smtp-source finished (it stops itself)."""
    binary = tool("smtp-source") or "smtp-source"
    started = time.monotonic()
    run([binary, "-s", str(SESSIONS), "-m", str(messages), "-l", str(SIZE), "-f", SENDER,
         "-t", recipient, f"127.0.0.1:{port}"], timeout=timeout)
    return time.monotonic() - started


def load_and_wait(port: int, recipient: str, messages: int, count: Callable[[], int],
                  timeout: float) -> tuple[float, float]:
    """(accept seconds, delivered seconds): smtp-source, then poll ``count`` up to +messages."""
    before = count()
    started = time.monotonic()
    accepted = smtp_source(port, recipient, messages, timeout)
    deadline = started + timeout
    while count() - before < messages:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {count() - before} of {messages} delivered in "
                               f"{timeout:.0f}s")
        time.sleep(0.05)
    return accepted, time.monotonic() - started
