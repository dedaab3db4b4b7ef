"""Delivery decisions against a real PostgreSQL: mailboxes, aliases, quota, Sieve, idempotency."""

from __future__ import annotations

import functools
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from postroom.auth.passwords import hash_password
from postroom.rules import RulesError
from postroom.store import aliases, domains, mailboxes, messages, sieve, spool, users
from postroom.store.models import Mailbox, MailboxEntry, SpoolRecipient
from postroom.store.rules import get_rules, set_rules
from postroom_mda import delivery
from postroom_mda.delivery import Options, deliver_recipient, ensure_metadata

cheap = functools.partial(hash_password, ln=4)
OPTIONS = Options(retry_initial=300, retry_max=3600, quota_grace=3600)
MESSAGE = (b"From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\n"
           b"Subject: hello\r\nMessage-ID: <m1@remote.test>\r\n\r\nHi Alice\r\n")


@pytest.fixture
def db(database, clean_db):
    return database


@pytest.fixture
def accounts(db):
    db.run_sync(domains.add_domain, "example.test")
    made = {}
    for name in ("alice", "bob", "carol"):
        made[name] = db.run_sync(users.add_user, f"{name}@example.test", "pw", hash_fn=cheap)
    return made


def spool_message(db, *addresses, message=MESSAGE, disposition="inbox", mail_from=None):
    recipients = [(a, "deliver", None, None) for a in addresses]
    qid = db.run_sync(spool.create_spool, kind="inbound",
                      mail_from="bob@remote.test" if mail_from is None else mail_from,
                      recipients=recipients, message=message, disposition=disposition)
    return qid, [r.id for r in db.run_sync(spool.get_spool, qid).recipients]


def deliver(db, qid, rid, options=OPTIONS, now=None):
    db.run_sync(ensure_metadata, qid)
    return db.run_sync(deliver_recipient, rid, options, now or datetime.now(UTC))


def deliver_all(db, qid, rids, options=OPTIONS, now=None):
    """Deliver recipients and any alias children, as the service does; all outcomes."""
    outcomes, work = [], list(rids)
    while work:
        outcome = deliver(db, qid, work.pop(0), options, now)
        outcomes.append(outcome)
        work.extend(outcome.children)
    return outcomes


def entries(db, user_id, name="INBOX"):
    def query(s):
        return [(r.uid, r.message_id, list(r.flags)) for r in s.execute(
            select(MailboxEntry).join(Mailbox, Mailbox.id == MailboxEntry.mailbox_id)
            .where(Mailbox.user_id == user_id, Mailbox.name == name)
            .order_by(MailboxEntry.uid)).scalars()]
    return db.run_sync(query)


def set_sieve(db, user, text):
    """Make ``text`` the account's active Sieve script."""
    db.run_sync(sieve.put_script, user.id, "main", text)
    db.run_sync(sieve.set_active, user.id, "main")


def recipient(db, rid):
    return db.run_sync(spool.get_recipient, rid)[1]


def test_three_deliveries_get_uids_1_2_3_in_inbox(db, accounts):
    for i in range(3):
        qid, [rid] = spool_message(db, "alice@example.test", message=MESSAGE + b"%d" % i)
        outcome = deliver(db, qid, rid)
        assert (outcome.result, outcome.mailbox, outcome.uid) == ("delivered", "INBOX", i + 1)
        assert recipient(db, rid).state == "delivered"
    assert [e[0] for e in entries(db, accounts["alice"].id)] == [1, 2, 3]


def test_quarantined_message_goes_to_junk(db, accounts):
    qid, [rid] = spool_message(db, "alice@example.test", disposition="junk")
    outcome = deliver(db, qid, rid)
    assert outcome.mailbox == "Junk"
    assert entries(db, accounts["alice"].id, "Junk")[0][2] == ["$Junk"]
    assert entries(db, accounts["alice"].id) == []


def test_plus_tag_delivers_into_the_folder_it_names(db, accounts):
    db.run_sync(mailboxes.create_mailbox, accounts["alice"].id, "lists")
    qid, [rid] = spool_message(db, "alice+lists@example.test")
    outcome = deliver(db, qid, rid, Options(detail_folder=True))
    assert outcome.mailbox == "lists"
    assert len(entries(db, accounts["alice"].id, "lists")) == 1


def test_plus_tag_without_such_folder_delivers_to_inbox(db, accounts):
    qid, [rid] = spool_message(db, "alice+nosuch@example.test")
    assert deliver(db, qid, rid, Options(detail_folder=True)).mailbox == "INBOX"


