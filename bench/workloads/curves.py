"""Workload 8: how cost grows. Four scale curves, Postroom and the peer in one run.

* inbound: SMTP sessions at once (1, 10, 100, 500), each sending its share of the messages
  over one connection (an asyncio client that times each message from MAIL FROM to the
  250 after its data); accept rate (msg/s until the last 250) and p99 accept latency.
  Postroom dmarc + mta + mda against Postfix -> LMTP -> Dovecot; each point waits until
  every accepted message is delivered before the next starts.
* imap_clients: the IMAP mix of workload 4 (imap_mix.load) with 10, 100, 500 clients,
  each its own account; ops/s and p99. Each side's accounts of the point log in once first,
  untimed (imap_mix.warm_logins): without it the points measured the first password check of
  every new account (scrypt on Postroom, SHA512-CRYPT on Dovecot), not the clients (bench/
  README.md, "IMAP under many clients").
* mailbox: SELECT, FETCH 1:* (UID FLAGS) and UID SEARCH HEADER (workload 5's
  imap_scale._timed_ops) on a 1k, 10k, 100k-message INBOX (one account per size, filled
  with mailgen.replicate_postroom / the cached Maildir); median of 3 after a warm-up.
* idle: memory of every imap process against every Dovecot process (PSS on both sides:
  shared pages split; Dovecot's imap processes hibernated after 5 s) with 100, 1,000,
  5,000, 10,000 connections in IDLE, opened in steps and kept (imap_scale's opener), after
  a warm-up of a few connections (so the first point is not the services' lazy start).

`--quick` takes smaller sizes (see SIZES). Each point is bounded in count and time and the
whole workload keeps to its share of the budget: points that no longer fit are left out
(the notes say so). Charts and tables: bench/results/curves/ (curvedata.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import statistics
import time
from collections.abc import Callable

import cpu
import curvedata
from common import BENCH, Skip, percentile, progress, pss_kib, raise_nofile
from curvedata import POSTROOM, Curve
from peers.dovecot import Dovecot
from peers.postfix import Postfix
from postroom_suite import PostroomSuite

from workloads import imap_mix, imap_scale, mailgen
from workloads.base import Context, Row

NAME = "curves"
TITLE = "8. Scale curves: sessions, IMAP clients, mailbox size, idle connections"
CURVES = ("inbound", "imap_clients", "mailbox", "idle")

# (default sizes, --quick sizes)
SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "inbound": ((1, 10, 100, 500), (1, 10, 100, 500)),
    "imap_clients": ((10, 100, 500), (10, 50)),
    "mailbox": ((1_000, 10_000, 100_000), (1_000, 10_000)),
    "idle": ((100, 1_000, 5_000, 10_000), (100, 1_000)),
}
# messages per inbound point: sessions x PER_SESSION, at least MIN_MESSAGES
PER_SESSION = (4, 1)
MIN_MESSAGES = (400, 100)
IMAP_SECONDS = (10.0, 4.0)
SEEDED = 50
WARM_UP = 16
SENDER = "curve@src.test"
_serial = itertools.count(10_000_000)


def sizes(name: str, ctx: Context) -> tuple[int, ...]:
    return SIZES[name][1 if ctx.quick else 0]


# --- inbound: an asyncio SMTP client with per-message latency

async def read_reply(reader: asyncio.StreamReader) -> int:
    """The code of the next SMTP reply (its last line), continuation lines skipped."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            return int(line[:3])


