"""Pure parts of report sending: rua parsing, periods, report ids, verdict rows to store."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from postroom.queue.envelope import Envelope
from postroom_dmarc.dkimcheck import ARCResult, DKIMResult
from postroom_dmarc.periodic import period_of
from postroom_dmarc.reports import Target, parse_rua, report_id, rua_value
from postroom_dmarc.results import record_for
from postroom_dmarc.spfcheck import SPFResult
from postroom_dmarc.verdict import CheckRequest, DMARCResult, Verdict

DAY = 86400.0


def test_rua_value_is_read_from_the_raw_record():
    assert rua_value("v=DMARC1; p=none; RUA = mailto:a@x.test!10m ;ruf=mailto:f@x.test") == \
        "mailto:a@x.test!10m"


@pytest.mark.parametrize(("value", "targets"), [
    ("mailto:a@x.test", [Target("a@x.test")]),
    ("mailto:a@x.test!10m, mailto:b@y.test!500", [Target("a@x.test", 10 * 2**20),
                                                   Target("b@y.test", 500)]),
    ("mailto:a@x.test!2k", [Target("a@x.test", 2048)]),
    ("https://x.test/report, mailto:a@x.test", [Target("a@x.test")]),
    ("mailto:a@x.test, mailto:A@x.test", [Target("a@x.test")]),
    ("mailto:a%40b@x.test", []),
    ("mailto:a@x.test!lots", []),
    ("mailto:a@x.test?subject=hi", [Target("a@x.test")]),
    ("mailto:<a@x.test>\r\nBcc: c@d", []),
])
def test_parse_rua(value, targets):
    assert parse_rua(value) == targets


def test_period_is_the_last_whole_utc_day():
    now = datetime(2026, 3, 2, 0, 5, tzinfo=UTC)
    assert period_of(now, DAY, settle=60) == (datetime(2026, 3, 1, tzinfo=UTC),
                                              datetime(2026, 3, 2, tzinfo=UTC))


def test_period_waits_for_the_settle_time_after_midnight():
    now = datetime(2026, 3, 2, 0, 0, 30, tzinfo=UTC)
    assert period_of(now, DAY, settle=60)[0] == datetime(2026, 2, 28, tzinfo=UTC)


def test_report_id_is_stable_per_domain_and_period_and_a_valid_queue_id():
    begin, end = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)
    first = report_id("example.com", begin, end)
    assert first == report_id("example.com", begin, end) != report_id("example.org", begin, end)
    assert Envelope(first, (1,), "outbound").queue_id == first


def _verdict(disposition: str = "inbox", **dmarc) -> Verdict:
    fields = dict(result="fail", from_domain="news.example.com", policy_domain="example.com",
                  policy="quarantine", applied_policy="none", override="sampled_out",
                  record={"p": "quarantine", "pct": 10})
    fields.update(dmarc)
    return Verdict(
        spf=SPFResult("softfail", "mailfrom", "bounce.example.net", "b@bounce.example.net", ""),
        spf_helo=None,
        dkim=[DKIMResult("fail", "other.test", "s0", "rsa-sha256", "AAA", "bad"),
              DKIMResult("pass", "example.com", "s1", "ed25519-sha256", "BBB", "ok")],
        arc=ARCResult("none", ""), dmarc=DMARCResult(**fields), disposition=disposition,
        reason="", authentication_results="x")


REQUEST = CheckRequest("192.0.2.7", "h.test", "b@Bounce.Example.NET", ("u@r.test",), b"", "Q9")


def test_verdict_row_goes_to_the_policy_domain_with_every_signature():
    row = record_for(REQUEST, _verdict())
    assert row is not None
    assert (row.reporting_domain, row.header_from, row.envelope_from, row.disposition,
            row.dkim_domain, row.dkim_result, row.spf_result, row.queue_id) == (
        "example.com", "news.example.com", "bounce.example.net", "none", "example.com", "pass",
        "softfail", "Q9")
    assert [d["result"] for d in row.detail["dkim"]] == ["fail", "pass"]
    assert (row.detail["override"], row.detail["record"]["pct"]) == ("sampled_out", 10)


def test_tempfail_verdict_is_not_kept():
    assert record_for(REQUEST, _verdict("tempfail", result="temperror")) is None


def test_verdict_without_from_domain_is_not_kept():
    assert record_for(REQUEST, _verdict("reject", result="permerror", from_domain="")) is None


def test_no_policy_record_reports_to_the_author_domain():
    row = record_for(REQUEST, _verdict(result="none", policy_domain=None, policy=None))
    assert row is not None and row.reporting_domain == "news.example.com"