def test_plus_tag_folder_needs_the_option(db, accounts):
    db.run_sync(mailboxes.create_mailbox, accounts["alice"].id, "lists")
    qid, [rid] = spool_message(db, "alice+lists@example.test")
    assert deliver(db, qid, rid, Options(detail_folder=False)).mailbox == "INBOX"


def test_alias_to_several_users_makes_one_copy_each(db, accounts):
    for name in ("alice", "bob", "carol"):
        db.run_sync(aliases.add_alias, "team@example.test", f"{name}@example.test")
    qid, [rid] = spool_message(db, "team@example.test")
    outcomes = deliver_all(db, qid, [rid])
    assert outcomes[0].result == "expanded" and len(outcomes[0].children) == 3
    for name in ("alice", "bob", "carol"):
        assert len(entries(db, accounts[name].id)) == 1
    # one blob for all three copies
    assert len({entries(db, accounts[n].id)[0][1] for n in ("alice", "bob", "carol")}) == 1


def test_alias_to_remote_address_goes_to_outbound(db, accounts):
    """The copy is a message of its own (postroom.outgoing.forward: SRS sender, ARC seal;
    tests/integration/test_outgoing.py); the alias's child is settled as forwarded."""
    db.run_sync(aliases.add_alias, "fwd@example.test", "someone@remote.test")
    qid, [rid] = spool_message(db, "fwd@example.test")
    outcome = deliver(db, qid, rid)
    assert outcome.result == "forwarded"
    [envelope] = outcome.envelopes
    assert envelope.stream == "outbound" and envelope.queue_id != qid
    copy = recipient(db, envelope.recipient_ids[0])
    assert (copy.address, copy.stream, copy.state, copy.orcpt) == (
        "someone@remote.test", "outbound", "pending", "fwd@example.test")
    [child] = [r for r in db.run_sync(spool.get_spool, qid).recipients if r.parent_id == rid]
    assert (child.address, child.state) == ("someone@remote.test", "delivered")


def test_catch_all_takes_unknown_localparts(db, accounts):
    db.run_sync(aliases.add_alias, "@example.test", "carol@example.test")
    qid, [rid] = spool_message(db, "whoever@example.test")
    deliver_all(db, qid, [rid])
    assert len(entries(db, accounts["carol"].id)) == 1


def test_unknown_user_fails_with_5_1_1(db, accounts):
    qid, [rid] = spool_message(db, "nobody@example.test")
    outcome = deliver(db, qid, rid)
    assert outcome.result == "failed"
    row = recipient(db, rid)
    assert row.state == "failed" and "5.1.1" in row.last_error


def set_quota(db, user_id, messages):
    def update(s):
        s.get(users.User, user_id).quota_messages = messages
    db.run_sync(update)


def test_over_quota_defers_with_backoff(db, accounts):
    set_quota(db, accounts["alice"].id, 1)
    qid, [first] = spool_message(db, "alice@example.test")
    deliver(db, qid, first)
    qid2, [rid] = spool_message(db, "alice@example.test", message=MESSAGE + b"2")
    now = datetime.now(UTC)
    outcome = deliver(db, qid2, rid, now=now)
    assert outcome.result == "deferred"
    row = recipient(db, rid)
    assert row.state == "pending" and "4.2.2" in row.last_error and row.attempts == 1
    assert row.next_attempt_at >= now + timedelta(seconds=299)


def test_over_quota_after_the_grace_fails_with_5_2_2(db, accounts):
    set_quota(db, accounts["alice"].id, 0)
    qid, [rid] = spool_message(db, "alice@example.test")
    later = datetime.now(UTC) + timedelta(seconds=OPTIONS.quota_grace + 1)
    assert deliver(db, qid, rid, now=later).result == "failed"
    row = recipient(db, rid)
    assert row.state == "failed" and row.last_error.startswith("552 5.2.2")
    assert entries(db, accounts["alice"].id) == []


def test_redelivered_recipient_makes_no_second_copy(db, accounts):
    qid, [rid] = spool_message(db, "alice@example.test")
    deliver(db, qid, rid)
    assert deliver(db, qid, rid).result == "duplicate"
    assert len(entries(db, accounts["alice"].id)) == 1


def test_redelivered_alias_entry_makes_no_second_copies(db, accounts):
    for name in ("alice", "bob"):
        db.run_sync(aliases.add_alias, "team@example.test", f"{name}@example.test")
    qid, [rid] = spool_message(db, "team@example.test")
    deliver_all(db, qid, [rid])
    deliver_all(db, qid, [rid])
    assert len(entries(db, accounts["alice"].id)) == 1
    assert len(entries(db, accounts["bob"].id)) == 1


