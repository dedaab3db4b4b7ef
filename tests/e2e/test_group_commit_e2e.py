"""Group commit at the real front doors: real mta, msa, dmarc and mda processes, smtplib.

Many sessions finishing DATA at once: every message answered 250 is in its mailbox
exactly once (mta), or in the spool and on the `outbound` stream exactly once (msa).
A crash between a group commit and its replies (the mta kills itself there: the
POSTROOM_FAULT_CRASH_AFTER_SPOOL_COMMIT hook, which also holds the first commit until
six messages wait, so the crash hits a group whatever the timing) loses nothing: every
committed message is delivered after the restart, and a message is delivered twice only
when its client never heard the 250 and sent it again (docs/resilience.md).
"""

from __future__ import annotations

import re
import smtplib
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from postroom.queue.envelope import decode
from tests.support.redisdb import wait_until
from tests.support.suite import PASSWORD, Running, Suite

DOMAIN = "gc.example.test"
USERS = 4
TOKEN = re.compile(rb"^X-Token: (\S+)", re.MULTILINE)


@pytest.fixture
def front(suite: Suite, dns_server: Any) -> Iterator[tuple[Suite, dict[str, str]]]:
    """A suite with users, the dmarc and mda processes; the mta is the test's to start."""
    for n in range(USERS):
        suite.add_user(f"u{n}@{DOMAIN}")
    dmarc = suite.start("dmarc", POSTROOM_DMARC_REPORTS="false", POSTROOM_DNS_TIMEOUT="1s",
                        **dns_server.env)
    suite.start("mda", POSTROOM_RECONCILE_INTERVAL="1s")
    yield suite, {"POSTROOM_DMARC_URL": f"http://127.0.0.1:{dmarc.port}",
                  "POSTROOM_RECONCILE_INTERVAL": "1s", **dns_server.env}


def message(token: str, n: int) -> bytes:
    return (f"From: sender@remote.test\r\nTo: u{n % USERS}@{DOMAIN}\r\n"
            f"Subject: group {token}\r\nMessage-ID: <{token}@remote.test>\r\n"
            f"X-Token: {token}\r\n\r\nbody {token}\r\n").encode()


