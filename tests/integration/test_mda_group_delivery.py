"""Group delivery in the mda (docs/decisions/0022) on a real PostgreSQL and Redis: queue
entries ready together are delivered in one transaction, each handler (and so each
acknowledgement) finishes only once its own copies are committed, a recipient that fails
fails alone, and a killed mda loses nothing and delivers each copy exactly once."""

from __future__ import annotations

import functools
import signal
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine
from twisted.internet.defer import DeferredList
from twisted.python.threadpool import ThreadPool

from postroom.auth.passwords import hash_password
from postroom.metrics import Metrics
from postroom.queue import events
from postroom.queue.consumer import QueueEntry
from postroom.queue.envelope import Envelope
from postroom.queue.streams import QueueClient
from postroom.store import domains, spool, users
from postroom.store.models import Mailbox, MailboxEntry
from postroom_mda.delivery import Options
from postroom_mda.service import Deliverer
from tests.support.procs import runtime_argv
from tests.support.redisdb import in_reactor, wait_until

cheap = functools.partial(hash_password, ln=4)
SERVICE = "postroom_mda.main:SERVICE"


@pytest.fixture
def db(database, clean_db):
    return database


@pytest.fixture
def observer(database_url: str) -> Iterator[Engine]:
    """A connection of its own: what another process sees committed."""
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    threads = ThreadPool(minthreads=0, maxthreads=1, name="test-group-delivery")
    threads.start()
    yield threads
    threads.stop()


def add_users(db, count):
    db.run_sync(domains.add_domain, "example.test")
    return [db.run_sync(users.add_user, f"u{i}@example.test", "pw", hash_fn=cheap)
            for i in range(count)]


def spooled(db, n: int, addresses: list[str]) -> QueueEntry:
    message = b"From: a@remote.test\r\nSubject: %d\r\n\r\nbody %d\r\n" % (n, n)
    qid, rids = db.run_sync(spool.create_spool_ids, kind="inbound", mail_from="a@remote.test",
                            recipients=[(a, "deliver", None, None) for a in addresses],
                            message=message, enqueued_at=datetime.now(UTC))
    return QueueEntry(f"{n}-0", Envelope(qid, tuple(rids), "deliver"))


def entries_by_xid(observer: Engine) -> dict[int, set[int]]:
    """Each writing transaction's id, with the spool recipients whose copies it stored."""
    with observer.connect() as conn:
        rows = conn.execute(text("SELECT xmin::text::bigint, spool_recipient_id "
                                 "FROM mailbox_entries")).all()
    found: dict[int, set[int]] = {}
    for xid, rid in rows:
        found.setdefault(int(xid), set()).add(int(rid))
    return found


def committed(observer: Engine, recipient_ids: tuple[int, ...]) -> bool:
    with observer.connect() as conn:
        delivered = conn.execute(text(
            "SELECT count(*) FROM spool_recipients r JOIN mailbox_entries e "
            "ON e.spool_recipient_id = r.id WHERE r.id = ANY(:ids) AND r.state = 'delivered'"),
            {"ids": list(recipient_ids)}).scalar_one()
    return int(delivered) == len(recipient_ids)


def handle_together(deliverer: Deliverer, entries: list[QueueEntry],
                    on_each: Any = None) -> list[tuple[bool, Any]]:
    """Hand every entry to the deliverer in one turn of the reactor (a burst read from the
    stream); each handler's (success, value) once all have fired."""
    def go() -> Any:
        deferreds = []
        for entry in entries:
            d = deliverer.handle(entry)
            if on_each is not None:
                d.addCallback(on_each, entry)
            deferreds.append(d)
        return DeferredList(deferreds, consumeErrors=True)

    return list(in_reactor(go, timeout=60))


def samples(metrics: Metrics, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metrics.registry.collect() if family.name == name
            for s in family.samples}


def test_entries_ready_together_share_one_transaction_and_each_finishes_after_its_commit(
        db, observer, pool, twisted_reactor, queue_client, redis_client):
    accounts = add_users(db, 3)
    entries = [spooled(db, n, [f"u{n % 3}@example.test"]) for n in range(6)]
    # a second entry of two recipients: both go with the others
    entries.append(spooled(db, 6, ["u0@example.test", "u1@example.test"]))
    inboxes = [db.run_sync(lambda s, uid=a.id: s.execute(select(Mailbox.id).where(
        Mailbox.user_id == uid, Mailbox.name == "INBOX")).scalar_one()) for a in accounts]
    pubsub = redis_client.pubsub()
    for box in inboxes:
        pubsub.subscribe(events.channel(queue_client.prefix, box))
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    metrics = Metrics("test", process_metrics=False)
    deliverer = Deliverer(db, queue_client, Options(), pool=pool, reactor=twisted_reactor,
                          metrics=metrics)
    seen_committed: dict[str, bool] = {}

    def finished(result: Any, entry: QueueEntry) -> Any:
        # what the consumer acknowledges now must be visible to every other process
        seen_committed[entry.entry_id] = committed(observer, entry.envelope.recipient_ids)
        return result

    results = handle_together(deliverer, entries, finished)
    try:
        assert all(ok for ok, _ in results)
        assert seen_committed == {e.entry_id: True for e in entries}
        # the first found the mda idle and went alone at once; the others waited for its
        # commit and went together, in one transaction
        first = set(entries[0].envelope.recipient_ids)
        rest = {rid for e in entries[1:] for rid in e.envelope.recipient_ids}
        assert sorted(entries_by_xid(observer).values(), key=len) == [first, rest]
        counts = samples(metrics, "postroom_delivery_commits")
        assert counts[("postroom_delivery_commits_total", (("result", "ok"),))] == 2
        sizes = samples(metrics, "postroom_delivery_commit_messages")
        assert sizes[("postroom_delivery_commit_messages_sum", ())] == 8
        # every copy's change event went out, from the group's one round trip
        got = [pubsub.get_message(timeout=5) for _ in range(8)]
        assert sum(1 for m in got if m and m["type"] == "message") == 8
    finally:
        pubsub.close()
    uids = db.run_sync(lambda s: s.execute(
        select(MailboxEntry.mailbox_id, MailboxEntry.uid)).all())
    per_box = Counter(box for box, _ in uids)
    assert sorted(per_box.values()) == [2, 3, 3]
    assert deliverer.delivered == 8


