"""TLS reports (RFC 8460): results stored, the daily report sent and read back, incoming reports
read from the report mailbox. Real PostgreSQL, Redis and the loopback DNS server."""

from __future__ import annotations

import email
import gzip
import json
from datetime import UTC, datetime, timedelta
from email import policy as email_policy

import pytest
from twisted.internet import defer
from twisted.python.threadpool import ThreadPool

from postroom.mailauth import tlsrpt
from postroom.outgoing import Outgoing
from postroom.queue.envelope import decode
from postroom.queue.reconciler import Enqueuer
from postroom.store import dmarc as dmarc_store
from postroom.store import domains, mailboxes, messages, spool, tlsreports, users
from postroom.store.tlsreports import TLSResult
from postroom_dmarc.incoming import IncomingScanner
from postroom_dmarc.tlsreports import TLSReportConfig, TLSReportScheduler, report_id
from tests.support.redisdb import in_reactor

DAY = datetime(2026, 3, 1, tzinfo=UTC)
NEXT_DAY = DAY + timedelta(days=1)
NOW = NEXT_DAY + timedelta(minutes=10)
SUBMITTER = "mx.sender.test"
CONFIG = TLSReportConfig(submitter=SUBMITTER, org_name="Sender Test",
                         sender=f"tlsrpt-noreply@{SUBMITTER}", contact=f"postmaster@{SUBMITTER}")
STS = ("version: STSv1", "mode: enforce", "mx: mx.example.net", "max_age: 86400")


@pytest.fixture
def db(database, clean_db):
    return database


@pytest.fixture
def pools():
    made = [ThreadPool(minthreads=0, maxthreads=4, name=f"test-tls-{n}") for n in ("dns", "r")]
    for pool in made:
        pool.start()
    yield made
    for pool in made:
        pool.stop()


@pytest.fixture
def day_of_sessions(db):
    rows = [TLSResult("example.net", "sts", "mx.example.net", None, STS, "192.0.2.1",
                      "198.51.100.7", recorded_at=DAY + timedelta(hours=h)) for h in range(5)]
    rows += [TLSResult("example.net", "sts", "mx.example.net", "certificate-not-trusted", STS,
                       "192.0.2.1", "198.51.100.7", "TLS negotiation failed: verify failed",
                       recorded_at=DAY + timedelta(hours=6, minutes=m)) for m in range(2)]
    rows.append(TLSResult("example.net", "no-policy-found", "mx2.example.net",
                          "starttls-not-supported", None, None, "198.51.100.8",
                          "the server did not offer STARTTLS", DAY + timedelta(hours=7)))
    rows.append(TLSResult("example.net", "sts", "mx.example.net", None, STS,
                          recorded_at=NEXT_DAY + timedelta(minutes=1)))  # tomorrow's
    db.run_sync(tlsreports.record_results, rows)
    return rows


@pytest.fixture
def make_scheduler(db, queue_client, dns_server, pools, twisted_reactor):
    dns_server.set_records("_smtp._tls.example.net", "TXT",
                           ["v=TLSRPTv1; rua=mailto:tlsrpt@example.net"])

    def make() -> TLSReportScheduler:
        return TLSReportScheduler(db, Enqueuer(queue_client, pools[1], twisted_reactor),
                                  dns_server.resolver(), CONFIG, dns_pool=pools[0],
                                  reactor=twisted_reactor, outgoing=Outgoing(SUBMITTER))
    return make


def run(scheduler: TLSReportScheduler, now: datetime = NOW):
    return in_reactor(lambda: defer.Deferred.fromCoroutine(scheduler.run_once(now)))


def test_results_are_counted_by_policy_and_outcome(db, day_of_sessions):
    rows = db.run_sync(tlsreports.results_for_report, "example.net", DAY, NEXT_DAY)
    by = {(r.policy_type, r.result_type): r for r in rows}
    assert by[("sts", None)].count == 5
    assert by[("sts", None)].policy_string == STS
    assert by[("sts", "certificate-not-trusted")].count == 2
    assert by[("no-policy-found", "starttls-not-supported")].receiving_ip == "198.51.100.8"
    assert db.run_sync(tlsreports.reporting_domains, DAY, NEXT_DAY) == ["example.net"]


