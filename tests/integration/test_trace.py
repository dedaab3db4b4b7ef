"""`postroom trace QUEUE_ID`: one message's story from the spool and the mailboxes."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from postroom.ops.trace import format_trace, load_trace
from postroom.store import domains, mailboxes, spool, users
from postroom.store.db import Database


@pytest.fixture
def queued(clean_db):
    """A message from outside: bob's copy delivered to INBOX, carol's deferred once."""
    database = Database(clean_db, pool_size=1)

    def build(session):
        domains.add_domain(session, "example.test")
        bob = users.add_user(session, "bob@example.test", "bob-secret-1",
                             hash_fn=lambda p: "x" + p)
        queue_id = spool.create_spool(
            session, kind="inbound", mail_from="alice@example.org",
            recipients=[("bob@example.test", "deliver", None, None),
                        ("carol@example.net", "outbound", None, None)],
            message=b"Subject: hi\r\n\r\nhello\r\n", size=22, peer_ip="192.0.2.7",
            helo="mx.example.org")
        info = spool.get_spool(session, queue_id)
        bob_rcpt, carol_rcpt = info.recipients
        mailboxes.deliver_to_mailbox(session, user_id=bob.id, mailbox_name="INBOX",
                                     message_id=info.message_id,
                                     spool_recipient_id=bob_rcpt.id)
        spool.mark_delivered(session, bob_rcpt.id)
        spool.mark_deferred(session, carol_rcpt.id, "451 4.7.1 greylisted, try later",
                            datetime.now(UTC) + timedelta(minutes=5))
        return queue_id

    try:
        yield clean_db, database.run_sync(build)
    finally:
        database.dispose()


def test_trace_tells_received_delivery_and_deferral(queued):
    url, queue_id = queued
    database = Database(url, pool_size=1)
    try:
        text = format_trace(database.run_sync(load_trace, queue_id))
    finally:
        database.dispose()
    lines = text.splitlines()
    assert lines[0] == f"queue id {queue_id}"
    assert "received inbound <alice@example.org> from 192.0.2.7 (HELO mx.example.org)" in lines[1]
    assert any("<bob@example.test> stored in bob@example.test INBOX uid 1" in li
               for li in lines)
    assert any("<carol@example.net> deferred: 451 4.7.1 greylisted" in li for li in lines)
    assert any("<carol@example.net> pending after 1 attempt(s)" in li for li in lines)
    assert "next attempt" in lines[-1]


def test_trace_command_prints_the_story_and_fails_in_one_line_for_unknown_ids(queued):
    url, queue_id = queued
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env["POSTROOM_DATABASE_URL"] = url
    found = subprocess.run([sys.executable, "-m", "postroom.ops.cli", "trace", queue_id],
                           capture_output=True, text=True, env=env, timeout=60)
    assert found.returncode == 0, found.stderr
    assert "stored in bob@example.test INBOX uid 1" in found.stdout
    missing = subprocess.run([sys.executable, "-m", "postroom.ops.cli", "trace", "NOSUCHID"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert missing.returncode == 1
    assert missing.stderr.startswith("postroom: error: no message with queue id NOSUCHID")
    assert len(missing.stderr.strip().splitlines()) == 1


def test_trace_lists_every_attempt_in_order(queued):
    url, queue_id = queued
    database = Database(url, pool_size=1)

    def retry_then_deliver(session):
        carol = spool.get_spool(session, queue_id).recipients[1]
        spool.mark_deferred(session, carol.id, "421 4.3.2 mx.example.net shutting down",
                            datetime.now(UTC))
        spool.mark_delivered(session, carol.id, "250 2.0.0 ok from mx.example.net")

    try:
        database.run_sync(retry_then_deliver)
        story = database.run_sync(load_trace, queue_id)
    finally:
        database.dispose()
    carol = story["recipients"][1]
    assert [step["result"] for step in carol["history"]] == ["deferred", "deferred", "delivered"]
    text = format_trace(story)
    first, second, done = (text.index("greylisted"), text.index("shutting down"),
                           text.index("250 2.0.0 ok"))
    assert first < second < done
    assert "pending after" not in text
