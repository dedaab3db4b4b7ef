"""Workload 4: an IMAP mix with N concurrent clients against Postroom imap and Dovecot.

Each client has its own account holding the same 200 seeded messages on both
sides, and repeats for a fixed time: LOGIN, SELECT INBOX, FETCH 1:20 header
fields (From To Subject Date), FETCH one whole body (BODY.PEEK[]), STORE
+FLAGS (\\Flagged) on one message, APPEND a 1.5 KiB message, STORE \\Deleted on
it and EXPUNGE, LOGOUT: 9 operations a round. Plaintext LOGIN on loopback on
both sides (Dovecot ssl=no; Postroom with
POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK). Reported: operations per second,
p50 and p99 latency of all operations.
"""

from __future__ import annotations

import imaplib
import random
import re
import threading
import time

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


def load(port: int, users: list[str], duration: float) -> tuple[float, float, float, int]:
    """(ops/s, p50 ms, p99 ms, errors) for CLIENTS threads looping rounds for ``duration``."""
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
            1000 * (percentile(timer.samples, 99) or 0), len(timer.errors))


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
    if Dovecot.available():
        raise Skip(f"Dovecot unavailable: {Dovecot.available()}")
    ops = Row(NAME, "operations", "ops/s", "Dovecot")
    p50 = Row(NAME, "latency p50", "ms", "Dovecot", higher_is_better=False)
    p99 = Row(NAME, "latency p99", "ms", "Dovecot", higher_is_better=False)
    maildir = mailgen.make_maildir("mix", SEEDED)
    dovecot = Dovecot(users=CLIENTS).start()
    try:
        env = {"POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK": "true"}
        with PostroomSuite(["imap"], users=CLIENTS, extra_env=env, replicas=ctx.replicas) as suite:
            users = [suite.user(n) for n in range(CLIENTS)]
            progress(f"  seeding {CLIENTS} x {SEEDED} messages on both sides")
            for user in users:
                mailgen.seed_dovecot(maildir, dovecot.maildir(user))
            mailgen.seed_postroom(maildir, users[0], suite.env, timeout=300)
            suite.clone_inbox(users[0], users[1:])
            for i in range(ctx.runs):
                if not ctx.another_run(i):
                    progress(f"  budget: stopping after {i} run(s)")
                    break
                for side, port, rows in (("postroom", suite.ports["imap"], ops.postroom),
                                         ("dovecot", dovecot.imap_port, ops.peer_runs)):
                    rate, q50, q99, errors = load(port, users, DURATION)
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