def test_concurrent_deliveries_to_one_mailbox_never_reuse_or_skip_a_uid(db, accounts):
    per_thread = 25
    work = [[spool_message(db, "alice@example.test", message=MESSAGE + f"{t}-{i}".encode())
             for i in range(per_thread)] for t in range(2)]
    errors = []

    def run(items):
        try:
            for qid, [rid] in items:
                deliver(db, qid, rid)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(items,)) for items in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    uids = [e[0] for e in entries(db, accounts["alice"].id)]
    assert uids == list(range(1, 2 * per_thread + 1))


def test_metadata_is_stored_with_the_blob_once(db, accounts):
    qid, [rid] = spool_message(db, "alice@example.test")
    deliver(db, qid, rid)
    message_id = entries(db, accounts["alice"].id)[0][1]
    meta = db.run_sync(messages.get_metadata, message_id)
    assert meta["envelope"]["subject"] == "hello"
    assert meta["size"] == len(MESSAGE)
    # the same bytes again reuse the blob, metadata and all
    qid2, [rid2] = spool_message(db, "bob@example.test")
    deliver(db, qid2, rid2)
    assert entries(db, accounts["bob"].id)[0][1] == message_id


def test_unparseable_message_is_delivered_whole_with_fallback_metadata(db, accounts):
    hostile = (b"Content-Type: multipart/mixed; boundary=\"a\"\r\n"
               b"__proto__: x\r\nSubject: \xff\x00\xfe\r\n\r\n"
               + b"--a\r\nContent-Type: multipart/mixed; boundary=\"a\"\r\n\r\n" * 2000
               + b"\x00" * 10 + b"\r\n")
    qid, [rid] = spool_message(db, "alice@example.test", message=hostile)
    assert deliver(db, qid, rid).result == "delivered"
    message_id = entries(db, accounts["alice"].id)[0][1]
    assert db.run_sync(messages.get_message, message_id) == hostile
    meta = db.run_sync(messages.get_metadata, message_id)
    assert meta["size"] == len(hostile) and meta["degraded"] is True


def test_sieve_fileinto_files_into_the_named_folder(db, accounts):
    db.run_sync(mailboxes.create_mailbox, accounts["alice"].id, "Bob")
    set_sieve(db, accounts["alice"], 'require "fileinto";\n'
              'if address :is "from" "bob@remote.test" { fileinto "Bob"; }')
    qid, [rid] = spool_message(db, "alice@example.test")
    assert deliver(db, qid, rid).mailbox == "Bob"
    assert entries(db, accounts["alice"].id) == []


def test_sieve_fileinto_missing_folder_falls_back_to_inbox(db, accounts):
    set_sieve(db, accounts["alice"], 'require "fileinto"; fileinto "Nope";')
    qid, [rid] = spool_message(db, "alice@example.test")
    assert deliver(db, qid, rid).mailbox == "INBOX"


def test_sieve_discard_stores_nothing_and_finishes_the_recipient(db, accounts):
    set_sieve(db, accounts["alice"], 'if header :contains "subject" "HELLO" { discard; }')
    qid, [rid] = spool_message(db, "alice@example.test")
    assert deliver(db, qid, rid).result == "discarded"
    assert entries(db, accounts["alice"].id) == []
    assert recipient(db, rid).state == "delivered"


def test_sieve_redirect_forwards_without_a_local_copy(db, accounts):
    set_sieve(db, accounts["alice"], 'redirect "me@else.test";')
    qid, [rid] = spool_message(db, "alice@example.test")
    outcome = deliver(db, qid, rid)
    assert outcome.result == "forwarded"
    assert entries(db, accounts["alice"].id) == []
    [envelope] = outcome.envelopes
    copy = recipient(db, envelope.recipient_ids[0])
    assert (copy.address, copy.stream, copy.orcpt) == ("me@else.test", "outbound",
                                                       "alice@example.test")
    assert envelope.queue_id != qid  # a copy of its own: SRS sender, ARC seal


def test_sieve_are_not_applied_to_quarantined_mail(db, accounts):
    set_sieve(db, accounts["alice"], 'redirect "me@else.test";')
    qid, [rid] = spool_message(db, "alice@example.test", disposition="junk")
    outcome = deliver(db, qid, rid)
    assert outcome.mailbox == "Junk" and outcome.envelopes == ()


def vacation_replies_sent(db):
    return db.run_sync(lambda s: s.execute(
        select(SpoolRecipient.address).where(SpoolRecipient.stream == "outbound")
        .order_by(SpoolRecipient.id)).scalars().all())


