"""Workload 4: an IMAP mix with N concurrent clients against Postroom imap and Dovecot.

Each client has its own account holding the same 200 seeded messages on both
sides, and repeats for a fixed time: LOGIN, SELECT INBOX, FETCH 1:20 header
fields (From To Subject Date), FETCH one whole body (BODY.PEEK[]), STORE
+FLAGS (\\Flagged) on one message, APPEND a 1.5 KiB message, STORE \\Deleted on
it and EXPUNGE, LOGOUT: 9 operations a round. Plaintext LOGIN on loopback on
both sides (Dovecot ssl=no; Postroom with
POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK). Reported: operations per second,
p50 and p99 latency of all operations, and the CPU milliseconds per operation of
each side's processes (bench/cpu.py): on average over the mix, then one short
phase per operation type (LOGIN, SELECT, FETCH headers, FETCH body, STORE,
APPEND, STORE \\Deleted + EXPUNGE), each client looping that one command.
"""

from __future__ import annotations

import imaplib
import random
import re
import threading
import time

import cpu
from common import Skip, percentile, progress
from peers.dovecot import Dovecot
from postroom_suite import PASSWORD, PostroomSuite

from workloads import mailgen
from workloads.base import Context, Row

NAME = "imap_mix"
TITLE = "4. IMAP mix, 10 concurrent clients (login/select/fetch/store/append/expunge/logout)"
CLIENTS = 10
SEEDED = 200
DURATION = 15.0
_APPENDUID = re.compile(rb"APPENDUID \d+ (\d+)")
# the per-operation CPU phases, each clients x PHASE seconds of one command
OPS = ("LOGIN", "SELECT", "FETCH headers", "FETCH body", "STORE", "APPEND",
       "STORE Deleted+EXPUNGE")
PHASE = 3.0
HEADERS = "(UID BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])"


class Timer:
    def __init__(self) -> None:
        self.samples: list[float] = []
        self.lock = threading.Lock()
        self.errors: list[str] = []

    def timed(self, fn, *args):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        typ, data = fn(*args)
        elapsed = time.perf_counter() - started
        if typ not in ("OK", "BYE"):
            raise imaplib.IMAP4.error(f"{fn.__name__}: {typ} {data!r}"[:200])
        with self.lock:
            self.samples.append(elapsed)
        return data


def _round(port: int, user: str, timer: Timer, rng: random.Random) -> None:
    started = time.perf_counter()
    conn = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    with timer.lock:
        timer.samples.append(time.perf_counter() - started)  # connect + greeting
    try:
        timer.timed(conn.login, user, PASSWORD)
        data = timer.timed(conn.select, "INBOX")
        exists = int(data[0] or 1)
        timer.timed(conn.fetch, f"1:{min(20, exists)}",
                    "(UID BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])")
        n = rng.randint(1, min(exists, SEEDED))
        timer.timed(conn.fetch, str(n), "(BODY.PEEK[])")
        timer.timed(conn.store, str(rng.randint(1, min(exists, SEEDED))), "+FLAGS", "(\\Flagged)")
        data = timer.timed(conn.append, "INBOX", "", imaplib.Time2Internaldate(time.time()),
                           mailgen.message(rng.randint(0, 10**6)))
        match = _APPENDUID.search(data[0] or b"")
        if match:
            timer.timed(conn.uid, "STORE", match.group(1).decode(), "+FLAGS.SILENT", "(\\Deleted)")
        else:
            timer.timed(conn.store, "*", "+FLAGS.SILENT", "(\\Deleted)")
        timer.timed(conn.expunge)
        timer.timed(conn.logout)
    finally:
        try:
            conn.shutdown()
        except OSError:
            pass


def load(port: int, users: list[str],
         duration: float) -> tuple[float, float, float, int, int]:
    """(ops/s, p50 ms, p99 ms, errors, operations) for a thread per user looping rounds for
    ``duration``."""
    timer = Timer()
    stop_at = time.monotonic() + duration

    def client(user: str, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            try:
                _round(port, user, timer, rng)
            except (OSError, imaplib.IMAP4.error) as exc:
                timer.errors.append(str(exc))
                time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(u, i), daemon=True)
               for i, u in enumerate(users)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 60)
    elapsed = time.monotonic() - started
    if not timer.samples:
        raise RuntimeError(f"no operation succeeded; first error: {timer.errors[:1]}")
    return (len(timer.samples) / elapsed, 1000 * (percentile(timer.samples, 50) or 0),
            1000 * (percentile(timer.samples, 99) or 0), len(timer.errors), len(timer.samples))


