"""The queue as the console sees it: pages and counts with a domain scope, who may see and
delete which message, and the per-hour figures aggregated in SQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from postroom.ops import queueview
from postroom.ops.trace import load_trace
from postroom.store import domains, mailstats, spool
from postroom.store.dmarc import DmarcRecord, record_result
from postroom.store.webaccess import Principal

BODY = b"From: a@remote.test\r\nSubject: hi\r\n\r\nhello\r\n"
ADMIN = Principal("user", "root@a.test", 1, True)
MANAGER_A = Principal("user", "boss@a.test", 2, False, frozenset({"a.test"}))
MANAGER_C = Principal("user", "boss@c.test", 3, False, frozenset({"c.test"}))


@pytest.fixture
def db(database, clean_db):
    for name in ("a.test", "b.test"):
        database.run_sync(domains.add_domain, name)
    return database


def make(db, mail_from, *rcpts):
    return db.run_sync(spool.create_spool, kind="inbound", mail_from=mail_from,
                       recipients=[(r, "outbound" if r.endswith("far.test") else "deliver",
                                    None, None) for r in rcpts],
                       message=BODY + mail_from.encode())


def test_a_domain_scope_keeps_mail_from_or_to_the_domains_in_any_case(db):
    out = make(db, "u@A.test", "x@far.test")
    into = make(db, "x@far.test", "u@a.test")
    other = make(db, "x@far.test", "v@b.test")
    bounce = make(db, "", "v@b.test")
    listed = [s.queue_id for s in db.run_sync(spool.list_spool, domains={"a.test"})]
    assert listed == [out, into]
    assert db.run_sync(spool.count_spool, domains={"a.test"}) == 2
    assert db.run_sync(spool.count_spool, domains={"b.test"}) == 2
    assert db.run_sync(spool.count_spool, domains=set()) == 0
    assert [s.queue_id for s in db.run_sync(spool.list_spool)] == [out, into, other, bounce]


def test_pages_and_counts_agree_with_filters(db):
    made = [make(db, f"u{i}@a.test", "x@far.test") for i in range(5)]
    page = db.run_sync(spool.list_spool, "queued", address="@a.test", offset=1, limit=2)
    assert [s.queue_id for s in page] == made[1:3]
    assert db.run_sync(spool.count_spool, "queued", address="@a.test") == 5
    assert db.run_sync(spool.count_spool, "deferred") == 0


def test_a_manager_sees_its_users_mail_whole_and_others_mail_only_for_its_recipients(db):
    mine = db.run_sync(spool.get_spool, make(db, "u@a.test", "x@far.test", "v@b.test"))
    assert [r.address for r in queueview.visible_message(mine, MANAGER_A).recipients] == [
        "x@far.test", "v@b.test"]
    shared = db.run_sync(spool.get_spool, make(db, "x@far.test", "u@a.test", "v@b.test"))
    assert [r.address for r in queueview.visible_message(shared, MANAGER_A).recipients] == [
        "u@a.test"]
    assert queueview.visible_message(shared, MANAGER_C) is None
    assert queueview.visible_message(shared, ADMIN) is shared


def test_a_manager_deletes_only_mail_whose_every_local_domain_it_manages(db):
    outbound = db.run_sync(spool.get_spool, make(db, "u@a.test", "x@far.test"))
    shared = db.run_sync(spool.get_spool, make(db, "x@far.test", "u@a.test", "v@b.test"))
    check = lambda info, who: db.run_sync(queueview.may_delete, info, who)  # noqa: E731
    assert check(outbound, MANAGER_A) and check(shared, ADMIN)
    assert not check(shared, MANAGER_A)
    assert not check(outbound, MANAGER_C)


def test_a_trace_is_filtered_like_the_message(db):
    qid = make(db, "x@far.test", "u@a.test", "v@b.test")
    story = db.run_sync(load_trace, qid)
    assert [r["address"] for r in queueview.visible_trace(story, MANAGER_A)["recipients"]] == [
        "u@a.test"]
    assert queueview.visible_trace(story, MANAGER_C) is None


def test_outcomes_per_hour_count_attempts_by_result_and_scope(db):
    qid = make(db, "u@a.test", "x@far.test", "y@far.test")
    other = make(db, "w@b.test", "z@far.test")
    first, second = db.run_sync(spool.get_spool, qid).recipients
    db.run_sync(spool.mark_deferred, first.id, "451 later", datetime.now(UTC))
    db.run_sync(spool.mark_delivered, first.id, "250 ok")
    db.run_sync(spool.mark_failed, second.id, "550 no")
    (third,) = db.run_sync(spool.get_spool, other).recipients
    db.run_sync(spool.mark_delivered, third.id, "250 ok")
    since = datetime.now(UTC) - timedelta(hours=1)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    every = db.run_sync(mailstats.outcomes_per_hour, since)
    assert {(f.reason, f.count) for f in every} == {("delivered", 2), ("deferred", 1),
                                                     ("failed", 1)}
    assert {f.hour for f in every} == {hour}
    mine = db.run_sync(mailstats.outcomes_per_hour, since, {"a.test"})
    assert {(f.reason, f.count) for f in mine} == {("delivered", 1), ("deferred", 1),
                                                    ("failed", 1)}
    backlog = db.run_sync(mailstats.spool_backlog)
    assert [(b.stream, b.pending, b.failed) for b in backlog] == [("outbound", 0, 1)]


def _verdict(db, disposition, detail):
    record = DmarcRecord(source_ip="192.0.2.1", header_from="far.test", envelope_from=None,
                         spf_domain=None, spf_result="none", spf_aligned=False,
                         dkim_domain=None, dkim_selector=None, dkim_result="none",
                         dkim_aligned=False, dmarc_result="fail", policy="reject",
                         disposition=disposition, reporting_domain="far.test", detail=detail,
                         queue_id=None)
    db.run_sync(record_result, record)


def test_rejects_per_hour_name_dmarc_and_the_content_check_that_refused(db):
    _verdict(db, "reject", {})
    _verdict(db, "none", {"verdict": "reject", "content": [
        {"check": "attachments", "action": "accept", "reason": None},
        {"check": "clamd", "action": "reject", "reason": "Eicar"}]})
    _verdict(db, "none", {"verdict": "junk", "content": [
        {"check": "rspamd", "action": "quarantine", "reason": "spam"}]})
    _verdict(db, "none", {"verdict": "reject", "content": "not a list"})
    db.run_sync(lambda s: s.execute(text(
        "INSERT INTO dmarc_results (received_at, source_ip, header_from, spf_result, "
        "dkim_result, dmarc_result, disposition, reporting_domain) VALUES "
        "(now() - interval '2 days', '192.0.2.1', 'x', 'none', 'none', 'fail', 'reject', 'x')")))
    found = db.run_sync(mailstats.rejects_per_hour, datetime.now(UTC) - timedelta(hours=24))
    assert sorted((f.reason, f.count) for f in found) == [
        ("content:clamd", 1), ("content:other", 1), ("dmarc", 1)]
