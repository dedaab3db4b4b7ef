"""The dashboard's DMARC figures, aggregated in PostgreSQL: exact counts from generated rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from postroom.mailauth.dmarcreport import IncomingReport, IncomingRow
from postroom.store import dmarc, dmarcstats, domains
from postroom.store.dmarcstats import Counts

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DOMAIN = "example.org"


def verdict(ip: str, at: datetime, *, spf: bool, dkim: bool, domain: str = DOMAIN,
            header_from: str | None = None) -> dmarc.DmarcRecord:
    passed = spf or dkim
    return dmarc.DmarcRecord(
        source_ip=ip, header_from=header_from or domain, spf_result="pass" if spf else "fail",
        dkim_result="pass" if dkim else "fail", dmarc_result="pass" if passed else "fail",
        disposition="none" if passed else "quarantine", reporting_domain=domain,
        spf_aligned=spf, dkim_aligned=dkim, received_at=at)


def report(org: str, rid: str, begin: datetime, rows: list[IncomingRow],
           domain: str = DOMAIN) -> IncomingReport:
    return IncomingReport(org_name=org, email=f"noreply@{org.lower()}.test", report_id=rid,
                          domain=domain, begin=begin, end=begin + timedelta(days=1),
                          policy={"p": "none"}, rows=tuple(rows))


def row(ip: str, count: int, *, spf: str, dkim: str, disposition: str = "none") -> IncomingRow:
    return IncomingRow(source_ip=ip, count=count, disposition=disposition, dkim=dkim, spf=spf,
                       header_from=DOMAIN)


@pytest.fixture
def filled(database, clean_db):
    """Three days of verdicts for example.org, one for another domain, and three reports."""
    records = []
    # day 0: 192.0.2.1 sends 10 (all pass, 6 of them by SPF and DKIM, 4 by DKIM alone)
    records += [verdict("192.0.2.1", T0 + timedelta(hours=1, minutes=i), spf=i < 6, dkim=True)
                for i in range(10)]
    # day 1: 198.51.100.7 sends 5 that fail, 2001:db8::1 sends 3 passing by SPF only
    records += [verdict("198.51.100.7", T0 + timedelta(days=1, hours=3), spf=False, dkim=False)
                for _ in range(5)]
    records += [verdict("2001:db8::1", T0 + timedelta(days=1, hours=5), spf=True, dkim=False)
                for _ in range(3)]
    # day 2: 192.0.2.1 again, 2 failing; outside the range and another domain: never counted
    records += [verdict("192.0.2.1", T0 + timedelta(days=2, hours=23), spf=False, dkim=False)
                for _ in range(2)]
    records += [verdict("192.0.2.1", T0 - timedelta(seconds=1), spf=True, dkim=True),
                verdict("192.0.2.1", T0 + timedelta(days=3), spf=True, dkim=True),
                verdict("192.0.2.9", T0 + timedelta(hours=2), spf=True, dkim=True,
                        domain="other.test")]
    database.run_sync(dmarc.record_results, records)
    reports = [
        ("a" * 64, report("Google", "g1", T0, [row("203.0.113.5", 100, spf="pass", dkim="pass"),
                                                row("203.0.113.6", 20, spf="fail", dkim="fail",
                                                    disposition="quarantine")])),
        ("b" * 64, report("Google", "g2", T0 + timedelta(days=1),
                          [row("203.0.113.5", 50, spf="fail", dkim="pass")])),
        ("c" * 64, report("Microsoft", "m1", T0 + timedelta(days=1),
                          [row("203.0.113.6", 7, spf="fail", dkim="fail",
                               disposition="reject")], domain="mail.example.org")),
        # before the range, and about someone else's domain: not counted
        ("d" * 64, report("Google", "g0", T0 - timedelta(days=1),
                          [row("203.0.113.5", 999, spf="pass", dkim="pass")])),
        ("e" * 64, report("Google", "x1", T0, [row("203.0.113.5", 999, spf="pass", dkim="pass")],
                          domain="notexample.org")),
    ]
    for sha, rep in reports:
        database.run_sync(dmarc.store_incoming_report, sha, rep)
    return database


RANGE = (T0, T0 + timedelta(days=3))


def test_totals_count_each_origin_exactly(filled):
    t = filled.run_sync(dmarcstats.totals, DOMAIN, *RANGE)
    assert t.seen == Counts(messages=20, spf_pass=9, dkim_pass=10, dmarc_pass=13)
    assert t.reported == Counts(messages=177, spf_pass=100, dkim_pass=150, dmarc_pass=150)
    assert (t.seen_sources, t.seen_days, t.reported_days, t.reports) == (3, 3, 2, 3)
    assert t.first_at == T0  # Google's g1 begins before the first verdict
    assert t.last_at == T0 + timedelta(days=2, hours=23)  # after the reports end (day 2)
    assert t.combined.messages == 197


def test_totals_of_a_domain_without_data_are_zero(filled):
    t = filled.run_sync(dmarcstats.totals, "nothing.test", *RANGE)
    assert (t.seen, t.reported, t.reports, t.first_at) == (Counts(), Counts(), 0, None)


def test_daily_buckets_cover_the_range_with_empty_days(filled):
    rows = filled.run_sync(dmarcstats.buckets, DOMAIN, T0, T0 + timedelta(days=5))
    assert [b.start for b in rows] == [T0 + timedelta(days=d) for d in range(5)]
    assert [b.seen for b in rows] == [Counts(10, 6, 10, 10), Counts(8, 3, 0, 3),
                                      Counts(2, 0, 0, 0), Counts(1, 1, 1, 1), Counts()]
    assert [b.reported.messages for b in rows] == [120, 57, 0, 0, 0]


def test_hourly_buckets_for_a_short_range(filled):
    rows = filled.run_sync(dmarcstats.buckets, DOMAIN, T0, T0 + timedelta(days=1))
    assert len(rows) == 24
    assert rows[1].seen == Counts(10, 6, 10, 10)
    assert rows[0].reported == Counts(120, 100, 100, 100)
    assert sum(b.seen.messages for b in rows) == 10


def test_sources_busiest_first_with_last_seen(filled):
    rows = filled.run_sync(dmarcstats.sources, DOMAIN, *RANGE)
    assert [(s.source_ip, s.counts) for s in rows] == [
        ("192.0.2.1", Counts(12, 6, 10, 10)), ("198.51.100.7", Counts(5, 0, 0, 0)),
        ("2001:db8::1", Counts(3, 3, 0, 3))]
    assert rows[0].last_seen == T0 + timedelta(days=2, hours=23)
    assert rows[0].header_from == (DOMAIN,) and rows[0].origin == "seen"


def test_failing_sources_most_failures_first(filled):
    rows = filled.run_sync(dmarcstats.sources, DOMAIN, *RANGE, failing=True)
    assert [(s.source_ip, s.counts.dmarc_fail) for s in rows] == [
        ("198.51.100.7", 5), ("192.0.2.1", 2)]


def test_reported_sources_sum_the_report_rows(filled):
    rows = filled.run_sync(dmarcstats.reported_sources, DOMAIN, *RANGE)
    assert [(s.source_ip, s.counts) for s in rows] == [
        ("203.0.113.5", Counts(150, 100, 150, 150)), ("203.0.113.6", Counts(27, 0, 0, 0))]
    failing = filled.run_sync(dmarcstats.reported_sources, DOMAIN, *RANGE, failing=True)
    assert [s.source_ip for s in failing] == ["203.0.113.6"]
    assert failing[0].origin == "reported"


def test_reporters_with_dispositions_and_report_counts(filled):
    rows = filled.run_sync(dmarcstats.reporters, DOMAIN, *RANGE)
    assert [(r.org_name, r.reports, r.counts, r.dispositions) for r in rows] == [
        ("Google", 2, Counts(170, 100, 150, 150), {"none": 150, "quarantine": 20, "reject": 0}),
        ("Microsoft", 1, Counts(7, 0, 0, 0), {"none": 0, "quarantine": 0, "reject": 7})]
    assert (rows[0].first_begin, rows[0].last_end) == (T0, T0 + timedelta(days=2))


def test_domains_with_data_lists_local_domains_first(filled):
    filled.run_sync(domains.add_domain, DOMAIN)
    listed = filled.run_sync(dmarcstats.domains_with_data)
    assert [(d.domain, d.local, d.seen, d.reported) for d in listed] == [
        ("example.org", True, True, True), ("mail.example.org", True, False, True),
        ("notexample.org", False, False, True), ("other.test", False, True, False)]
    local = filled.run_sync(dmarcstats.domains_with_data, local_only=True)
    assert [d.domain for d in local] == ["example.org", "mail.example.org"]


@pytest.mark.parametrize("start,end", [(T0, T0), (T0 + timedelta(days=1), T0),
                                       (T0, T0 + timedelta(days=401))])
def test_unusable_ranges_are_refused(start, end):
    with pytest.raises(dmarcstats.RangeError):
        dmarcstats.bucket_for(start, end)


def test_bucket_is_hourly_up_to_two_days():
    assert dmarcstats.bucket_for(T0, T0 + timedelta(days=2)) == "hour"
    assert dmarcstats.bucket_for(T0, T0 + timedelta(days=2, seconds=1)) == "day"


def test_source_lists_give_both_lists_in_one_statement(filled):
    busiest, failing = filled.run_sync(dmarcstats.source_lists, DOMAIN, *RANGE, limit=2,
                                       failing_limit=1)
    assert [s.source_ip for s in busiest] == ["192.0.2.1", "198.51.100.7"]
    assert [(s.source_ip, s.counts.dmarc_fail) for s in failing] == [("198.51.100.7", 5)]


def test_source_page_pages_both_origins_busiest_first_with_a_total(filled):
    every, total = filled.run_sync(dmarcstats.source_page, DOMAIN, *RANGE, limit=10)
    assert total == 5
    assert [(s.source_ip, s.origin, s.counts.messages) for s in every] == [
        ("203.0.113.5", "reported", 150), ("203.0.113.6", "reported", 27),
        ("192.0.2.1", "seen", 12), ("198.51.100.7", "seen", 5), ("2001:db8::1", "seen", 3)]
    assert every[2].counts == Counts(12, 6, 10, 10) and every[2].header_from == (DOMAIN,)
    page, total = filled.run_sync(dmarcstats.source_page, DOMAIN, *RANGE, offset=2, limit=2)
    assert [s.source_ip for s in page] == ["192.0.2.1", "198.51.100.7"] and total == 5
    past, total = filled.run_sync(dmarcstats.source_page, DOMAIN, *RANGE, offset=50, limit=2)
    assert past == [] and total == 5
    seen, total = filled.run_sync(dmarcstats.source_page, DOMAIN, *RANGE, origin="seen")
    assert total == 3 and {s.origin for s in seen} == {"seen"}
    with pytest.raises(dmarcstats.RangeError):
        filled.run_sync(dmarcstats.source_page, DOMAIN, *RANGE, origin="both")


def test_has_data_probes_verdicts_and_reports(filled):
    assert filled.run_sync(dmarcstats.has_data, "other.test")  # verdicts only
    assert filled.run_sync(dmarcstats.has_data, "notexample.org")  # a report only
    assert filled.run_sync(dmarcstats.has_data, "Example.ORG.")
    assert not filled.run_sync(dmarcstats.has_data, "nothing.test")