def send(port: int, token: str, n: int, barrier: threading.Barrier | None = None,
         ) -> tuple[int, bytes] | None:
    """One session, one message; its DATA reply, or None when the connection broke."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            client.ehlo("client.remote.test")
            client.mail("sender@remote.test")
            client.rcpt(f"u{n % USERS}@{DOMAIN}")
            if barrier is not None:
                barrier.wait(timeout=60)  # every session finishes DATA at about the same time
            return client.data(message(token, n))
    except (smtplib.SMTPException, OSError):
        return None


def send_all(port: int, tokens: list[str], *, together: bool = True,
             ) -> dict[str, tuple[int, bytes] | None]:
    replies: dict[str, tuple[int, bytes] | None] = {}
    barrier = threading.Barrier(len(tokens)) if together else None

    def one(n: int, token: str) -> None:
        replies[token] = send(port, token, n, barrier)

    threads = [threading.Thread(target=one, args=(n, t)) for n, t in enumerate(tokens)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return replies


def in_mailboxes(suite: Suite) -> Counter[str]:
    """How many copies of each token the mailboxes hold."""
    def read(session: Any) -> list[bytes]:
        return [bytes(row[0]) for row in session.execute(text(
            "SELECT m.blob FROM mailbox_entries e JOIN messages m ON m.id = e.message_id"))]
    found: Counter[str] = Counter()
    for blob in suite.db.run_sync(read):
        match = TOKEN.search(blob)
        if match:
            found[match.group(1).decode()] += 1
    return found


def spooled_tokens(suite: Suite) -> set[str]:
    def read(session: Any) -> list[bytes]:
        return [bytes(row[0]) for row in session.execute(text(
            "SELECT m.blob FROM spool_messages s JOIN messages m ON m.id = s.message_id"))]
    return {m.group(1).decode() for blob in suite.db.run_sync(read)
            if (m := TOKEN.search(blob)) is not None}


def test_every_message_answered_250_by_concurrent_sessions_is_delivered_exactly_once(
        front: tuple[Suite, dict[str, str]]):
    suite, env = front
    mta: Running = suite.start("mta", **env)
    tokens = [f"t{n:03d}" for n in range(40)]
    replies = send_all(mta.port, tokens)
    accepted = {t for t, r in replies.items() if r is not None and r[0] == 250}
    assert accepted == set(tokens), {t: r for t, r in replies.items() if t not in accepted}
    wait_until(lambda: set(in_mailboxes(suite)) >= accepted, timeout=120, interval=0.2)
    assert in_mailboxes(suite) == Counter({t: 1 for t in tokens})
    _, metrics = mta.process.get("/metrics")
    # the commits that held them (how many went together depends on the timing)
    assert b"postroom_spool_commit_messages_sum 40.0" in metrics


def test_a_crash_between_group_commit_and_replies_loses_nothing(
        front: tuple[Suite, dict[str, str]], tmp_path: Path):
    suite, env = front
    crash = tmp_path / "crash-after-spool-commit"
    crash.write_text("6")  # the first commit of six messages or more: a group
    mta = suite.start("mta", POSTROOM_FAULT_CRASH_AFTER_SPOOL_COMMIT=str(crash), **env)
    tokens = [f"c{n:03d}" for n in range(12)]
    replies = send_all(mta.port, tokens)
    assert mta.process.wait_exit(30) == -9
    # killed right after its first commit, before any reply: no client heard a 250
    assert all(r is None or r[0] != 250 for r in replies.values()), replies
    committed = spooled_tokens(suite)
    assert len(committed) >= 6 and committed <= set(tokens)
    # the restarted mta (or the mda) re-enqueues what the crash left unpublished
    crash.unlink()
    again = suite.start("mta", **env)
    wait_until(lambda: set(in_mailboxes(suite)) >= committed, timeout=120, interval=0.2)
    assert in_mailboxes(suite) == Counter({t: 1 for t in committed})
    # the clients heard no 250, so they send again (a 4xx or a broken connection means
    # "try later", RFC 5321 section 4.5.4.1): everything arrives, and only what was
    # committed without its 250 arrives twice
    retried = send_all(again.port, tokens, together=False)
    assert all(r is not None and r[0] == 250 for r in retried.values()), retried
    wait_until(lambda: sum(in_mailboxes(suite).values()) == len(tokens) + len(committed),
               timeout=120, interval=0.2)
    assert in_mailboxes(suite) == Counter({t: 2 if t in committed else 1 for t in tokens})


def test_concurrent_submissions_are_each_spooled_and_queued_exactly_once(suite: Suite):
    senders = [f"s{n}@{DOMAIN}" for n in range(4)]
    for sender in senders:
        suite.add_user(sender)
    msa = suite.start("msa")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    barrier = threading.Barrier(24)
    replies: dict[str, tuple[int, bytes] | None] = {}

    def submit(n: int) -> None:
        sender, token = senders[n % len(senders)], f"m{n:03d}"
        try:
            with smtplib.SMTP_SSL("127.0.0.1", msa.tls_port, timeout=60,
                                  context=context) as client:
                client.login(sender, PASSWORD)
                client.mail(sender)
                client.rcpt("friend@remote.example")
                barrier.wait(timeout=60)
                replies[token] = client.data(
                    f"From: {sender}\r\nTo: friend@remote.example\r\nSubject: {token}\r\n"
                    f"X-Token: {token}\r\n\r\nbody\r\n".encode())
        except (smtplib.SMTPException, OSError):
            replies[token] = None

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(r is not None and r[0] == 250 for r in replies.values()), replies
    queue_ids = {t: r[1].decode().rsplit(" ", 1)[1] for t, r in replies.items() if r}
    assert spooled_tokens(suite) == set(replies)
    queued = Counter(decode(fields).queue_id for _id, fields
                     in suite.redis.xrange(suite.queue.stream_key("outbound")))
    assert queued == Counter(queue_ids.values())  # each 250'd message queued exactly once
