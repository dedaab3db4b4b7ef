"""IMAP literal floods against the live imap process: memory stays flat, other sessions are served.

A client streams ``a APPEND INBOX {N+}``, N bytes, `` {N+}``, N bytes, ... and never
ends the command: before login (issue 16: the reader held every literal until the
line ended and checked the login state only then, so the process grew until the
kernel killed it) and after login (an endless MULTIAPPEND). The imap process's
resident memory (VmRSS in /proc/PID/status) is sampled as the bytes go in; a
bystander logs in and runs NOOP on another connection all the while.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.hostile import (
    LEDGER,
    PASSWORD,
    Conn,
    Suite,
    address,
    no_traceback,
    still_serves,
)

LITERAL = 1_000_000  # within the campaign's 1M message size: each literal alone is acceptable
LITERALS = 256  # ~256 MB per attack, sent as fast as loopback takes it
RSS_GROWTH_LIMIT = 32 * 1024 * 1024  # the attack sends 256 MB
ATTACK_SECONDS = 120.0
BYSTANDER_SECONDS = 10.0  # longest a bystander's LOGIN + NOOP may take during the attack


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Bystander:
    """Logs in as carol over implicit TLS and runs NOOP, again and again, from another address."""

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self.times: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def once(self) -> None:
        started = time.monotonic()
        with Conn(self.suite.ports["imaps-993"], tls=True, source="127.0.0.3",
                  timeout=BYSTANDER_SECONDS) as conn:
            assert conn.line().startswith(b"* OK")
            conn.send(f'a LOGIN "{address("carol")}" "{PASSWORD}"\r\n'.encode())
            _, done = conn.tagged(b"a")
            assert done.startswith(b"a OK"), done
            conn.send(b"n NOOP\r\n")
            _, done = conn.tagged(b"n")
            assert done.startswith(b"n OK"), done
            conn.send(b"z LOGOUT\r\n")
            conn.tagged(b"z")
        self.times.append(time.monotonic() - started)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.once()
            except Exception as exc:
                self.failures.append(repr(exc))
            self._stop.wait(0.2)

    @contextmanager
    def running(self) -> Iterator[Bystander]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(BYSTANDER_SECONDS + 5)

    def check(self) -> None:
        assert not self.failures, self.failures
        assert self.times, "the bystander never completed a LOGIN + NOOP during the attack"
        assert max(self.times) < BYSTANDER_SECONDS, self.times


def stream_literals(suite: Suite, conn: Conn, opening: bytes) -> int:
    """Send ``opening`` and LITERALS literals of LITERAL bytes; the peak RSS growth seen."""
    pid = suite.processes["imap"].pid
    before = peak = rss(pid)
    data = b"x" * LITERAL
    deadline = time.monotonic() + ATTACK_SECONDS
    conn.send(opening + b"{%d+}\r\n" % LITERAL)
    for index in range(LITERALS - 1):
        conn.send(data + b" {%d+}\r\n" % LITERAL)
        if index % 4 == 0:
            peak = max(peak, rss(pid))
        assert time.monotonic() < deadline, f"only {index} MB went in {ATTACK_SECONDS} s"
        assert suite.alive()["imap"] is None, "imap died"
    conn.send(data + b"\r\n")
    peak = max(peak, rss(pid))
    print(f"imap RSS {before >> 20} MiB before, {peak >> 20} MiB at most during "
          f"{opening.decode().strip()} with {LITERALS} literals of {LITERAL} bytes")
    return peak - before


def test_preauth_append_literal_stream_keeps_memory_flat(hostile_suite: Suite) -> None:
    Bystander(hostile_suite).once()  # warm up (TLS, pools, caches) before the baseline
    with Bystander(hostile_suite).running() as bystander, \
            Conn(hostile_suite.ports["imap-143"], timeout=30) as conn:
        assert conn.line().startswith(b"* OK")
        growth = stream_literals(hostile_suite, conn, b"a APPEND INBOX ")
        conn.send(b"n NOOP\r\n")
        _, done = conn.tagged(b"a")
        assert done.startswith((b"a BAD", b"a NO")), done
        _, done = conn.tagged(b"n")
        assert done.startswith(b"n OK"), done
        no_traceback(conn)
    LEDGER.tried_on("imap-143", LITERALS)
    LEDGER.check("imap-143", growth < RSS_GROWTH_LIMIT,
                 f"pre-auth literal stream grew imap by {growth >> 20} MiB")
    bystander.check()
    still_serves(hostile_suite, "imap-143")


def test_preauth_append_gets_no_continuation(hostile_suite: Suite) -> None:
    with Conn(hostile_suite.ports["imap-143"]) as conn:
        assert conn.line().startswith(b"* OK")
        conn.send(b"a APPEND INBOX {%d}\r\n" % LITERAL)  # within the size limit
        reply = conn.line()
        assert reply.startswith(b"a BAD"), reply  # never "+ Ready for literal data"
        conn.send(b"n NOOP\r\n")
        assert conn.tagged(b"n")[1].startswith(b"n OK")
        no_traceback(conn)
    LEDGER.tried_on("imap-143")


def test_endless_multiappend_after_login_keeps_memory_flat(hostile_suite: Suite) -> None:
    before = hostile_suite.mailbox_state("alice")
    with Bystander(hostile_suite).running() as bystander, \
            Conn(hostile_suite.ports["imaps-993"], tls=True, timeout=30) as conn:
        assert conn.line().startswith(b"* OK")
        conn.send(f'l LOGIN "{address("alice")}" "{PASSWORD}"\r\n'.encode())
        assert conn.tagged(b"l")[1].startswith(b"l OK")
        growth = stream_literals(hostile_suite, conn, b"a APPEND INBOX ")
        conn.send(b"n NOOP\r\n")
        _, done = conn.tagged(b"a")
        assert done.startswith((b"a BAD", b"a NO")), done
        _, done = conn.tagged(b"n")
        assert done.startswith(b"n OK"), done
        no_traceback(conn)
    LEDGER.tried_on("imaps-993", LITERALS)
    LEDGER.check("imaps-993", growth < RSS_GROWTH_LIMIT,
                 f"MULTIAPPEND literal stream grew imap by {growth >> 20} MiB")
    bystander.check()
    assert hostile_suite.mailbox_state("alice") == before
    still_serves(hostile_suite, "imaps-993")
