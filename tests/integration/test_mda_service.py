"""The mda as a service: change events on Redis, and real `mda` processes consuming `deliver`."""

from __future__ import annotations

import functools
import signal
import time
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, func, select
from twisted.python.threadpool import ThreadPool

from postroom.auth.passwords import hash_password
from postroom.queue import events
from postroom.queue.consumer import QueueEntry
from postroom.queue.envelope import Envelope
from postroom.queue.streams import QueueClient
from postroom.store import domains, spool, users
from postroom.store.models import Mailbox, MailboxEntry, SpoolRecipient
from postroom_mda.delivery import Options
from postroom_mda.service import Deliverer
from tests.support.procs import runtime_argv
from tests.support.redisdb import in_reactor, wait_until

cheap = functools.partial(hash_password, ln=4)
SERVICE = "postroom_mda.main:SERVICE"


@pytest.fixture
def db(database, clean_db):
    return database


def add_users(db, count):
    db.run_sync(domains.add_domain, "example.test")
    return [db.run_sync(users.add_user, f"u{i}@example.test", "pw", hash_fn=cheap)
            for i in range(count)]


def spool_and_enqueue(db, queue, address, n):
    message = b"From: a@remote.test\r\nSubject: %d\r\n\r\nbody %d\r\n" % (n, n)
    qid = db.run_sync(spool.create_spool, kind="inbound", mail_from="a@remote.test",
                      recipients=[(address, "deliver", None, None)], message=message,
                      enqueued_at=datetime.now(UTC))
    rids = tuple(r.id for r in db.run_sync(spool.get_spool, qid).recipients)
    queue.enqueue("deliver", Envelope(qid, rids, "deliver"))
    return qid


def uids_by_mailbox(db):
    rows = db.run_sync(lambda s: s.execute(
        select(Mailbox.user_id, MailboxEntry.uid)
        .join(Mailbox, Mailbox.id == MailboxEntry.mailbox_id)
        .order_by(Mailbox.user_id, MailboxEntry.uid)).all())
    result = defaultdict(list)
    for user_id, uid in rows:
        result[user_id].append(uid)
    return result


def delivered_count(db):
    return db.run_sync(lambda s: s.execute(
        select(func.count()).select_from(SpoolRecipient)
        .where(SpoolRecipient.state == "delivered")).scalar_one())


def mda_env(database_url, redis_url, prefix, **extra):
    env = {"POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
           "POSTROOM_REDIS_PREFIX": prefix, "POSTROOM_DB_POOL_SIZE": "4",
           "POSTROOM_HOSTNAME": "mx.example.test", "POSTROOM_QUEUE_CLAIM_IDLE": "2s",
           "POSTROOM_SHUTDOWN_GRACE": "5s"}
    env.update(extra)
    return env


def test_delivery_publishes_a_change_event(db, twisted_reactor, queue_client, redis_client):
    [alice] = add_users(db, 1)
    qid = db.run_sync(spool.create_spool, kind="inbound", mail_from="a@remote.test",
                      recipients=[("u0@example.test", "deliver", None, None)],
                      message=b"Subject: x\r\n\r\nbody\r\n")
    rids = tuple(r.id for r in db.run_sync(spool.get_spool, qid).recipients)
    inbox_id = db.run_sync(lambda s: s.execute(select(Mailbox.id).where(
        Mailbox.user_id == alice.id, Mailbox.name == "INBOX")).scalar_one())
    pubsub = redis_client.pubsub()
    pubsub.subscribe(events.channel(queue_client.prefix, inbox_id))
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    pool = ThreadPool(minthreads=0, maxthreads=1, name="test-publish")
    pool.start()
    try:
        deliverer = Deliverer(db, queue_client, Options(), pool=pool, reactor=twisted_reactor)
        in_reactor(deliverer.handle, QueueEntry("1-0", Envelope(qid, rids, "deliver")))
        event = pubsub.get_message(timeout=5)
    finally:
        pool.stop()
        pubsub.close()
    assert event is not None and event["type"] == "message"
    assert events.ChangeEvent.parse(event["data"]) == events.ChangeEvent(
        events.EXISTS, inbox_id, "mda", modseq=2, uid=1)


