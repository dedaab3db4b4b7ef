"""The spool: creation, queue ids, state changes, back-off and the reconciler's queries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from postroom.store import spool
from postroom.store.errors import NotFound
from postroom.store.models import Message
from postroom.store.queueid import QUEUE_ID_LENGTH, is_queue_id, new_queue_id

BODY = b"From: a@remote.test\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture
def db(database, clean_db):
    return database


def make(db, recipients=(("a@example.test", "deliver", None, None),), **kw):
    params = dict(kind="inbound", mail_from="a@remote.test", recipients=list(recipients),
                  message=BODY)
    params.update(kw)
    return db.run_sync(spool.create_spool, **params)


def now():
    return datetime.now(UTC)


def test_queue_ids_are_short_unique_and_time_sortable():
    ids = [new_queue_id(1_700_000_000 + i) for i in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert all(len(i) == QUEUE_ID_LENGTH == 16 and is_queue_id(i) for i in ids)


def test_create_spool_keeps_envelope_and_recipients(db):
    qid = make(db, recipients=[("a@example.test", "deliver", "rfc822;A@example.test",
                                "SUCCESS,FAILURE"), ("b@remote.test", "outbound", None, None)],
               size=123, body="8BITMIME", smtputf8=True, ret="HDRS", envid="env1",
               peer_ip="192.0.2.7", helo="mx.remote.test", disposition="junk")
    info = db.run_sync(spool.get_spool, qid)
    assert (info.kind, info.mail_from, info.size, info.body, info.smtputf8, info.ret,
            info.envid, info.peer_ip, info.helo, info.disposition) == (
        "inbound", "a@remote.test", 123, "8BITMIME", True, "HDRS", "env1", "192.0.2.7",
        "mx.remote.test", "junk")
    assert [(r.address, r.stream, r.orcpt, r.notify, r.state, r.attempts)
            for r in info.recipients] == [
        ("a@example.test", "deliver", "rfc822;A@example.test", "SUCCESS,FAILURE", "pending", 0),
        ("b@remote.test", "outbound", None, None, "pending", 0)]
    assert info.message_size == len(BODY)


def test_spooling_identical_bytes_twice_stores_one_blob(db):
    first, second = make(db), make(db)
    assert first != second
    a, b = db.run_sync(spool.get_spool, first), db.run_sync(spool.get_spool, second)
    assert a.message_id == b.message_id
    assert db.run_sync(lambda s: s.execute(select(func.count(Message.id))).scalar_one()) == 1


def test_duplicate_recipients_are_spooled_once(db):
    qid = make(db, recipients=[("a@example.test", "deliver", None, None)] * 3)
    assert len(db.run_sync(spool.get_spool, qid).recipients) == 1


def test_spool_without_recipients_is_refused(db):
    with pytest.raises(ValueError):
        make(db, recipients=[])


def test_unknown_queue_id_is_not_found(db):
    with pytest.raises(NotFound):
        db.run_sync(spool.get_spool, "0000000000000000")


def test_mark_delivered(db):
    qid = make(db)
    [rcpt] = db.run_sync(spool.get_spool, qid).recipients
    db.run_sync(spool.mark_delivered, rcpt.id)
    assert db.run_sync(spool.get_spool, qid).recipients[0].state == "delivered"


def test_mark_deferred_counts_attempt_and_reschedules(db):
    qid = make(db)
    [rcpt] = db.run_sync(spool.get_spool, qid).recipients
    later = now() + timedelta(minutes=5)
    db.run_sync(spool.mark_enqueued, [rcpt.id], now())
    db.run_sync(spool.mark_deferred, rcpt.id, "451 try later", later)
    [after] = db.run_sync(spool.get_spool, qid).recipients
    assert (after.state, after.attempts, after.last_error, after.enqueued_at) == (
        "pending", 1, "451 try later", None)
    assert after.next_attempt_at == later


def test_mark_failed_then_bounced(db):
    qid = make(db)
    [rcpt] = db.run_sync(spool.get_spool, qid).recipients
    db.run_sync(spool.mark_failed, rcpt.id, "550 no such user")
    assert db.run_sync(spool.get_spool, qid).recipients[0].state == "failed"
    db.run_sync(spool.mark_bounced, [rcpt.id])
    assert db.run_sync(spool.get_spool, qid).recipients[0].state == "bounced"


def test_mark_unknown_recipient_is_not_found(db):
    with pytest.raises(NotFound):
        db.run_sync(spool.mark_delivered, 999999)


@pytest.mark.parametrize(("attempts", "expected"), [(1, 300), (2, 600), (3, 1200), (5, 3600),
                                                    (500, 3600)])
def test_next_backoff_doubles_and_caps(attempts, expected):
    assert spool.next_backoff(attempts, 300, 3600) == expected


def test_retry_now_makes_pending_recipients_due(db):
    qid = make(db, recipients=[("a@example.test", "deliver", None, None),
                               ("b@example.test", "deliver", None, None)])
    a, b = db.run_sync(spool.get_spool, qid).recipients
    db.run_sync(spool.mark_deferred, a.id, "451", now() + timedelta(hours=1))
    db.run_sync(spool.mark_delivered, b.id)
    assert db.run_sync(spool.retry_now, qid) == 1
    [due] = db.run_sync(spool.due_recipients, now() + timedelta(seconds=1), now(), 10)
    assert due["recipient_id"] == a.id


def test_delete_spool_removes_message_and_orphan_blob(db):
    qid = make(db)
    db.run_sync(spool.delete_spool, qid)
    with pytest.raises(NotFound):
        db.run_sync(spool.get_spool, qid)
    assert db.run_sync(lambda s: s.execute(select(func.count(Message.id))).scalar_one()) == 0


def test_list_spool_filters_by_state(db):
    pending, done = make(db), make(db)
    [rcpt] = db.run_sync(spool.get_spool, done).recipients
    db.run_sync(spool.mark_delivered, rcpt.id)
    assert [s.queue_id for s in db.run_sync(spool.list_spool, "pending")] == [pending]
    assert [(s.queue_id, s.state) for s in db.run_sync(spool.list_spool)] == [
        (pending, "pending"), (done, "delivered")]


def test_due_recipients_finds_unenqueued_and_stale_but_not_in_flight(db):
    qid = make(db, recipients=[(f"r{i}@example.test", "deliver", None, None) for i in range(3)])
    fresh, stale, in_flight = db.run_sync(spool.get_spool, qid).recipients
    t = now()
    db.run_sync(spool.mark_enqueued, [stale.id], t - timedelta(minutes=10))
    db.run_sync(spool.mark_enqueued, [in_flight.id], t)
    due = db.run_sync(spool.due_recipients, t + timedelta(seconds=1),
                      t - timedelta(minutes=1), 100)
    assert sorted(d["recipient_id"] for d in due) == [fresh.id, stale.id]
    assert {d["queue_id"] for d in due} == {qid} and due[0]["stream"] == "deliver"


def test_due_recipients_leaves_out_future_and_finished(db):
    qid = make(db, recipients=[("a@example.test", "deliver", None, None),
                               ("b@example.test", "deliver", None, None)])
    a, b = db.run_sync(spool.get_spool, qid).recipients
    db.run_sync(spool.mark_deferred, a.id, "451", now() + timedelta(hours=1))
    db.run_sync(spool.mark_delivered, b.id)
    assert db.run_sync(spool.due_recipients, now(), now(), 100) == []


def test_mark_enqueued_takes_recipients_out_of_due(db):
    make(db)
    t = now() + timedelta(seconds=1)
    due = db.run_sync(spool.due_recipients, t, t - timedelta(minutes=1), 100)
    db.run_sync(spool.mark_enqueued, [d["recipient_id"] for d in due], t)
    assert db.run_sync(spool.due_recipients, t, t - timedelta(minutes=1), 100) == []


def test_due_recipients_respects_limit(db):
    make(db, recipients=[(f"r{i}@example.test", "deliver", None, None) for i in range(5)])
    assert len(db.run_sync(spool.due_recipients, now() + timedelta(seconds=1), now(), 2)) == 2


def test_expand_recipient_is_idempotent(db):
    qid = make(db)
    [rcpt] = db.run_sync(spool.get_spool, qid).recipients
    first = db.run_sync(spool.expand_recipient, rcpt.id, ["x@example.test", "y@example.test"])
    again = db.run_sync(spool.expand_recipient, rcpt.id, ["x@example.test", "y@example.test"])
    assert first == again and len(first) == 2
    states = {r.address: r.state for r in db.run_sync(spool.get_spool, qid).recipients}
    assert states == {"a@example.test": "delivered", "x@example.test": "pending",
                      "y@example.test": "pending"}


def test_purge_finished_removes_only_finished_messages(db):
    pending, done = make(db), make(db, message=b"other")
    [rcpt] = db.run_sync(spool.get_spool, done).recipients
    db.run_sync(spool.mark_delivered, rcpt.id)
    assert db.run_sync(spool.purge_finished, now() + timedelta(seconds=1)) == 1
    assert [s.queue_id for s in db.run_sync(spool.list_spool)] == [pending]


def test_list_spool_tells_queued_from_deferred(db):
    fresh, tried = make(db), make(db)
    [rcpt] = db.run_sync(spool.get_spool, tried).recipients
    db.run_sync(spool.mark_deferred, rcpt.id, "451 try later", now() + timedelta(minutes=5))
    assert [s.queue_id for s in db.run_sync(spool.list_spool, "queued")] == [fresh]
    assert [s.queue_id for s in db.run_sync(spool.list_spool, "deferred")] == [tried]
    assert [s.queue_id for s in db.run_sync(spool.list_spool, "pending")] == [fresh, tried]
    with pytest.raises(ValueError, match="unknown state"):
        db.run_sync(spool.list_spool, "stuck")


def test_list_spool_filters_by_sender_recipient_or_either(db):
    one = make(db, mail_from="Alice@Remote.test",
                recipients=[("bob@example.test", "deliver", None, None)])
    two = make(db, mail_from="carol@other.test",
                recipients=[("dave@example.test", "deliver", None, None),
                            ("alice@remote.test", "outbound", None, None)])
    three = make(db, mail_from="", recipients=[("x_y@example.test", "deliver", None, None)])

    def ids(**kw):
        return [s.queue_id for s in db.run_sync(spool.list_spool, **kw)]

    assert ids(mail_from="alice@remote.test") == [one]
    assert ids(rcpt_to="ALICE@remote.test") == [two]
    assert ids(address="alice@remote.test") == [one, two]
    assert ids(rcpt_to="@example.test") == [one, two, three]
    assert ids(mail_from="@other.test", rcpt_to="dave") == [two]
    # LIKE wildcards are literal: x_y matches, x%y or a lone _ only themselves
    assert ids(rcpt_to="x_y@") == [three] and ids(rcpt_to="x%y") == [] and ids(rcpt_to="b_b") == []
    assert ids(address="nobody@nowhere.test") == []