def warm_logins(port: int, users: list[str], parallel: int = 32) -> None:
    """LOGIN + LOGOUT once per account, ``parallel`` at once, untimed: the servers' login
    caches then hold every account (Dovecot's auth cache; Postroom's group of workers, which
    share what one of them verified, docs/decisions/0023), so a timed run measures IMAP
    operations rather than the first check of each account's password hash."""
    from concurrent.futures import ThreadPoolExecutor

    def login(user: str) -> None:
        conn = imaplib.IMAP4("127.0.0.1", port, timeout=60)
        conn.login(user, PASSWORD)
        conn.logout()

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(login, users))


def _one_op(port: int, user: str, op: str, stop_at: float, timer: Timer, rng: random.Random,
            appended: list[bytes]) -> None:
    """Loop one command until ``stop_at`` on one logged-in, selected connection (LOGIN: a
    connection per round: connect, LOGIN, LOGOUT counted as one)."""
    if op == "LOGIN":
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            conn = imaplib.IMAP4("127.0.0.1", port, timeout=30)
            conn.login(user, PASSWORD)
            conn.logout()
            with timer.lock:
                timer.samples.append(time.perf_counter() - started)
        return
    conn = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    try:
        conn.login(user, PASSWORD)
        exists = int(conn.select("INBOX")[1][0] or 1)
        flip = False
        while time.monotonic() < stop_at:
            n = str(rng.randint(1, min(exists, SEEDED)))
            if op == "SELECT":
                timer.timed(conn.select, "INBOX")
            elif op == "FETCH headers":
                timer.timed(conn.fetch, f"1:{min(20, exists)}", HEADERS)
            elif op == "FETCH body":
                timer.timed(conn.fetch, n, "(BODY.PEEK[])")
            elif op == "STORE":
                flip = not flip
                timer.timed(conn.store, n, "+FLAGS" if flip else "-FLAGS", "(\\Flagged)")
            elif op == "APPEND":
                data = timer.timed(conn.append, "INBOX", "",
                                   imaplib.Time2Internaldate(time.time()),
                                   mailgen.message(rng.randint(0, 10**6)))
                match = _APPENDUID.search(data[0] or b"")
                if match:
                    appended.append(match.group(1))
            else:  # STORE \Deleted + EXPUNGE of one message the APPEND phase added
                if not appended:
                    return
                uid = appended.pop().decode()
                started = time.perf_counter()
                conn.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")
                typ, data = conn.expunge()
                if typ != "OK":
                    raise imaplib.IMAP4.error(f"EXPUNGE: {typ} {data!r}"[:200])
                with timer.lock:
                    timer.samples.append(time.perf_counter() - started)
        conn.logout()
    finally:
        try:
            conn.shutdown()
        except OSError:
            pass


