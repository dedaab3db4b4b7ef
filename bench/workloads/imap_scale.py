"""Workload 5: a large mailbox (default 100,000 messages) and memory with many IDLE connections.

Scale: the same Maildir is imported into Postroom (`postroom import maildir`,
timed and reported) and copied into Dovecot; then, alternating, one client
times SELECT INBOX, FETCH 1:* (UID FLAGS) and UID SEARCH HEADER X-Bench-Serial
(a header that is not cached, so the search reads message text).

Memory: N connections (default 5,000) each LOGIN, SELECT INBOX and IDLE, on
a small mailbox of another account. Reported: the imap service's resident
memory per connection (RSS growth / connections) and its total, against the
total proportional memory (PSS) of every Dovecot process (imap processes are
hibernated after 5 s of IDLE, as a Dovecot tuned for idle clients would be).
Connections are opened with at most 64 logins in flight and no longer than a
time slice of the budget; when fewer than N open in that time, the figure is
given for those and the projection to N is stated. The open-file limit is
raised in this process (children inherit it) when too low.
"""

from __future__ import annotations

import asyncio
import imaplib
import time

from common import Skip, progress, raise_nofile, rss_kib
from peers.dovecot import Dovecot
from postroom_suite import PASSWORD, PostroomSuite

from workloads import mailgen
from workloads.base import Context, Row

NAME = "imap_scale"
TITLE = "5. IMAP scale: big mailbox SELECT / FETCH 1:* / SEARCH, and IDLE memory"
IN_FLIGHT = 64


def _timed_ops(port: int, user: str, needle: int) -> dict[str, float]:
    conn = imaplib.IMAP4("127.0.0.1", port, timeout=300)
    out: dict[str, float] = {}
    try:
        conn.login(user, PASSWORD)
        for name, fn, args in (
                ("SELECT", conn.select, ("INBOX",)),
                ("FETCH 1:* (UID FLAGS)", conn.fetch, ("1:*", "(UID FLAGS)")),
                ("SEARCH HEADER", conn.uid, ("SEARCH", "HEADER", "X-Bench-Serial",
                                             f"serial-{needle:07d}"))):
            started = time.perf_counter()
            typ, data = fn(*args)
            out[name] = 1000 * (time.perf_counter() - started)
            if typ != "OK":
                raise RuntimeError(f"{name}: {typ} {data!r}"[:200])
            if name == "SEARCH HEADER" and needle and len((data[0] or b"").split()) != 1:
                raise RuntimeError(f"SEARCH found {data!r}"[:200] + ", expected one message")
        conn.logout()
    finally:
        try:
            conn.shutdown()
        except OSError:
            pass
    return out


