"""The DMARC dashboard built from the real store and DNS, rendered by its Jinja2 fragment."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jinja2
import pytest

from postroom.mailauth.dmarcreport import IncomingReport, IncomingRow
from postroom.store import dmarc
from postroom_web.dmarc import dashboard as dash

T0 = datetime(2026, 3, 1, tzinfo=UTC)
D = "example.org"
HOSTILE = '<script>alert("x")</script>'
TEMPLATES = Path(dash.__file__).resolve().parents[1] / "templates"


def verdict(ip: str, at: datetime, passed: bool) -> dmarc.DmarcRecord:
    return dmarc.DmarcRecord(source_ip=ip, header_from=D, spf_result="pass" if passed else "fail",
                             dkim_result="pass" if passed else "fail",
                             dmarc_result="pass" if passed else "fail", disposition="none",
                             reporting_domain=D, spf_aligned=passed, dkim_aligned=passed,
                             received_at=at)


@pytest.fixture
def filled(database, clean_db, dns_server):
    records = [verdict("192.0.2.1", T0 + timedelta(hours=h), True) for h in range(0, 20 * 24, 2)]
    records += [verdict("198.51.100.7", T0 + timedelta(days=3, hours=h), False)
                for h in range(12)]
    database.run_sync(dmarc.record_results, records)
    row = IncomingRow(source_ip="203.0.113.5", count=400, disposition="none", dkim="pass",
                      spf="pass", header_from=D)
    report = IncomingReport(org_name=HOSTILE, email="x@y.test", report_id="r1", domain=D,
                            begin=T0 + timedelta(days=1), end=T0 + timedelta(days=2),
                            policy={"p": "none"}, rows=(row,))
    database.run_sync(dmarc.store_incoming_report, "f" * 64, report)
    dns_server.set_records("_dmarc.example.org", "TXT",
                           ["v=DMARC1; p=none; rua=mailto:dmarc@example.org; fo=1"])
    dns_server.set_records("1.2.0.192.in-addr.arpa", "PTR", ["o1.sendgrid.net"])
    dns_server.set_records("o1.sendgrid.net", "A", ["192.0.2.1"])
    dns_server.set_records("7.100.51.198.in-addr.arpa", "PTR", [HOSTILE + ".example.net"])
    return database


def build(database, dns_server) -> dash.Dashboard:
    return database.run_sync(dash.build_dashboard, D, T0, T0 + timedelta(days=30),
                             resolver=dns_server.resolver())


def test_dashboard_combines_both_origins(filled, dns_server):
    d = build(filled, dns_server)
    assert d.bucket == "day" and len(d.rates_table) == 30
    by_origin = {t["origin"]: t for t in d.totals}
    assert (by_origin["seen"]["messages"], by_origin["reported"]["messages"],
            by_origin["both"]["messages"]) == (252, 400, 652)
    assert d.rates_table[1]["messages"] == 12 + 400 and d.rates_table[1]["dmarc_rate"] == 100.0
    assert d.rates_table[3]["dmarc_rate"] == 50.0  # 12 passing, 12 failing
    assert d.rates_table[25]["dmarc_rate"] is None  # nothing that day
    assert [(s["source_ip"], s["origin"]) for s in d.sources] == [
        ("203.0.113.5", "reported"), ("192.0.2.1", "seen"), ("198.51.100.7", "seen")]
    assert d.failing_sources[0]["source_ip"] == "198.51.100.7"
    assert d.reporters[0]["org_name"] == HOSTILE and d.reporters[0]["reports"] == 1


def test_sources_carry_names_and_organisations(filled, dns_server):
    d = build(filled, dns_server)
    sendgrid = next(s for s in d.sources if s["source_ip"] == "192.0.2.1")
    assert (sendgrid["ptr"], sendgrid["organisation"]) == ("o1.sendgrid.net", "SendGrid")
    unknown = next(s for s in d.sources if s["source_ip"] == "203.0.113.5")
    assert (unknown["ptr"], unknown["organisation"]) == ("\u2014", "\u2014")


def test_readiness_reads_the_current_record(filled, dns_server):
    r = build(filled, dns_server).readiness
    assert r.current_record == "v=DMARC1; p=none; rua=mailto:dmarc@example.org; fo=1"
    assert r.verdict == "ready_for_reject"  # 20 days, every source with volume passes
    assert r.dns_record == ('_dmarc.example.org. IN TXT "v=DMARC1; p=reject; '
                            'rua=mailto:dmarc@example.org; fo=1"')


def test_fragment_renders_escaped_with_a_table_under_each_chart(filled, dns_server):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    html = env.get_template(dash.TEMPLATE).render(dashboard=build(filled, dns_server))
    assert "<script" not in html and "&lt;script&gt;" in html
    assert html.count("<svg") == 3 and html.count("<table") >= 6
    assert "style=" not in html and "onload" not in html
    assert '<pre class="dmarc-record dmarc-record-next">_dmarc.example.org. IN TXT' in html
    assert "Ready for p=reject" in html


def test_dashboard_json_is_plain_json(filled, dns_server):
    out = dash.dashboard_json(build(filled, dns_server))
    again = json.loads(json.dumps(out))
    assert again["readiness"]["verdict"] == "ready_for_reject"
    assert again["totals"][2]["messages"] == 652 and "rates_chart" not in again


def test_without_dns_names_and_record_are_unknown(filled):
    d = filled.run_sync(dash.build_dashboard, D, T0, T0 + timedelta(days=30))
    assert {s["ptr"] for s in d.sources} == {"\u2014"}
    assert d.readiness.verdict == "ready_for_reject" and d.readiness.dns_record is None
    assert any("was not looked up" in r for r in d.readiness.reasons)