def test_the_daily_report_is_sent_to_the_rua_and_reads_back_through_our_parser(
        make_scheduler, day_of_sessions, db, queue_client):
    [outcome] = run(make_scheduler())
    assert outcome.status == "spooled"
    info = db.run_sync(spool.get_spool, report_id("example.net", DAY, NEXT_DAY))
    assert info.mail_from == f"tlsrpt-noreply@{SUBMITTER}"
    assert [(r.address, r.stream, r.notify) for r in info.recipients] == [
        ("tlsrpt@example.net", "outbound", "NEVER")]
    [entry] = [decode(f) for _, f in
               queue_client.redis.xrange(queue_client.stream_key("outbound"))]
    assert entry.queue_id == info.queue_id
    raw = db.run_sync(messages.get_message, info.message_id)
    msg = email.message_from_bytes(raw, policy=email_policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    assert (msg["TLS-Report-Domain"], msg["TLS-Report-Submitter"]) == ("example.net", SUBMITTER)
    assert msg["Subject"] == (f"Report Domain: example.net Submitter: {SUBMITTER} "
                              f"Report-ID: <{info.queue_id}>")
    [attachment] = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    doc = json.loads(gzip.decompress(attachment.get_payload(decode=True)))
    assert set(doc) == {"organization-name", "date-range", "contact-info", "report-id",
                        "policies"}
    assert doc["date-range"] == {"start-datetime": "2026-03-01T00:00:00Z",
                                 "end-datetime": "2026-03-02T00:00:00Z"}
    summaries = {p["policy"]["policy-type"]: p["summary"] for p in doc["policies"]}
    assert summaries == {
        "sts": {"total-successful-session-count": 5, "total-failure-session-count": 2},
        "no-policy-found": {"total-successful-session-count": 0,
                            "total-failure-session-count": 1}}
    # round trip: the mail our own incoming reader gets is the report we meant
    parsed = tlsrpt.parse_report_message(raw)
    assert (parsed.report_id, parsed.domains, parsed.successes, parsed.failures) == \
        (info.queue_id, ("example.net",), 5, 3)
    # and a second run (or replica) sends nothing more
    assert [o.status for o in run(make_scheduler())] in ([], ["exists"])


def test_a_domain_with_only_an_https_rua_gets_no_report(make_scheduler, day_of_sessions,
                                                        dns_server, db):
    dns_server.set_records("_smtp._tls.example.net", "TXT",
                           ["v=TLSRPTv1; rua=https://reports.example.net/tlsrpt"])
    assert [o.status for o in run(make_scheduler())] == ["no_destination"]


def test_a_domain_without_a_tlsrpt_record_gets_no_report(make_scheduler, day_of_sessions,
                                                         dns_server):
    dns_server.set_records("_smtp._tls.example.net", "TXT", [])
    assert [o.status for o in run(make_scheduler())] == ["no_destination"]


def test_old_results_are_purged_after_their_day(make_scheduler, day_of_sessions, db):
    run(make_scheduler(), NOW + timedelta(days=5))
    assert db.run_sync(tlsreports.reporting_domains, DAY, NEXT_DAY) == []


# --- incoming: a TLS report mail in the report mailbox


def _deliver(session, address: str, raw: bytes) -> None:
    user = users.get_user(session, address)
    message_id = messages.store_message(session, raw)
    mailboxes.deliver_to_mailbox(session, user_id=user.id, mailbox_name="INBOX",
                                 message_id=message_id, spool_recipient_id=None)


def _report_mail(domain: str = "example.org", begin: datetime = DAY,
                 end: datetime = NEXT_DAY) -> bytes:
    report = tlsrpt.build_report(
        org_name="Big Sender", contact="tls@big.test", report_id="2026-03-01T00:00:00Z_x",
        policy_domain=domain, begin=begin, end=end,
        rows=[tlsrpt.ResultRow("sts", STS, "mx.example.org", "203.0.113.9", "192.0.2.25",
                               None, count=120),
              tlsrpt.ResultRow("sts", STS, "mx.example.org", "203.0.113.9", "192.0.2.25",
                               "certificate-expired", None, count=4)])
    return tlsrpt.build_message(report, domain, submitter="big.test",
                                sender="tlsrpt@big.test", recipients=["reports@example.org"],
                                message_id="<r1@big.test>", now=end)


@pytest.fixture
def mailbox(db):
    db.run_sync(domains.add_domain, "example.org")
    db.run_sync(users.add_user, "reports@example.org", "a long passphrase here")
    return "reports@example.org"


def test_an_incoming_tls_report_is_stored_beside_the_dmarc_reports(db, mailbox, pools,
                                                                   twisted_reactor):
    db.run_sync(_deliver, mailbox, _report_mail())
    db.run_sync(_deliver, mailbox, b"Subject: junk\r\nTLS-Report-Domain: example.org\r\n\r\nx")
    scanner = IncomingScanner(db, mailbox, pool=pools[0], reactor=twisted_reactor)
    counts = in_reactor(lambda: defer.Deferred.fromCoroutine(scanner.scan_once()))
    assert counts == {"stored": 1, "duplicate": 0, "refused": 1}
    [row] = db.run_sync(tlsreports.incoming_reports, "example.org")
    assert (row.org_name, row.successful, row.failed) == ("Big Sender", 120, 4)
    assert row.policies[0]["failure-details"][0]["result-type"] == "certificate-expired"
    # looked at once: a second scan finds nothing new, and no DMARC row was made for them
    again = in_reactor(lambda: defer.Deferred.fromCoroutine(scanner.scan_once()))
    assert again == {"stored": 0, "duplicate": 0, "refused": 0}
    assert db.run_sync(dmarc_store.unscanned_report_messages, mailbox) == []