async def _idle_one(port: int, user: str, holders: list[asyncio.StreamWriter]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    writer.write(f'a LOGIN {user} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line.startswith(b"+"):
            holders.append(writer)
            return
        if line[:2] in (b"a ", b"b ") and b" OK" not in line[:6]:
            raise ConnectionError(line.decode(errors="replace")[:100])


async def _open_idle(port: int, user: str, count: int, seconds: float,
                     holders: list[asyncio.StreamWriter]) -> int:
    """Open up to ``count`` IDLE connections within ``seconds``; how many failed."""
    semaphore = asyncio.Semaphore(IN_FLIGHT)
    failures = 0
    deadline = time.monotonic() + seconds

    async def one() -> None:
        nonlocal failures
        async with semaphore:
            if time.monotonic() > deadline:
                return
            try:
                await asyncio.wait_for(_idle_one(port, user, holders), 60)
            except (OSError, ConnectionError, TimeoutError):
                failures += 1

    await asyncio.gather(*(one() for _ in range(count)))
    return failures


async def _close_all(holders: list[asyncio.StreamWriter]) -> None:
    for writer in holders:
        writer.close()
    holders.clear()
    await asyncio.sleep(0.2)


def idle_memory(port: int, user: str, count: int, seconds: float,
                measure: callable) -> tuple[int, int, int, int]:  # type: ignore[valid-type]
    """(connections open, failures, memory before KiB, memory with them open KiB)."""
    async def main() -> tuple[int, int, int, int]:
        holders: list[asyncio.StreamWriter] = []
        before = measure()
        failures = await _open_idle(port, user, count, seconds, holders)
        await asyncio.sleep(7)  # let Dovecot hibernate its idle imap processes
        after = measure()
        opened = len(holders)
        await _close_all(holders)
        return opened, failures, before, after

    return asyncio.run(main())


def run(ctx: Context) -> list[Row]:
    ctx.need_services("imap")
    if Dovecot.available():
        raise Skip(f"Dovecot unavailable: {Dovecot.available()}")
    n = ctx.scale_messages
    rows = {op: Row(NAME, f"{op} on {n} msgs", "ms", "Dovecot", higher_is_better=False)
            for op in ("SELECT", "FETCH 1:* (UID FLAGS)", "SEARCH HEADER")}
    nofile = raise_nofile(ctx.idle_connections * 2 + 2048)
    if nofile < ctx.idle_connections * 2 + 1024:
        progress(f"  open-file limit {nofile} is low for {ctx.idle_connections} connections")
    else:
        progress(f"  open-file limit now {nofile}")
    progress(f"  building a {n}-message Maildir (cached under var/bench/maildirs)")
    big = mailgen.make_maildir("scale", n)
    small = mailgen.make_maildir("mix", 200)
    dovecot = Dovecot(users=2, hibernate="5s").start()
    memory: list[Row] = []
    try:
        env = {"POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK": "true"}
        # one imap process: the memory figure is of one process, the timed commands one client
        with PostroomSuite(["imap"], users=2, extra_env=env, replicas=1) as suite:
            user, idler = suite.user(0), suite.user(1)
            mailgen.seed_dovecot(big, dovecot.maildir(user))
            mailgen.seed_dovecot(small, dovecot.maildir(idler))
            mailgen.seed_postroom(small, idler, suite.env, timeout=120)
            progress(f"  seeding {n} messages into Postroom (1 imported, the rest by SQL)")
            started = time.monotonic()
            mailgen.seed_postroom(mailgen.make_maildir("scale", 1), user, suite.env,
                                  timeout=120)
            mailgen.replicate_postroom(suite, user, n)
            progress(f"  seeded in {time.monotonic() - started:.0f}s; warming both sides "
                     "with one untimed SELECT (Dovecot builds its index here)")
            for port in (suite.ports["imap"], dovecot.imap_port):
                _timed_ops(port, user, 0)
            for i in range(ctx.runs):
                if not ctx.another_run(i):
                    progress(f"  budget: stopping after {i} run(s)")
                    break
                for side, port in (("postroom", suite.ports["imap"]),
                                   ("dovecot", dovecot.imap_port)):
                    got = _timed_ops(port, user, n // 2)
                    for op, ms in got.items():
                        row = rows[op]
                        (row.postroom if side == "postroom" else row.peer_runs).append(ms)
                    progress(f"  run {i + 1} {side}: " + ", ".join(
                        f"{op} {ms:.0f} ms" for op, ms in got.items()))
            memory = _memory(ctx, suite, dovecot, idler)
    finally:
        dovecot.stop()
    return [*rows.values(), *memory]


def _memory(ctx: Context, suite: PostroomSuite, dovecot: Dovecot, user: str) -> list[Row]:
    count = ctx.idle_connections
    seconds = min(120.0, max(20.0, ctx.share.left() / 2.5))
    pid = suite.pid("imap")
    progress(f"  opening {count} IDLE connections to Postroom imap (at most {seconds:.0f}s)")
    opened, failed, before, after = idle_memory(suite.ports["imap"], user, count, seconds,
                                                lambda: rss_kib(pid))
    per = (after - before) / opened if opened else 0.0
    progress(f"  postroom: {opened} open ({failed} failed), RSS {before / 1024:.0f} -> "
             f"{after / 1024:.0f} MiB, {per:.1f} KiB per connection")
    progress(f"  opening {count} IDLE connections to Dovecot (at most {seconds:.0f}s)")
    d_opened, d_failed, d_before, d_after = idle_memory(dovecot.imap_port, user, count, seconds,
                                                        dovecot.memory_kib)
    d_per = (d_after - d_before) / d_opened if d_opened else 0.0
    progress(f"  dovecot: {d_opened} open ({d_failed} failed), PSS {d_before / 1024:.0f} -> "
             f"{d_after / 1024:.0f} MiB, {d_per:.1f} KiB per connection")
    projected = (before + per * count) / 1024
    d_projected = (d_before + d_per * count) / 1024
    ctx.extras["imap_idle"] = {
        "wanted": count, "postroom_open": opened, "postroom_failed": failed,
        "postroom_rss_before_kib": before, "postroom_rss_after_kib": after,
        "dovecot_open": d_opened, "dovecot_failed": d_failed,
        "dovecot_pss_before_kib": d_before, "dovecot_pss_after_kib": d_after}
    note = "" if opened >= count and d_opened >= count else \
        f"projected to {count} from {opened} (Postroom) / {d_opened} (Dovecot) open"
    per_row = Row(NAME, "memory per IDLE connection", "KiB", "Dovecot (PSS, hibernated)",
                  [per], [d_per], higher_is_better=False, note=note)
    total_row = Row(NAME, f"memory with {count} IDLE", "MiB", "Dovecot (PSS, all processes)",
                    [projected], [d_projected], higher_is_better=False, note=note)
    return [per_row, total_row]