def test_recipient_that_cannot_be_delivered_is_parked_and_the_entry_completes(
        db, twisted_reactor, queue_client):
    [alice] = add_users(db, 1)
    # an account whose INBOX was removed by hand: delivery raises for it
    db.run_sync(lambda s: s.execute(delete(Mailbox).where(Mailbox.user_id == alice.id,
                                                          Mailbox.name == "INBOX")))
    qid = db.run_sync(spool.create_spool, kind="inbound", mail_from="a@remote.test",
                      recipients=[("u0@example.test", "deliver", None, None)],
                      message=b"Subject: x\r\n\r\nbody\r\n")
    [rid] = [r.id for r in db.run_sync(spool.get_spool, qid).recipients]
    pool = ThreadPool(minthreads=0, maxthreads=1, name="test-publish")
    pool.start()
    try:
        deliverer = Deliverer(db, queue_client, Options(), pool=pool, reactor=twisted_reactor)
        in_reactor(deliverer.handle, QueueEntry("1-0", Envelope(qid, (rid,), "deliver")))
    finally:
        pool.stop()
    row = db.run_sync(spool.get_recipient, rid)[1]
    assert (row.state, row.attempts) == ("pending", 1)
    assert row.last_error.startswith("451 4.3.0")


@pytest.mark.slow
def test_mda_process_delivers_an_enqueued_message_and_stops_on_sigterm(
        db, redis_url, redis_prefix, redis_client, service_process, database_url):
    [alice] = add_users(db, 1)
    queue = QueueClient(redis_client, redis_prefix)
    mda = service_process("mda", mda_env(database_url, redis_url, redis_prefix),
                          argv=runtime_argv(SERVICE))
    spool_and_enqueue(db, queue, "u0@example.test", 1)
    wait_until(lambda: uids_by_mailbox(db).get(alice.id) == [1], timeout=20)
    wait_until(lambda: queue.pending_count("deliver", "mda") == 0, timeout=10)
    assert queue.length("deliver") == 0  # acknowledged and deleted
    assert mda.stop() == 0
    events = [e["event"] for e in mda.log_events()]
    assert "recipient done" in events and "service stopped" in events