def op_phase(port: int, users: list[str], op: str, duration: float,
             appended: dict[str, list[bytes]]) -> tuple[int, float, int]:
    """(operations, p50 ms, errors) of one command looped by a thread per user."""
    timer = Timer()
    stop_at = time.monotonic() + duration

    def client(user: str, seed: int) -> None:
        try:
            _one_op(port, user, op, stop_at, timer, random.Random(seed),
                    appended.setdefault(user, []))
        except (OSError, imaplib.IMAP4.error) as exc:
            timer.errors.append(str(exc))

    threads = [threading.Thread(target=client, args=(u, i), daemon=True)
               for i, u in enumerate(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 60)
    return (len(timer.samples), 1000 * (percentile(timer.samples, 50) or 0),
            len(timer.errors))


def cpu_per_op(ctx: Context, mine: cpu.Meter, theirs: cpu.Meter, ports: tuple[int, int],
               users: list[str], phase: float) -> None:
    """One phase per operation type on each side, CPU sampled around each (a CPU column
    per operation type)."""
    for op in OPS:
        fig = cpu.figure(op, "op", "Dovecot")
        ctx.cpu.append(fig)
        line = []
        for side, port, meter, tally, appended in (
                ("postroom", ports[0], mine, fig.postroom, _appended_p),
                ("dovecot", ports[1], theirs, fig.peer_side, _appended_d)):
            before = meter.sample()
            count, q50, errors = op_phase(port, users, op, phase, appended)
            tally.between(before, meter.sample(), count)
            per = tally.total()
            line.append(f"{side} {count} ops, p50 {q50:.1f} ms, "
                        f"{per if per is not None else 0:.2f} CPU ms/op"
                        + (f", {errors} error(s)" if errors else ""))
        progress(f"  {op}: " + "; ".join(line))


# messages the APPEND phase added, per user and side, for the EXPUNGE phase
_appended_p: dict[str, list[bytes]] = {}
_appended_d: dict[str, list[bytes]] = {}


def _profile(suite: PostroomSuite, users: list[str]) -> dict[str, object]:
    import profiling

    why = profiling.available()
    if why:
        progress(f"  profile skipped: {why}")
        return {}
    progress(f"  profiling imap with py-spy during {DURATION / 2:.0f}s more of the mix (untimed)")
    prof = profiling.Profiler(suite.pids("imap")).start()
    try:
        load(suite.ports["imap"], users, DURATION / 2)
    finally:
        result = prof.stop()
    return result


def run(ctx: Context) -> list[Row]:
    ctx.need_services("imap")
    if Dovecot.available(lmtp=False):
        raise Skip(f"Dovecot unavailable: {Dovecot.available(lmtp=False)}")
    ops = Row(NAME, "operations", "ops/s", "Dovecot")
    mix = cpu.figure("imap_mix (average)", "op", "Dovecot")
    ctx.cpu.append(mix)
    p50 = Row(NAME, "latency p50", "ms", "Dovecot", higher_is_better=False)
    p99 = Row(NAME, "latency p99", "ms", "Dovecot", higher_is_better=False)
    maildir = mailgen.make_maildir("mix", SEEDED)
    dovecot = Dovecot(users=CLIENTS, lmtp=False).start()
    try:
        env = {"POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK": "true"}
        with PostroomSuite(["imap"], users=CLIENTS, extra_env=env, replicas=ctx.replicas) as suite:
            users = [suite.user(n) for n in range(CLIENTS)]
            progress(f"  seeding {CLIENTS} x {SEEDED} messages on both sides")
            for user in users:
                mailgen.seed_dovecot(maildir, dovecot.maildir(user))
            mailgen.seed_postroom(maildir, users[0], suite.env, timeout=300)
            suite.clone_inbox(users[0], users[1:])
            mine = cpu.postroom_meter(suite, ["imap"])
            theirs = cpu.peer_meter("Dovecot", dovecot.root_pids)
            # first, and whatever the share says (bounded: 7 phases of PHASE s a side): the
            # per-operation CPU is the figure issue 23 works from; both sides' mailboxes
            # end as they started but for the few APPENDs the EXPUNGE phase did not reach
            if ctx.budget.fits(len(OPS) * 2 * PHASE + 60):
                progress(f"  CPU per operation type: {len(OPS)} phases of {PHASE:.0f}s a side")
                _appended_p.clear()
                _appended_d.clear()
                cpu_per_op(ctx, mine, theirs, (suite.ports["imap"], dovecot.imap_port), users,
                           PHASE)
            for i in range(ctx.runs):
                if not ctx.another_run(i):
                    progress(f"  budget: stopping after {i} run(s)")
                    break
                for side, port, rows, meter, tally in (
                        ("postroom", suite.ports["imap"], ops.postroom, mine, mix.postroom),
                        ("dovecot", dovecot.imap_port, ops.peer_runs, theirs, mix.peer_side)):
                    before = meter.sample()
                    rate, q50, q99, errors, done = load(port, users, DURATION)
                    tally.between(before, meter.sample(), done)
                    rows.append(rate)
                    (p50.postroom if side == "postroom" else p50.peer_runs).append(q50)
                    (p99.postroom if side == "postroom" else p99.peer_runs).append(q99)
                    progress(f"  run {i + 1} {side}: {rate:.0f} ops/s, p50 {q50:.1f} ms, "
                             f"p99 {q99:.1f} ms, {errors} error(s)")
            if ctx.profile and ctx.share.fits(DURATION + 60):
                ctx.extras["profile_imap_mix"] = _profile(suite, users)
    finally:
        dovecot.stop()
    return [ops, p50, p99]
