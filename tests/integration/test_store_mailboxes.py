"""Message blobs and mailbox delivery: dedup, UID allocation under concurrency, idempotency."""

from __future__ import annotations

import functools
import threading

import pytest
from sqlalchemy import func, select

from postroom.auth.passwords import hash_password
from postroom.store import domains, mailboxes, messages, spool, users
from postroom.store.errors import NotFound
from postroom.store.models import MailboxEntry, Message

cheap = functools.partial(hash_password, ln=4)


@pytest.fixture
def db(database, clean_db):
    return database


@pytest.fixture
def alice(db):
    db.run_sync(domains.add_domain, "example.test")
    return db.run_sync(users.add_user, "alice@example.test", "pw", hash_fn=cheap)


def count(db, column):
    return db.run_sync(lambda s: s.execute(select(func.count(column))).scalar_one())


def spool_for(db, n=1):
    """A spooled message with ``n`` recipients; returns (message id, [recipient ids])."""
    recipients = [(f"r{i}@example.test", "deliver", None, None) for i in range(n)]
    qid = db.run_sync(spool.create_spool, kind="inbound", mail_from="x@remote.test",
                      recipients=recipients, message=b"Subject: hi\r\n\r\nbody\r\n")
    info = db.run_sync(spool.get_spool, qid)
    return info.message_id, [r.id for r in info.recipients]


def test_identical_bytes_are_stored_once(db):
    first = db.run_sync(messages.store_message, b"same bytes")
    second = db.run_sync(messages.store_message, b"same bytes")
    assert first == second and count(db, Message.id) == 1


def test_different_bytes_are_stored_apart(db):
    assert db.run_sync(messages.store_message, b"a") != db.run_sync(messages.store_message, b"b")


def test_stored_message_reads_back_with_metadata(db):
    ident = db.run_sync(messages.store_message, b"\x00\xffraw", {"subject": "hi"})
    assert db.run_sync(messages.get_message, ident) == b"\x00\xffraw"
    assert db.run_sync(messages.get_metadata, ident) == {"subject": "hi"}


def test_deliver_allocates_consecutive_uids_and_modseqs(db, alice):
    message_id, _ = spool_for(db)
    got = [db.run_sync(mailboxes.deliver_to_mailbox, user_id=alice.id, mailbox_name="INBOX",
                       message_id=message_id, spool_recipient_id=None) for _ in range(3)]
    assert got == [(1, 2), (2, 3), (3, 4)]
    box = db.run_sync(mailboxes.get_mailbox, alice.id, "inbox")
    assert (box.uidnext, box.highestmodseq) == (4, 4)


def test_deliver_stores_flags(db, alice):
    message_id, _ = spool_for(db)
    db.run_sync(mailboxes.deliver_to_mailbox, user_id=alice.id, mailbox_name="Junk",
                message_id=message_id, spool_recipient_id=None, flags=["$Junk"])
    flags = db.run_sync(lambda s: s.execute(select(MailboxEntry.flags)).scalar_one())
    assert flags == ["$Junk"]


def test_deliver_to_missing_mailbox_is_not_found(db, alice):
    message_id, _ = spool_for(db)
    with pytest.raises(NotFound):
        db.run_sync(mailboxes.deliver_to_mailbox, user_id=alice.id, mailbox_name="Nope",
                    message_id=message_id, spool_recipient_id=None)


def test_redelivery_of_same_spool_recipient_makes_no_second_copy(db, alice):
    message_id, [rid] = spool_for(db)
    first = db.run_sync(mailboxes.deliver_to_mailbox, user_id=alice.id, mailbox_name="INBOX",
                        message_id=message_id, spool_recipient_id=rid)
    again = db.run_sync(mailboxes.deliver_to_mailbox, user_id=alice.id, mailbox_name="INBOX",
                        message_id=message_id, spool_recipient_id=rid)
    assert first == again == (1, 2)
    assert count(db, MailboxEntry.id) == 1
    assert db.run_sync(mailboxes.get_mailbox, alice.id, "INBOX").uidnext == 2


def test_redelivery_into_another_mailbox_returns_first_copy(db, alice):
    message_id, [rid] = spool_for(db)
    first = db.run_sync(mailboxes.deliver_to_mailbox, user_id=alice.id, mailbox_name="INBOX",
                        message_id=message_id, spool_recipient_id=rid)
    again = db.run_sync(mailboxes.deliver_to_mailbox, user_id=alice.id, mailbox_name="Junk",
                        message_id=message_id, spool_recipient_id=rid)
    assert again == first and count(db, MailboxEntry.id) == 1
    assert db.run_sync(mailboxes.get_mailbox, alice.id, "Junk").uidnext == 1


def run_threads(n, target):
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def worker(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


def test_concurrent_deliveries_never_reuse_or_skip_a_uid(db, alice):
    message_id, rids = spool_for(db, 40)
    results: list[tuple[int, int]] = []
    lock = threading.Lock()

    def deliver(i):
        for rid in rids[i::4]:
            got = db.run_sync(mailboxes.deliver_to_mailbox, user_id=alice.id,
                              mailbox_name="INBOX", message_id=message_id,
                              spool_recipient_id=rid)
            with lock:
                results.append(got)

    run_threads(4, deliver)
    assert sorted(uid for uid, _ in results) == list(range(1, 41))
    assert sorted(modseq for _, modseq in results) == list(range(2, 42))


def test_concurrent_duplicate_deliveries_make_one_copy(db, alice):
    message_id, [rid] = spool_for(db)
    results: list[tuple[int, int]] = []

    def deliver(i):
        box = "INBOX" if i % 2 else "Junk"
        results.append(db.run_sync(mailboxes.deliver_to_mailbox, user_id=alice.id,
                                   mailbox_name=box, message_id=message_id,
                                   spool_recipient_id=rid))

    run_threads(4, deliver)
    assert len(set(results)) == 1 and count(db, MailboxEntry.id) == 1


def test_new_uidvalidity_increases(db):
    first = db.run_sync(mailboxes.new_uidvalidity)
    assert db.run_sync(mailboxes.new_uidvalidity) > first


def test_usage_counts_bytes_and_messages(db, alice):
    message_id, _ = spool_for(db)
    for _ in range(2):
        db.run_sync(mailboxes.deliver_to_mailbox, user_id=alice.id, mailbox_name="INBOX",
                    message_id=message_id, spool_recipient_id=None)
    size = len(b"Subject: hi\r\n\r\nbody\r\n")
    assert db.run_sync(mailboxes.usage, alice.id) == (2 * size, 2)


def test_duplicate_losing_the_race_into_another_mailbox_returns_winners_copy(db, alice):
    from sqlalchemy.orm import Session

    message_id, [rid] = spool_for(db)
    winner = Session(db.engine)
    winner.begin()
    first = mailboxes.deliver_to_mailbox(winner, user_id=alice.id, mailbox_name="INBOX",
                                         message_id=message_id, spool_recipient_id=rid)
    loser_result: list[tuple[int, int]] = []
    loser = threading.Thread(target=lambda: loser_result.append(db.run_sync(
        mailboxes.deliver_to_mailbox, user_id=alice.id, mailbox_name="Junk",
        message_id=message_id, spool_recipient_id=rid)))
    loser.start()
    loser.join(0.5)  # blocked on the unique index until the winner commits
    winner.commit()
    winner.close()
    loser.join(10)
    assert loser_result == [first]
    assert db.run_sync(mailboxes.get_mailbox, alice.id, "Junk").uidnext == 1