def test_vacation_replies_once_per_sender_within_the_period(db, accounts):
    set_sieve(db, accounts["alice"], 'require "vacation"; vacation :days 7 "Away until Monday";')
    now = datetime.now(UTC)
    for i in range(2):
        qid, [rid] = spool_message(db, "alice@example.test", message=MESSAGE + b"%d" % i)
        outcome = deliver(db, qid, rid, now=now + timedelta(days=i))
        assert outcome.mailbox == "INBOX"  # vacation keeps the message
    assert vacation_replies_sent(db) == ["bob@remote.test"]
    [reply_spool] = [m for m in db.run_sync(spool.list_spool) if m.kind == "local"]
    assert reply_spool.mail_from == ""
    # after the period, the same sender is answered again
    qid, [rid] = spool_message(db, "alice@example.test", message=MESSAGE + b"late")
    # (a lifetime long enough for a spool message "received" 8 days before now)
    deliver(db, qid, rid, Options(queue_lifetime=30 * 86400), now=now + timedelta(days=8))
    assert vacation_replies_sent(db) == ["bob@remote.test", "bob@remote.test"]


def test_vacation_never_answers_the_null_sender(db, accounts):
    set_sieve(db, accounts["alice"], 'require "vacation"; vacation "away";')
    qid, [rid] = spool_message(db, "alice@example.test", mail_from="")
    deliver(db, qid, rid)
    assert vacation_replies_sent(db) == []


def test_set_rules_round_trips_and_refuses_invalid_rules(db, accounts):
    rules = [{"if": {"size": {"over": 100}}, "then": [{"discard": True}]}]
    assert db.run_sync(set_rules, "alice@example.test", rules) == 1
    assert db.run_sync(get_rules, "alice@example.test") == rules
    with pytest.raises(RulesError):
        db.run_sync(set_rules, "alice@example.test", "[{not json")
    assert db.run_sync(get_rules, "alice@example.test") == rules
    assert db.run_sync(set_rules, "alice@example.test", "[]") == 0
    assert db.run_sync(get_rules, "alice@example.test") == []


def test_expired_recipient_fails(db, accounts):
    qid, [rid] = spool_message(db, "alice@example.test")
    later = datetime.now(UTC) + timedelta(seconds=OPTIONS.queue_lifetime + 60)
    assert deliver(db, qid, rid, now=later).result == delivery.FAILED
    assert "5.4.7" in recipient(db, rid).last_error


def _nested(depth):
    head = b"".join(b"Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n" % (i, i)
                    for i in range(depth))
    return b"Subject: nested\r\n" + head + b"Content-Type: text/plain\r\n\r\ndeep\r\n"


def _many_parts(count):
    parts = b"".join(b"--p\r\nContent-Type: text/plain\r\n\r\n%d\r\n" % i for i in range(count))
    return (b"Subject: parts\r\nContent-Type: multipart/mixed; boundary=p\r\n\r\n"
            + parts + b"--p--\r\n")


HOSTILE = {
    "nested_1000": lambda: _nested(1000),
    "parts_100000": lambda: _many_parts(100_000),
    "line_50mb": lambda: b"Subject: long\r\n\r\n" + b"x" * (50 * 1024 * 1024) + b"\r\n",
    "bad_boundaries": lambda: (b"Content-Type: multipart/mixed; boundary=\"unterminated\r\n"
                               b"Subject: b\r\n\r\n--unterminated\r\n--\r\n--x--\r\n"),
    "bad_charsets_8bit_headers": lambda: (
        "Subject: =?x-no-such-charset?B?////?= caf\u00e9 \u65e5\u672c\r\n".encode()
        + b"From: \xff\xfe <\xc3\x28@example.test>\r\nContent-Type: text/plain; "
        b"charset=\"../../etc/passwd\"\r\n\r\n\xff\xfe body\r\n"),
    "proto_headers": lambda: (b"__proto__: {\"admin\": true}\r\nconstructor: x\r\n"
                              b"prototype: y\r\nSubject: p\r\n\r\nbody\r\n"),
    "shell_names": lambda: (
        b"Subject: attachments\r\nContent-Type: multipart/mixed; boundary=s\r\n\r\n"
        b"--s\r\nContent-Type: application/zip; name=\"; rm -rf / $(reboot) `id`.zip\"\r\n"
        b"Content-Disposition: attachment; filename=\"../../$(touch /tmp/pwned).tar.gz\"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nUEsDBAo=\r\n--s--\r\n"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_message_is_delivered_whole_and_described(db, accounts, kind):
    raw = HOSTILE[kind]()
    qid, [rid] = spool_message(db, "alice@example.test", message=raw)
    assert deliver(db, qid, rid).result == "delivered"
    message_id = entries(db, accounts["alice"].id)[0][1]
    assert db.run_sync(messages.get_message, message_id) == raw
    meta = db.run_sync(messages.get_metadata, message_id)
    assert meta["size"] == len(raw) and "envelope" in meta and "body" in meta
