"""Workload 3: authenticated submission over STARTTLS, 10 concurrent clients, end to end.

Each client (a thread with smtplib) connects, STARTTLS, AUTH PLAIN as its own
user, sends K messages of ~2 KiB to its own address over that session, and
quits. Timed until every message is in the mailboxes. Postroom: msa -> mta
(relay worker, local) -> mda. Peer: Postfix submission (STARTTLS required,
SASL via Dovecot auth) -> LMTP -> Dovecot.
"""

from __future__ import annotations

import smtplib
import ssl
import threading
import time
from collections.abc import Callable

import cpu
from common import Skip, progress
from peers.dovecot import Dovecot
from peers.postfix import Postfix
from postroom_suite import PASSWORD, PostroomSuite

from workloads.base import Context, Row

NAME = "submission"
TITLE = "3. Submission: 10 concurrent AUTH clients over STARTTLS, end to end"
CLIENTS = 10
PER_CLIENT = 30
BODY = ("x" * 76 + "\r\n") * 26


def _client(port: int, user: str, password: str, count: int, errors: list[str]) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            smtp.ehlo("client.bench.test")
            smtp.starttls(context=context)
            smtp.ehlo("client.bench.test")
            smtp.login(user, password)
            for i in range(count):
                message = (f"From: <{user}>\r\nTo: <{user}>\r\nSubject: bench {i}\r\n"
                           f"Message-ID: <{time.monotonic_ns()}.{i}@bench.test>\r\n\r\n{BODY}")
                smtp.sendmail(user, [user], message.encode())
    except (OSError, smtplib.SMTPException) as exc:
        errors.append(f"{user}: {exc}")


def load(port: int, users: list[str], password: str, count: Callable[[], int],
         timeout: float) -> tuple[float, float]:
    """(submitted seconds, delivered seconds) for CLIENTS x PER_CLIENT messages."""
    before = count()
    errors: list[str] = []
    started = time.monotonic()
    threads = [threading.Thread(target=_client, args=(port, u, password, PER_CLIENT, errors),
                                daemon=True) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    submitted = time.monotonic() - started
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed, first: {errors[0]}")
    total = len(users) * PER_CLIENT
    while count() - before < total:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"only {count() - before} of {total} delivered in {timeout:.0f}s")
        time.sleep(0.05)
    return submitted, time.monotonic() - started


def run(ctx: Context) -> list[Row]:
    ctx.need_services("msa", "mta", "mda")
    if ctx.peers_missing.get("debian"):
        raise Skip(f"peers unavailable: {ctx.peers_missing['debian']}")
    total = CLIENTS * PER_CLIENT
    submit = Row(NAME, "submit rate", "msg/s", "Postfix+Dovecot")
    delivered = Row(NAME, "delivered rate", "msg/s", "Postfix+Dovecot")
    timeout = 180.0
    used = cpu.figure(NAME, "msg", "Postfix+Dovecot")
    ctx.cpu.append(used)
    dovecot = Dovecot(users=CLIENTS).start()
    try:
        postfix = Postfix(f"lmtp:inet:127.0.0.1:{dovecot.lmtp_port}", auth_port=dovecot.auth_port,
                          submission=True).start()
        try:
            with PostroomSuite(["msa", "mta", "mda"], users=CLIENTS,
                               replicas=ctx.replicas) as suite:
                users = [suite.user(n) for n in range(CLIENTS)]
                mine = cpu.postroom_meter(suite, ["msa", "mta", "mda"])
                theirs = cpu.peer_meter("Postfix+Dovecot", postfix.master_pids,
                                        dovecot.root_pids)

                def peer_count() -> int:
                    return sum(dovecot.count_new(u) for u in users)

                for i in range(ctx.runs):
                    if not ctx.another_run(i):
                        progress(f"  budget: stopping after {i} run(s)")
                        break
                    before = mine.sample()
                    s, d = load(suite.ports["msa"], users, PASSWORD, suite.delivered, timeout)
                    used.postroom.between(before, mine.sample(), total)
                    submit.postroom.append(total / s)
                    delivered.postroom.append(total / d)
                    progress(f"  run {i + 1} postroom: submitted {total / s:.0f} msg/s, "
                             f"delivered {total / d:.0f} msg/s")
                    before = theirs.sample()
                    s, d = load(postfix.submission_port, users, PASSWORD, peer_count, timeout)
                    used.peer_side.between(before, theirs.sample(), total)
                    submit.peer_runs.append(total / s)
                    delivered.peer_runs.append(total / d)
                    progress(f"  run {i + 1} postfix+dovecot: submitted {total / s:.0f} msg/s, "
                             f"delivered {total / d:.0f} msg/s")
        finally:
            postfix.stop()
    finally:
        dovecot.stop()
    return [submit, delivered]