@pytest.mark.slow
def test_three_processes_deliver_every_message_exactly_once(
        db, redis_url, redis_prefix, redis_client, service_process, database_url):
    accounts = add_users(db, 20)
    queue = QueueClient(redis_client, redis_prefix)
    total = 400
    for n in range(total):
        spool_and_enqueue(db, queue, f"u{n % 20}@example.test", n)
    env = mda_env(database_url, redis_url, redis_prefix)
    for _ in range(3):
        service_process("mda", env, argv=runtime_argv(SERVICE), start=False)
    wait_until(lambda: delivered_count(db) == total, timeout=120, interval=0.2)
    uids = uids_by_mailbox(db)
    for account in accounts:
        assert uids[account.id] == list(range(1, total // 20 + 1))


@pytest.mark.slow
def test_killed_process_entries_are_claimed_by_another(
        db, redis_url, redis_prefix, redis_client, service_process, database_url):
    accounts = add_users(db, 5)
    queue = QueueClient(redis_client, redis_prefix)
    total = 300
    for n in range(total):
        spool_and_enqueue(db, queue, f"u{n % 5}@example.test", n)
    env = mda_env(database_url, redis_url, redis_prefix)
    first = service_process("mda", env, argv=runtime_argv(SERVICE), start=False)
    wait_until(lambda: delivered_count(db) > 0, timeout=30, interval=0.01)
    first.signal(signal.SIGKILL)
    first.wait_exit(10)
    assert delivered_count(db) < total
    started = time.monotonic()
    service_process("mda", env, argv=runtime_argv(SERVICE), start=False)
    wait_until(lambda: delivered_count(db) == total, timeout=90, interval=0.2)
    assert time.monotonic() - started < 60
    uids = uids_by_mailbox(db)
    for account in accounts:
        assert uids[account.id] == list(range(1, total // 5 + 1))


def test_each_copy_sieve_stores_publishes_its_change_event(db, twisted_reactor, queue_client,
                                                           redis_client):
    from postroom.store import mailboxes, sieve

    [alice] = add_users(db, 1)
    db.run_sync(mailboxes.create_mailbox, alice.id, "Lists")
    db.run_sync(sieve.put_script, alice.id, "main",
                'require ["fileinto", "copy"]; fileinto :copy "Lists";')
    db.run_sync(sieve.set_active, alice.id, "main")
    qid = db.run_sync(spool.create_spool, kind="inbound", mail_from="a@remote.test",
                      recipients=[("u0@example.test", "deliver", None, None)],
                      message=b"Subject: x\r\n\r\nbody\r\n")
    rids = tuple(r.id for r in db.run_sync(spool.get_spool, qid).recipients)
    boxes = dict(db.run_sync(lambda s: s.execute(select(Mailbox.name, Mailbox.id).where(
        Mailbox.user_id == alice.id)).all()))
    pubsub = redis_client.pubsub()
    for name in ("INBOX", "Lists"):
        pubsub.subscribe(events.channel(queue_client.prefix, boxes[name]))
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    pool = ThreadPool(minthreads=0, maxthreads=1, name="test-publish")
    pool.start()
    try:
        deliverer = Deliverer(db, queue_client, Options(), pool=pool, reactor=twisted_reactor)
        in_reactor(deliverer.handle, QueueEntry("1-0", Envelope(qid, rids, "deliver")))
        got = [pubsub.get_message(timeout=5) for _ in range(2)]
    finally:
        pool.stop()
        pubsub.close()
    seen = {events.ChangeEvent.parse(m["data"]).mailbox_id for m in got if m}
    assert seen == {boxes["INBOX"], boxes["Lists"]}


@pytest.mark.slow
def test_mda_process_runs_the_operators_before_script(
        db, redis_url, redis_prefix, redis_client, service_process, database_url, tmp_path):
    [alice] = add_users(db, 1)
    before = tmp_path / "before.sieve"
    before.write_text('require "fileinto";\nif header :contains "subject" "1" '
                      '{ fileinto "Junk"; stop; }\n')
    queue = QueueClient(redis_client, redis_prefix)
    env = mda_env(database_url, redis_url, redis_prefix, POSTROOM_SIEVE_BEFORE=str(before))
    mda = service_process("mda", env, argv=runtime_argv(SERVICE))
    spool_and_enqueue(db, queue, "u0@example.test", 1)
    spool_and_enqueue(db, queue, "u0@example.test", 2)
    wait_until(lambda: delivered_count(db) == 2, timeout=20)
    names = db.run_sync(lambda s: s.execute(
        select(Mailbox.name).join(MailboxEntry, MailboxEntry.mailbox_id == Mailbox.id)
        .where(Mailbox.user_id == alice.id).order_by(MailboxEntry.message_id)).scalars().all())
    assert names == ["Junk", "INBOX"]
    assert mda.stop() == 0
    done = [e for e in mda.log_events() if e["event"] == "recipient done"]
    assert {e.get("sieve") for e in done} == {"ok"}


@pytest.mark.slow
def test_mda_refuses_to_start_with_an_invalid_global_script(
        db, redis_url, redis_prefix, service_process, database_url, tmp_path):
    after = tmp_path / "after.sieve"
    after.write_text('keep;\nfileinto "x";\n')
    env = mda_env(database_url, redis_url, redis_prefix, POSTROOM_SIEVE_AFTER=str(after))
    mda = service_process("mda", env, argv=runtime_argv(SERVICE), start=False)
    assert mda.wait_exit(30) != 0
    assert "POSTROOM_SIEVE_AFTER" in mda.output and "line 2" in mda.output
    assert "Traceback" not in mda.output
