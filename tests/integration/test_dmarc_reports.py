"""Aggregate reports sent by the scheduler: real PostgreSQL, Redis and the loopback DNS server."""

from __future__ import annotations

import dataclasses
import email
import gzip
from datetime import UTC, datetime, timedelta
from email import policy as email_policy
from xml.etree import ElementTree as ET

import pytest
from twisted.internet import defer
from twisted.python.threadpool import ThreadPool

from postroom.mailauth import dkimsign
from postroom.queue.envelope import decode
from postroom.queue.reconciler import Enqueuer
from postroom.store import dmarc as dmarc_store
from postroom.store import messages, spool
from postroom.store.errors import NotFound
from postroom_dmarc.reports import ReportConfig, ReportScheduler, report_id
from postroom_dmarc.results import record_for
from postroom_dmarc.verdict import CheckRequest, Options, evaluate
from tests.support.redisdb import in_reactor

DAY = datetime(2026, 3, 1, tzinfo=UTC)
NEXT_DAY = DAY + timedelta(days=1)
NOW = NEXT_DAY + timedelta(minutes=5)
RECEIVER = "mx.receiver.test"
PRIVATE, PUBLIC_TXT = dkimsign.generate_keys("ed25519-sha256")
MESSAGE = (b"From: alice@example.com\r\nTo: bob@receiver.test\r\nSubject: hi\r\n"
           b"Date: Sun, 01 Mar 2026 12:00:00 +0000\r\n\r\nHello.\r\n")
CONFIG = ReportConfig(receiver=RECEIVER, org_name="Receiver Test",
                      sender=f"dmarc-noreply@{RECEIVER}", interval=86400.0, settle=60.0)


@pytest.fixture
def db(database, clean_db):
    return database


@pytest.fixture
def pools():
    made = [ThreadPool(minthreads=0, maxthreads=4, name=f"test-dmarc-{n}") for n in ("dns", "r")]
    for pool in made:
        pool.start()
    yield made
    for pool in made:
        pool.stop()


@pytest.fixture
def zone(dns_server):
    dns_server.set_records("example.com", "TXT", ["v=spf1 ip4:192.0.2.10 -all"])
    dns_server.set_records("sel._domainkey.example.com", "TXT", [PUBLIC_TXT])
    dns_server.set_records("_dmarc.example.com", "TXT",
                           ["v=DMARC1; p=reject; rua=mailto:dmarc@example.com"])
    return dns_server


@pytest.fixture
def make_scheduler(db, queue_client, zone, pools, twisted_reactor):
    def make(config: ReportConfig = CONFIG) -> ReportScheduler:
        return ReportScheduler(db, Enqueuer(queue_client, pools[1], twisted_reactor),
                               zone.resolver(), config, dns_pool=pools[0],
                               reactor=twisted_reactor)
    return make


def check(zone, ip: str, signed: bool, when: datetime):
    """Evaluate one message for real and store its row as if it had arrived at ``when``."""
    message = MESSAGE
    if signed:
        message = dkimsign.sign(MESSAGE, "example.com", "sel", PRIVATE, "ed25519-sha256") + MESSAGE
    request = CheckRequest(ip, "mail.other.test", "bounce@other.test", ("bob@receiver.test",),
                           message, "Q1")
    row = record_for(request, evaluate(request, zone.resolver(), Options(authserv_id=RECEIVER)))
    assert row is not None
    return dataclasses.replace(row, received_at=when)


@pytest.fixture
def day_of_traffic(db, zone):
    rows = [check(zone, "192.0.2.10", True, DAY + timedelta(hours=h)) for h in (1, 9, 17)]
    rows.append(check(zone, "198.51.100.1", False, DAY + timedelta(hours=3)))
    rows.append(check(zone, "203.0.113.5", True, DAY + timedelta(hours=23, minutes=59)))
    rows.append(check(zone, "203.0.113.5", True, NEXT_DAY + timedelta(minutes=1)))  # tomorrow's
    for row in rows:
        db.run_sync(dmarc_store.record_result, row)
    return rows


def run(scheduler: ReportScheduler, now: datetime = NOW):
    return in_reactor(lambda: defer.Deferred.fromCoroutine(scheduler.run_once(now)))


def spooled(db, domain: str = "example.com"):
    try:
        return db.run_sync(spool.get_spool, report_id(domain, DAY, NEXT_DAY))
    except NotFound:
        return None


def report_xml(db, info) -> ET.Element:
    raw = db.run_sync(messages.get_message, info.message_id)
    msg = email.message_from_bytes(raw, policy=email_policy.default)
    [attachment] = list(msg.iter_attachments())
    return ET.fromstring(gzip.decompress(attachment.get_content()))


def outbound_entries(queue_client):
    return [decode(fields) for _, fields in
            queue_client.redis.xrange(queue_client.stream_key("outbound"))]