def test_a_recipient_failing_in_a_group_fails_alone(db, observer, pool, twisted_reactor,
                                                    queue_client):
    add_users(db, 2)
    entries = [spooled(db, n, [f"u{n % 2}@example.test"]) for n in range(5)]
    [poison] = entries[3].envelope.recipient_ids
    # PostgreSQL refuses this one recipient's copy (a real error, in the group's transaction)
    db.run_sync(lambda s: s.execute(text(
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.spool_recipient_id = {int(poison)} THEN RAISE EXCEPTION 'poison'; END IF; "
        "RETURN NEW; END $$; CREATE TRIGGER poison BEFORE INSERT ON mailbox_entries "
        "FOR EACH ROW EXECUTE FUNCTION poison()")))
    metrics = Metrics("test", process_metrics=False)
    deliverer = Deliverer(db, queue_client, Options(), pool=pool, reactor=twisted_reactor,
                          metrics=metrics)
    try:
        results = handle_together(deliverer, entries)
    finally:
        db.run_sync(lambda s: s.execute(text("DROP TRIGGER poison ON mailbox_entries; "
                                             "DROP FUNCTION poison()")))
    # every entry is done (acknowledged): the poison one parked with back-off, to retry
    assert all(ok for ok, _ in results)
    good = tuple(rid for e in entries for rid in e.envelope.recipient_ids if rid != poison)
    assert committed(observer, good)
    row = db.run_sync(spool.get_recipient, poison)[1]
    assert (row.state, row.attempts) == ("pending", 1)
    assert row.last_error.startswith("451 4.3.0")
    # the group of four failed for its one member's reason, and was retried one by one
    counts = samples(metrics, "postroom_delivery_commits")
    assert counts[("postroom_delivery_commits_total", (("result", "ok"),))] == 1
    assert counts[("postroom_delivery_commits_total", (("result", "split"),))] == 1
    assert len(entries_by_xid(observer)) == 4  # each good one of the group alone


def test_group_delivery_off_delivers_each_recipient_in_its_own_transaction(
        db, observer, pool, twisted_reactor, queue_client):
    add_users(db, 2)
    entries = [spooled(db, n, [f"u{n % 2}@example.test"]) for n in range(4)]
    deliverer = Deliverer(db, queue_client, Options(), pool=pool, reactor=twisted_reactor,
                          group_max=1)
    assert all(ok for ok, _ in handle_together(deliverer, entries))
    assert len(entries_by_xid(observer)) == 4


@pytest.mark.slow
def test_mda_killed_amid_group_deliveries_delivers_every_copy_once_after_restart(
        db, redis_url, redis_prefix, redis_client, service_process, database_url):
    accounts = add_users(db, 4)
    queue = QueueClient(redis_client, redis_prefix)
    total = 150
    for n in range(total):
        # three recipients an entry: the members of a group share blobs too
        entry = spooled(db, n, [f"u{(n + k) % 4}@example.test" for k in range(3)])
        queue.enqueue("deliver", entry.envelope)
    env = {"POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
           "POSTROOM_REDIS_PREFIX": redis_prefix, "POSTROOM_DB_POOL_SIZE": "4",
           "POSTROOM_HOSTNAME": "mx.example.test", "POSTROOM_QUEUE_CLAIM_IDLE": "2s",
           "POSTROOM_SHUTDOWN_GRACE": "5s"}

    def delivered() -> int:
        return int(db.run_sync(lambda s: s.execute(text(
            "SELECT count(*) FROM spool_recipients WHERE state = 'delivered'")).scalar_one()))

    first = service_process("mda", env, argv=runtime_argv(SERVICE), start=False)
    wait_until(lambda: delivered() > 0, timeout=30, interval=0.01)
    first.signal(signal.SIGKILL)
    first.wait_exit(10)
    assert delivered() < total * 3
    service_process("mda", env, argv=runtime_argv(SERVICE), start=False)
    wait_until(lambda: delivered() == total * 3, timeout=120, interval=0.2)
    rows = db.run_sync(lambda s: s.execute(text(
        "SELECT b.user_id, e.uid, e.spool_recipient_id FROM mailbox_entries e "
        "JOIN mailboxes b ON b.id = e.mailbox_id ORDER BY b.user_id, e.uid")).all())
    # exactly one copy per recipient, and UIDs with no gap and no reuse
    assert len({r[2] for r in rows}) == len(rows) == total * 3
    for account in accounts:
        uids = [r[1] for r in rows if r[0] == account.id]
        assert uids == list(range(1, len(uids) + 1))
    wait_until(lambda: queue.pending_count("deliver", "mda") == 0, timeout=30)
