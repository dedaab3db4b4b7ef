"""The relay's work queue in the store: lock an entry, hand local recipients over, bounce."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from postroom.store import dkim, domains, spool, spool_work

BODY = b"From: a@example.test\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture
def db(database, clean_db):
    database.run_sync(domains.add_domain, "example.test")
    return database


def make(db, *addresses):
    return db.run_sync(spool.create_spool_ids, kind="submission", mail_from="a@example.test",
                       recipients=[(a, "outbound", None, None) for a in addresses],
                       message=BODY)


def test_lock_entry_of_a_deleted_message_is_none(db):
    assert db.run_sync(spool_work.lock_entry, "NOSUCHQUEUEID000", [1]) is None


def test_lock_entry_returns_the_message_and_only_the_entry_recipients(db):
    queue_id, ids = make(db, "b@example.test", "c@remote.test")
    entry = db.run_sync(spool_work.lock_entry, queue_id, [ids[1], 999_999_999])
    assert entry.mail_from == "a@example.test" and entry.kind == "submission"
    assert [(r.id, r.address, r.state, r.stream) for r in entry.recipients] == [
        (ids[1], "c@remote.test", "pending", "outbound")]


def test_move_to_deliver_puts_recipients_on_the_deliver_stream(db):
    queue_id, ids = make(db, "b@example.test", "c@remote.test")
    db.run_sync(spool_work.move_to_deliver, ids[:1], datetime.now(UTC))
    streams = {r.id: r.stream for r in db.run_sync(spool.get_spool, queue_id).recipients}
    assert streams == {ids[0]: "deliver", ids[1]: "outbound"}


def test_bounce_failed_marks_and_returns_only_failed_recipients(db):
    queue_id, ids = make(db, "b@example.test", "c@remote.test")
    db.run_sync(spool.mark_failed, ids[1], "550 5.1.1 no such user")
    assert db.run_sync(spool_work.failed_queue_ids) == [queue_id]
    info = db.run_sync(spool.get_spool, queue_id)
    bounced = db.run_sync(spool_work.bounce_failed, info.id)
    assert [(r.id, r.state, r.last_error) for r in bounced] == [
        (ids[1], "bounced", "550 5.1.1 no such user")]
    assert db.run_sync(spool_work.bounce_failed, info.id) == []
    assert db.run_sync(spool_work.failed_queue_ids) == []


def test_is_local_domain_is_false_for_a_name_that_is_not_a_domain(db):
    assert db.run_sync(domains.is_local_domain, "Example.TEST.")
    assert not db.run_sync(domains.is_local_domain, "exa mple.test")


def test_active_keys_of_a_name_that_is_not_a_domain_are_none(db):
    db.run_sync(dkim.generate_key, "example.test", "ed25519-sha256", "s1")
    assert [k.selector for k in db.run_sync(dkim.active_keys, "EXAMPLE.test")] == ["s1"]
    assert db.run_sync(dkim.active_keys, "exa mple.test") == []
    assert db.run_sync(dkim.active_keys, "remote.test") == []


def test_lock_entry_says_whether_each_recipients_domain_is_ours(db):
    queue_id, ids = make(db, "b@Example.TEST.", "c@remote.test", "bare")
    entry = db.run_sync(spool_work.lock_entry, queue_id, ids)
    assert [(r.domain, r.domain_local) for r in entry.recipients] == [
        ("example.test", True), ("remote.test", False), (None, False)]


def test_load_work_routes_by_domain_as_is_local_domain_does(db):
    from postroom_mta import worker_store

    db.run_sync(domains.add_domain, "bücher.test")
    addresses = ["b@Example.TEST.", "c@remote.test", "d@BÜCHER.test", "e@xn--bcher-kva.test",
                 "f@exa mple.test"]
    queue_id, ids = make(db, *addresses)
    work = db.run_sync(worker_store.load_work, queue_id, ids, datetime.now(UTC))
    # a domain the statement cannot normalise (IDN) is asked of postroom.store.domains
    assert [a for _id, a in work.local] == ["b@Example.TEST.", "d@BÜCHER.test",
                                            "e@xn--bcher-kva.test"]
    assert [r.address for r in work.remote] == ["c@remote.test", "f@exa mple.test"]