def test_day_of_traffic_is_reported_to_the_rua_and_queued_on_outbound(
        make_scheduler, day_of_traffic, db, queue_client):
    [outcome] = run(make_scheduler())
    assert outcome.status == "spooled"
    info = spooled(db)
    assert (info.kind, info.mail_from) == ("local", f"dmarc-noreply@{RECEIVER}")
    assert [(r.address, r.stream, r.notify) for r in info.recipients] == [
        ("dmarc@example.com", "outbound", "NEVER")]
    [entry] = outbound_entries(queue_client)
    assert (entry.queue_id, entry.recipient_ids) == (info.queue_id, (info.recipients[0].id,))
    root = report_xml(db, info)
    assert root.findtext("policy_published/domain") == "example.com"
    assert root.findtext("policy_published/p") == "reject"
    assert root.findtext("report_metadata/report_id") == info.queue_id
    by_ip = {r.findtext("row/source_ip"): r for r in root.findall("record")}
    assert {ip: r.findtext("row/count") for ip, r in by_ip.items()} == {
        "192.0.2.10": "3", "198.51.100.1": "1", "203.0.113.5": "1"}
    spoofed = by_ip["198.51.100.1"]
    assert [spoofed.findtext(f"row/policy_evaluated/{t}") for t in ("disposition", "dkim", "spf")] \
        == ["reject", "fail", "fail"]
    assert by_ip["192.0.2.10"].findtext("auth_results/dkim/result") == "pass"


def test_two_schedulers_send_a_period_once(make_scheduler, day_of_traffic, db, queue_client):
    first, second = make_scheduler(), make_scheduler()
    results = in_reactor(lambda: defer.gatherResults([
        defer.Deferred.fromCoroutine(first.run_once(NOW)),
        defer.Deferred.fromCoroutine(second.run_once(NOW))]))
    statuses = sorted(o.status for outcomes in results for o in outcomes)
    assert statuses.count("spooled") == 1
    assert set(statuses) <= {"spooled", "exists", "busy"}
    # a tick later (and a restarted replica) finds it sent
    assert [o.status for o in run(make_scheduler())] == ["exists"]
    assert len(outbound_entries(queue_client)) == 1


def test_a_finished_domain_is_not_looked_at_again_in_the_same_period(make_scheduler,
                                                                      day_of_traffic):
    scheduler = make_scheduler()
    run(scheduler)
    assert run(scheduler, NOW + timedelta(minutes=15)) == []


def test_unverified_external_rua_gets_no_report(make_scheduler, day_of_traffic, zone, db):
    zone.set_records("_dmarc.example.com", "TXT",
                     ["v=DMARC1; p=reject; rua=mailto:agg@reports.example.net"])
    assert [o.status for o in run(make_scheduler())] == ["no_destination"]
    assert spooled(db) is None


def test_verified_external_rua_gets_the_report(make_scheduler, day_of_traffic, zone, db):
    zone.set_records("_dmarc.example.com", "TXT",
                     ["v=DMARC1; p=reject; rua=mailto:agg@reports.example.net,"
                      "mailto:dmarc@example.com"])
    zone.set_records("example.com._report._dmarc.reports.example.net", "TXT", ["v=DMARC1"])
    run(make_scheduler())
    assert sorted(r.address for r in spooled(db).recipients) == [
        "agg@reports.example.net", "dmarc@example.com"]


def test_only_the_verified_of_several_rua_get_the_report(make_scheduler, day_of_traffic, zone,
                                                         db):
    zone.set_records("_dmarc.example.com", "TXT",
                     ["v=DMARC1; p=reject; rua=mailto:agg@reports.example.net,"
                      "mailto:dmarc@example.com"])
    run(make_scheduler())
    assert [r.address for r in spooled(db).recipients] == ["dmarc@example.com"]


def test_report_over_the_size_limit_is_not_sent(make_scheduler, day_of_traffic, zone, db):
    zone.set_records("_dmarc.example.com", "TXT",
                     ["v=DMARC1; p=reject; rua=mailto:dmarc@example.com!1k"])
    assert [o.status for o in run(make_scheduler())] == ["too_large"]
    assert spooled(db) is None


def test_domain_without_dmarc_record_gets_no_report(make_scheduler, day_of_traffic, zone, db):
    zone.set_records("_dmarc.example.com", "TXT", [])
    assert [o.status for o in run(make_scheduler())] == ["no_destination"]
    assert spooled(db) is None


def test_dns_failure_defers_the_report_to_the_next_tick(make_scheduler, day_of_traffic, zone,
                                                        db):
    scheduler = make_scheduler()
    zone.servfail("_dmarc.example.com")
    assert [o.status for o in run(scheduler)] == ["retry"]
    zone.clear()
    zone.set_records("_dmarc.example.com", "TXT",
                     ["v=DMARC1; p=reject; rua=mailto:dmarc@example.com"])
    assert [o.status for o in run(scheduler, NOW + timedelta(minutes=15))] == ["spooled"]


def test_verdicts_past_the_retention_are_purged(make_scheduler, day_of_traffic, db):
    run(make_scheduler(), NOW + timedelta(days=3))
    assert db.run_sync(dmarc_store.results_for_report, "example.com", DAY, NEXT_DAY) == []