async def _smtp_session(port: int, rcpt: str, count: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if await read_reply(reader) != 220:
            raise ConnectionError("no 220 greeting")
        writer.write(b"EHLO curve.bench.test\r\n")
        await read_reply(reader)
        for _ in range(count):
            started = time.perf_counter()
            for command, wanted in ((f"MAIL FROM:<{SENDER}>", 250), (f"RCPT TO:<{rcpt}>", 250),
                                    ("DATA", 354)):
                writer.write(command.encode() + b"\r\n")
                code = await read_reply(reader)
                if code != wanted:
                    raise ConnectionError(f"{command.split(':')[0]}: {code}")
            writer.write(mailgen.message(next(_serial)) + b".\r\n")
            code = await read_reply(reader)
            if code != 250:
                raise ConnectionError(f"end of data: {code}")
            latencies.append(time.perf_counter() - started)
        writer.write(b"QUIT\r\n")
        await read_reply(reader)
    finally:
        writer.close()


def smtp_sessions(port: int, rcpt: str, sessions: int, messages: int,
                  timeout: float) -> tuple[int, float, float | None, int]:
    """(messages accepted, seconds, p99 accept latency ms, failed sessions)."""
    latencies: list[float] = []

    async def main() -> int:
        shares = [messages // sessions + (1 if i < messages % sessions else 0)
                  for i in range(sessions)]
        jobs = [asyncio.wait_for(_smtp_session(port, rcpt, n, latencies), timeout)
                for n in shares if n]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        return sum(1 for r in results if isinstance(r, BaseException))

    started = time.monotonic()
    failed = asyncio.run(main())
    elapsed = time.monotonic() - started
    p99 = percentile(latencies, 99)
    return len(latencies), elapsed, None if p99 is None else 1000 * p99, failed


def _wait_count(count: Callable[[], int], target: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while count() < target:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def inbound(ctx: Context, rate: Curve, p99: Curve) -> None:
    quick = 1 if ctx.quick else 0
    dovecot = Dovecot(users=1).start()
    try:
        most = max(sizes("inbound", ctx))
        postfix = Postfix(f"lmtp:inet:127.0.0.1:{dovecot.lmtp_port}",
                          process_limit=max(100, most + 20)).start()
        try:
            with PostroomSuite(["dmarc", "mta", "mda"], replicas=ctx.replicas) as suite:
                user = suite.user(0)
                sides = ((POSTROOM, suite.ports["mta"], suite.delivered),
                         (rate.peer, postfix.smtp_port, lambda: dovecot.count_new(user)))
                for sessions in sizes("inbound", ctx):
                    n = max(MIN_MESSAGES[quick], sessions * PER_SESSION[quick])
                    if not ctx.share.fits(n / 20 + 30):
                        rate.notes.append(f"{sessions} sessions: left out (time budget)")
                        break
                    line = []
                    for side, port, count in sides:
                        before = count()
                        got, secs, q99, failed = smtp_sessions(port, user, sessions, n,
                                                               max(120.0, n / 5))
                        rate.add(side, sessions, got / secs)
                        if q99 is not None:
                            p99.add(side, sessions, q99)
                        if not _wait_count(count, before + got, max(60.0, n / 10)):
                            rate.notes.append(f"{side}, {sessions} sessions: not every "
                                              "accepted message was delivered in time")
                        if failed:
                            rate.notes.append(f"{side}, {sessions} sessions: {failed} "
                                              "session(s) failed")
                        line.append(f"{side} {got / secs:.0f} msg/s, p99 "
                                    f"{q99 or 0:.0f} ms" + (f", {failed} failed" if failed
                                                            else ""))
                    progress(f"  inbound, {sessions} sessions x {n} msgs: " + "; ".join(line))
        finally:
            postfix.stop()
    finally:
        dovecot.stop()


# --- IMAP mix against clients, each its own account

def imap_clients(ctx: Context, ops: Curve, p99: Curve) -> None:
    counts = sizes("imap_clients", ctx)
    most = max(counts)
    seconds = IMAP_SECONDS[1 if ctx.quick else 0]
    maildir = mailgen.make_maildir("curve", SEEDED)
    dovecot = Dovecot(users=most, lmtp=False).start()
    try:
        env = {"POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK": "true"}
        progress(f"  {most} accounts a side, {SEEDED} messages each")
        with PostroomSuite(["imap"], users=most, extra_env=env,
                           replicas=ctx.replicas) as suite:
            users = [suite.user(n) for n in range(most)]
            for user in users:
                mailgen.seed_dovecot(maildir, dovecot.maildir(user))
            mailgen.seed_postroom(maildir, users[0], suite.env, timeout=300)
            suite.clone_inbox(users[0], users[1:])
            for clients in counts:
                if not ctx.share.fits(2 * seconds + 60):
                    ops.notes.append(f"{clients} clients: left out (time budget)")
                    break
                line = []
                for side, port in ((POSTROOM, suite.ports["imap"]),
                                   (ops.peer, dovecot.imap_port)):
                    imap_mix.warm_logins(port, users[:clients])
                    rate, _q50, q99, errors, _done = imap_mix.load(port, users[:clients],
                                                                   seconds)
                    ops.add(side, clients, rate)
                    p99.add(side, clients, q99)
                    if errors:
                        ops.notes.append(f"{side}, {clients} clients: {errors} error(s)")
                    line.append(f"{side} {rate:.0f} ops/s, p99 {q99:.0f} ms"
                                + (f", {errors} error(s)" if errors else ""))
                progress(f"  IMAP mix, {clients} clients: " + "; ".join(line))
    finally:
        dovecot.stop()


# --- SELECT / FETCH 1:* / SEARCH against mailbox size

def mailbox(ctx: Context, curves: dict[str, Curve]) -> None:
    wanted = sizes("mailbox", ctx)
    dovecot = Dovecot(users=len(wanted), lmtp=False).start()
    try:
        env = {"POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK": "true"}
        with PostroomSuite(["imap"], users=len(wanted), extra_env=env,
                           replicas=ctx.replicas) as suite:
            for index, n in enumerate(wanted):
                # seeding 100k costs a minute or two; the timed part seconds
                if not ctx.share.fits(30 + n / 1000):
                    curves["SELECT"].notes.append(f"{n} messages: left out (time budget)")
                    break
                user = suite.user(index)
                started = time.monotonic()
                mailgen.seed_dovecot(mailgen.make_maildir("scale", n), dovecot.maildir(user))
                mailgen.seed_postroom(mailgen.make_maildir("scale", 1), user, suite.env,
                                      timeout=120)
                mailgen.replicate_postroom(suite, user, n)
                progress(f"  {n}-message INBOX seeded on both sides in "
                         f"{time.monotonic() - started:.0f}s")
                got: dict[str, dict[str, list[float]]] = {}
                for side, port in ((POSTROOM, suite.ports["imap"]),
                                   (curves["SELECT"].peer, dovecot.imap_port)):
                    imap_scale._timed_ops(port, user, 0)  # warm: Dovecot builds its index
                    for _ in range(3):
                        for op, ms in imap_scale._timed_ops(port, user, n // 2).items():
                            got.setdefault(side, {}).setdefault(op, []).append(ms)
                line = []
                for side, ops in got.items():
                    for op, values in ops.items():
                        key = op.split()[0]
                        curves[key].add(side, n, statistics.median(values))
                    line.append(side + " " + ", ".join(
                        f"{op.split()[0]} {statistics.median(v):.1f} ms"
                        for op, v in ops.items()))
                progress(f"  {n} messages: " + "; ".join(line))
    finally:
        dovecot.stop()


# --- memory against idle connections

async def _idle_steps(port: int, user: str, targets: tuple[int, ...], seconds: float,
                      measure: Callable[[], int], curve: Curve, side: str) -> None:
    holders: list[asyncio.StreamWriter] = []
    # warm up: a few logins to every process (imports, pools, caches), then closed
    await imap_scale._open_idle(port, user, WARM_UP, 30, holders)
    await imap_scale._close_all(holders)
    deadline = time.monotonic() + seconds
    try:
        for target in targets:
            left = deadline - time.monotonic()
            if left <= 0:
                curve.notes.append(f"{side}: {target} connections left out (time slice)")
                break
            failures = await imap_scale._open_idle(port, user, target - len(holders), left,
                                                   holders)
            await asyncio.sleep(7)  # Dovecot hibernates its idle imap processes after 5 s
            total = measure() / 1024
            curve.add(side, len(holders), total)
            progress(f"  idle {side}: {len(holders)} open ({failures} failed), "
                     f"{total:.0f} MiB in all")
            if len(holders) < target:
                curve.notes.append(f"{side}: {len(holders)} of {target} opened in the time "
                                   "slice; larger counts left out")
                break
    finally:
        await imap_scale._close_all(holders)


def idle(ctx: Context, curve: Curve) -> None:
    targets = sizes("idle", ctx)
    most = max(targets)
    # this process holds the client ends; each server process its own share of the others
    nofile = raise_nofile(most + 4096)
    if nofile < most + 1024:
        curve.notes.append(f"open-file limit {nofile} is low for {most} connections")
    # each side gets at most a third of what is left of the share
    seconds = max(30.0, min(300.0, ctx.share.left() / 3))
    maildir = mailgen.make_maildir("mix", 20)
    dovecot = Dovecot(users=1, hibernate="5s", lmtp=False,
                      process_limit=max(6000, most + 500)).start()
    try:
        env = {"POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK": "true"}
        with PostroomSuite(["imap"], users=1, extra_env=env, replicas=ctx.replicas) as suite:
            user = suite.user(0)
            mailgen.seed_dovecot(maildir, dovecot.maildir(user))
            mailgen.seed_postroom(maildir, user, suite.env, timeout=120)

            def postroom_pss() -> int:
                stats = cpu.all_stats()
                return sum(pss_kib(pid) for pid in cpu.tree(suite.pids("imap").values(), stats))

            for side, port, measure in ((POSTROOM, suite.ports["imap"], postroom_pss),
                                        (curve.peer, dovecot.imap_port, dovecot.memory_kib)):
                asyncio.run(_idle_steps(port, user, targets, seconds, measure, curve, side))
    finally:
        dovecot.stop()


def make_curves() -> dict[str, Curve]:
    pd, dv = "Postfix+Dovecot", "Dovecot"
    curves = {
        "inbound_rate": Curve("inbound-rate", "Inbound accept rate against SMTP sessions",
                              "concurrent SMTP sessions", "accepted msg/s", pd),
        "inbound_p99": Curve("inbound-p99", "Inbound p99 accept latency against SMTP sessions",
                             "concurrent SMTP sessions", "p99 MAIL FROM to 250, ms", pd,
                             higher_is_better=False),
        "imap_ops": Curve("imap-ops", "IMAP mix throughput against clients",
                          "concurrent IMAP clients (one account each)", "operations/s", dv),
        "imap_p99": Curve("imap-p99", "IMAP mix p99 latency against clients",
                          "concurrent IMAP clients (one account each)", "p99 latency, ms", dv,
                          higher_is_better=False),
        "SELECT": Curve("mailbox-select", "SELECT INBOX against mailbox size",
                        "messages in INBOX", "SELECT, ms", dv, higher_is_better=False),
        "FETCH": Curve("mailbox-fetch", "FETCH 1:* (UID FLAGS) against mailbox size",
                       "messages in INBOX", "FETCH 1:*, ms", dv, higher_is_better=False),
        "SEARCH": Curve("mailbox-search", "UID SEARCH HEADER (one match) against mailbox size",
                        "messages in INBOX", "SEARCH, ms", dv, higher_is_better=False),
        "idle": Curve("idle-memory", "Memory against idle IMAP connections",
                      "connections in IDLE", "memory of every process (PSS), MiB",
                      "Dovecot", higher_is_better=False),
    }
    return curves


def conditions(day: str, cores: int, load_before: float, load_now: float,
               quick: bool) -> str:
    """The curves' one-line conditions. "Loaded machine" goes by ``load_before``, the load
    average sampled before the bench's first workload: by the time the curves start, the
    bench's own earlier workloads have raised the load average of even a quiet machine."""
    said = (f"{day}, {cores} cores, load average {load_before:.1f} before the bench "
            f"({load_now:.1f} at the curves), {'--quick sizes' if quick else 'default sizes'}")
    if load_before > cores:
        said += " (loaded machine: functional check)"
    return said


def run(ctx: Context) -> list[Row]:
    ctx.need_services("imap", "mta", "mda", "dmarc")
    if Dovecot.available(lmtp=False):
        raise Skip(f"Dovecot unavailable: {Dovecot.available(lmtp=False)}")
    wanted = ctx.curves or CURVES
    curves = make_curves()
    load_now = os.getloadavg()[0]
    said = conditions(dt.date.today().isoformat(), os.cpu_count() or 1,
                      load_now if ctx.load_before is None else ctx.load_before, load_now,
                      ctx.quick)
    parts: list[tuple[str, list[str], Callable[[], None]]] = [
        ("inbound", ["inbound_rate", "inbound_p99"],
         lambda: inbound(ctx, curves["inbound_rate"], curves["inbound_p99"])),
        ("imap_clients", ["imap_ops", "imap_p99"],
         lambda: imap_clients(ctx, curves["imap_ops"], curves["imap_p99"])),
        ("mailbox", ["SELECT", "FETCH", "SEARCH"], lambda: mailbox(ctx, curves)),
        ("idle", ["idle"], lambda: idle(ctx, curves["idle"])),
    ]
    load_at_start: dict[str, float] = {}
    for name, keys, part in parts:
        if name not in wanted:
            continue
        why = (ctx.peers_missing.get("debian") or Postfix.available()
               or Dovecot.available(lmtp=True))
        if name == "inbound" and why:
            progress(f"  inbound curve skipped: {why}")
            continue
        if not ctx.share.fits(30):
            progress(f"  {name} curve left out: time budget")
            continue
        progress(f"  curve {name}: {', '.join(str(s) for s in sizes(name, ctx))}")
        load_at_start[name] = os.getloadavg()[0]
        for key in keys:
            curves[key].notes.append(f"load average {load_at_start[name]:.1f} when this "
                                     "curve started")
        started = time.monotonic()
        try:
            part()
        except (OSError, RuntimeError, TimeoutError) as exc:
            progress(f"  curve {name} FAILED: {exc}"[:300])
        progress(f"  curve {name} done in {time.monotonic() - started:.0f}s")
    written = curvedata.write(list(curves.values()), BENCH / "results" / "curves", said)
    progress("  curves written: " + ", ".join(p.name for p in written))
    ctx.extras["curves"] = {"conditions": said, "load1_before": ctx.load_before,
                            "load1_at_start": load_at_start,
                            "curves": [c.as_dict() for c in curves.values() if c.series]}
    return []
