"""The mda's fast path (plain SQL, one write statement) writes what the general path writes.

postroom_mda.delivery takes the fast path for an account with no alias, Sieve script or
quota; everything else goes the general (ORM) way in the same transaction. These
tests pin what the fast path must keep: the recipient's state and history row,
the entry's flags and UID/MODSEQ, the metadata, the Junk disposition, and lock
order with concurrent deliveries of one new blob into one mailbox.
"""

from __future__ import annotations

import functools
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from postroom.auth.passwords import hash_password
from postroom.store import domains, messages, spool, users
from postroom.store.models import Mailbox, MailboxEntry, SpoolAttempt
from postroom_mda import delivery
from postroom_mda.delivery import Options, deliver_recipient

cheap = functools.partial(hash_password, ln=4)
OPTIONS = Options()
MESSAGE = (b"From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\n"
           b"Subject: fast\r\nMessage-ID: <f1@remote.test>\r\n\r\nHi\r\n")


@pytest.fixture
def db(database, clean_db):
    return database


@pytest.fixture
def alice(db):
    db.run_sync(domains.add_domain, "example.test")
    return db.run_sync(users.add_user, "alice@example.test", "pw", hash_fn=cheap)


def spool_one(db, address, message=MESSAGE, disposition="inbox"):
    qid, [rid] = db.run_sync(spool.create_spool_ids, kind="inbound", mail_from="bob@remote.test",
                             recipients=[(address, "deliver", None, None)], message=message,
                             disposition=disposition)
    return qid, rid


def entry_of(db, rid):
    def query(s):
        row = s.execute(select(MailboxEntry, Mailbox.name)
                        .join(Mailbox, Mailbox.id == MailboxEntry.mailbox_id)
                        .where(MailboxEntry.spool_recipient_id == rid)).one()
        return (row[1], row[0].uid, row[0].modseq, list(row[0].flags), row[0].message_id,
                row[0].internaldate)
    return db.run_sync(query)


def history(db, rid):
    return db.run_sync(lambda s: [(r.result, r.detail) for r in s.execute(
        select(SpoolAttempt).where(SpoolAttempt.recipient_id == rid)
        .order_by(SpoolAttempt.id)).scalars()])


def test_fast_path_stores_entry_state_history_and_metadata(db, alice, monkeypatch):
    # the general path must not be needed for a plain account
    monkeypatch.setattr(delivery, "_deliver_slow", None)
    _qid, rid = spool_one(db, "alice@example.test")
    outcome = db.run_sync(deliver_recipient, rid, OPTIONS, datetime.now(UTC))
    assert (outcome.result, outcome.mailbox, outcome.uid, outcome.modseq) == (
        "delivered", "INBOX", 1, 2)
    assert outcome.user_id == alice.id and outcome.size == len(MESSAGE)
    name, uid, modseq, flags, message_id, internaldate = entry_of(db, rid)
    info, rcpt = db.run_sync(spool.get_recipient, rid)
    assert (name, uid, modseq, flags) == ("INBOX", 1, 2, [])
    assert internaldate == info.received_at
    assert (rcpt.state, rcpt.enqueued_at, rcpt.last_error) == ("delivered", None, None)
    assert history(db, rid) == [("delivered", "stored in INBOX uid 1")]
    meta = db.run_sync(messages.get_metadata, message_id)
    assert meta["envelope"]["subject"] == "fast" and meta["version"] >= 1
    inbox = db.run_sync(lambda s: s.execute(select(Mailbox.uidnext, Mailbox.highestmodseq)
                                            .where(Mailbox.id == outcome.mailbox_id)).one())
    assert tuple(inbox) == (2, 2)
    # redelivered: the general path answers with the same copy and adds nothing
    monkeypatch.undo()
    again = db.run_sync(deliver_recipient, rid, OPTIONS, datetime.now(UTC))
    assert again.result == "duplicate"
    assert history(db, rid) == [("delivered", "stored in INBOX uid 1")]


def test_fast_path_files_quarantined_mail_into_junk_flagged(db, alice, monkeypatch):
    monkeypatch.setattr(delivery, "_deliver_slow", None)
    _qid, rid = spool_one(db, "alice@example.test", disposition="junk")
    outcome = db.run_sync(deliver_recipient, rid, OPTIONS, datetime.now(UTC))
    assert (outcome.result, outcome.mailbox) == ("delivered", "Junk")
    assert entry_of(db, rid)[:4] == ("Junk", 1, 2, ["$Junk"])
    assert history(db, rid) == [("delivered", "stored in Junk uid 1")]


def test_address_not_in_stored_form_takes_the_general_path(db, alice):
    _qid, rid = spool_one(db, "Alice@Example.TEST")
    outcome = db.run_sync(deliver_recipient, rid, OPTIONS, datetime.now(UTC))
    assert (outcome.result, outcome.user_id) == ("delivered", alice.id)
    assert entry_of(db, rid)[:3] == ("INBOX", 1, 2)


def test_metadata_with_nul_and_lone_surrogate_is_stored_cleaned(db, alice, monkeypatch):
    # the MIME layer already cleans both; the fast path must still never send them to jsonb
    real = delivery.analyze

    class Dirty:
        def __init__(self, raw):
            self.meta = real(raw)

        def to_dict(self):
            data = self.meta.to_dict()
            data["headers"].append({"name": "x-dirty", "raw": "a\x00b", "decoded": "c\udc80d"})
            return data

    monkeypatch.setattr(delivery, "analyze", Dirty)
    _qid, rid = spool_one(db, "alice@example.test")
    assert db.run_sync(deliver_recipient, rid, OPTIONS, datetime.now(UTC)).result == "delivered"
    meta = db.run_sync(messages.get_metadata, entry_of(db, rid)[4])
    assert meta["headers"][-1] == {"name": "x-dirty", "raw": "a\ufffdb", "decoded": "c?d"}


def test_concurrent_first_deliveries_of_one_blob_into_one_mailbox(db, alice):
    """Same bytes, two spool messages, one mailbox, metadata missing: no deadlock, no gap."""
    rounds, errors, uids = 15, [], []
    for n in range(rounds):
        body = MESSAGE + b"round %d\r\n" % n
        rids = [spool_one(db, "alice@example.test", message=body)[1] for _ in range(3)]
        barrier = threading.Barrier(len(rids))

        def run(rid, barrier=barrier):
            try:
                barrier.wait()
                uids.append(db.run_sync(deliver_recipient, rid, OPTIONS,
                                        datetime.now(UTC)).uid)
            except Exception as exc:  # collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(rid,)) for rid in rids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert sorted(uids) == list(range(1, 3 * rounds + 1))
