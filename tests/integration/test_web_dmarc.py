"""The DMARC pages and API of the running web service: who sees which domain's data, the
range, the dashboard's figures and verdict, the sources' pages and the reporters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from postroom.mailauth.dmarcreport import IncomingReport, IncomingRow
from postroom.store import dmarc
from tests.support.dns import DNSServer
from tests.support.web import WebServer

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
SENDER = "sender-dash.test"  # not ours: only seen in the From: of mail we received
GOOD, BAD, OUTSIDE, REPORTED = "192.0.2.10", "198.51.100.20", "203.0.113.7", "203.0.113.99"


def verdict(domain: str, ip: str, at: datetime, passed: bool) -> dmarc.DmarcRecord:
    return dmarc.DmarcRecord(source_ip=ip, header_from=domain,
                             spf_result="pass" if passed else "fail",
                             dkim_result="pass" if passed else "fail",
                             dmarc_result="pass" if passed else "fail", disposition="none",
                             reporting_domain=domain, spf_aligned=passed, dkim_aligned=passed,
                             received_at=at)


@pytest.fixture(scope="module")
def data(web: WebServer, dns_server_session: DNSServer) -> WebServer:
    """Verdicts, a report and DNS before the first render (names are cached an hour)."""
    ours = web.managed
    dns_server_session.set_records(f"_dmarc.{ours}", "TXT",
                                   [f"v=DMARC1; p=none; rua=mailto:dmarc@{ours}"])
    dns_server_session.set_records("10.2.0.192.in-addr.arpa", "PTR", ["o1.sendgrid.net"])
    dns_server_session.set_records("o1.sendgrid.net", "A", [GOOD])
    records = [verdict(ours, GOOD, NOW - timedelta(hours=h), True) for h in range(1, 31)]
    records += [verdict(ours, BAD, NOW - timedelta(hours=h), False) for h in range(1, 6)]
    records += [verdict(SENDER, OUTSIDE, NOW - timedelta(hours=h), h % 2 == 0)
                for h in range(1, 5)]
    web.db.run_sync(dmarc.record_results, records)
    row = IncomingRow(source_ip=REPORTED, count=40, disposition="none", dkim="pass",
                      spf="fail", header_from=ours)
    report = IncomingReport(org_name="google.com", email="noreply@google.test",
                            report_id="dash-1", domain=ours, begin=NOW - timedelta(days=1),
                            end=NOW - timedelta(hours=1), policy={"p": "none"}, rows=(row,))
    web.db.run_sync(dmarc.store_incoming_report, "d" * 64, report)
    return web


def test_admins_list_every_domain_with_data_managers_only_theirs(data: WebServer) -> None:
    admin = data.client(bearer=data.admin_token)
    listed = admin.api("GET", "/dmarc/domains").json()
    assert [(d["domain"], d["local"]) for d in listed["items"]] == [
        (data.managed, True), (SENDER, False)]
    assert listed["total"] == 2 and listed["items"][0]["reported"] is True
    manager = data.client()
    manager.login(data.manager)
    assert [d["domain"] for d in manager.api("GET", "/dmarc/domains").json()["items"]] == [
        data.managed]


def test_a_manager_sees_no_sender_domain_nor_others(data: WebServer) -> None:
    manager = data.client()
    manager.login(data.manager)
    assert manager.api("GET", f"/dmarc/{SENDER}").status == 403
    assert manager.api("GET", f"/dmarc/{data.other}").status == 403
    assert manager.api("GET", "/dmarc/nothing-here.test").status == 403  # no one learns
    assert manager.api("GET", f"/dmarc/{SENDER}/sources").status == 403
    assert manager.api("GET", f"/dmarc/{SENDER}/reporters").status == 403
    token = data.client(bearer=data.managed_token)
    assert token.api("GET", f"/dmarc/{SENDER}").status == 403
    assert token.api("GET", f"/dmarc/{data.managed}").status == 200


def test_admins_see_sender_domains_and_unknown_ones_are_404(data: WebServer) -> None:
    admin = data.client(bearer=data.admin_token)
    sender = admin.api("GET", f"/dmarc/{SENDER}").json()
    assert sender["totals"][0]["messages"] == 4 and sender["totals"][0]["dmarc_rate"] == 50.0
    assert admin.api("GET", "/dmarc/nothing-here.test").status == 404
    assert admin.api("GET", "/dmarc/not..a..name").status == 404
    for hostile in ("a" * 1000 + ".test", quote("b\u00fccher.test"), "%00.test", "..", "x%2Fy"):
        reply = admin.api("GET", f"/dmarc/{hostile}")
        assert reply.status == 404 and reply.json()["error"]["code"] == "not_found", hostile
    # ours without data: an empty dashboard, not a 404
    empty = admin.api("GET", f"/dmarc/{data.other}").json()
    assert empty["readiness"]["verdict"] == "no_data"


def test_the_dashboard_has_sources_rates_reporters_and_a_verdict(data: WebServer) -> None:
    admin = data.client(bearer=data.admin_token)
    d = admin.api("GET", f"/dmarc/{data.managed}").json()
    assert d["bucket"] == "day" and len(d["rates"]) in (7, 8)
    seen, reported, both = d["totals"]
    assert (seen["messages"], reported["messages"], both["messages"]) == (35, 40, 75)
    assert seen["dmarc_rate"] == pytest.approx(100 * 30 / 35, abs=0.1)
    assert [(s["source_ip"], s["origin"]) for s in d["sources"]] == [
        (REPORTED, "reported"), (GOOD, "seen"), (BAD, "seen")]
    good = next(s for s in d["sources"] if s["source_ip"] == GOOD)
    assert (good["ptr"], good["organisation"], good["status"]) == (
        "o1.sendgrid.net", "SendGrid", "passes")
    assert d["failing_sources"][0]["source_ip"] == BAD
    assert d["reporters"][0]["org_name"] == "google.com"
    assert d["readiness"]["verdict"] == "not_ready"  # 75 messages, under 100
    assert d["readiness"]["current_record"].startswith("v=DMARC1; p=none")


def test_the_range_is_validated(data: WebServer) -> None:
    admin = data.client(bearer=data.admin_token)
    base = f"/dmarc/{data.managed}"
    day = admin.api("GET", f"{base}?start={quote((NOW - timedelta(days=1)).isoformat())}")
    assert day.status == 200 and day.json()["bucket"] == "hour"
    backwards = admin.api("GET", f"{base}?start=2026-03-02T00:00:00Z&end=2026-03-01T00:00:00Z")
    assert backwards.status == 422 and backwards.json()["error"]["code"] == "invalid_request"
    assert admin.api("GET", f"{base}?start=2020-01-01T00:00:00Z&end=2026-01-01T00:00:00Z"
                     ).status == 422
    assert admin.api("GET", f"{base}?start=0001-01-01T00:00:00").status == 422
    assert admin.api("GET", f"{base}?start=yesterday").status == 422
    assert admin.api("GET", f"{base}?bucket=hour").status == 422  # unknown parameter


def test_sources_come_in_pages(data: WebServer) -> None:
    admin = data.client(bearer=data.admin_token)
    first = admin.api("GET", f"/dmarc/{data.managed}/sources?limit=2").json()
    assert first["total"] == 3 and [s["source_ip"] for s in first["items"]] == [REPORTED, GOOD]
    rest = admin.api("GET", f"/dmarc/{data.managed}/sources?limit=2&offset=2").json()
    assert [s["source_ip"] for s in rest["items"]] == [BAD] and rest["total"] == 3
    past = admin.api("GET", f"/dmarc/{data.managed}/sources?offset=10").json()
    assert past["items"] == [] and past["total"] == 3
    only = admin.api("GET", f"/dmarc/{data.managed}/sources?origin=reported").json()
    assert [(s["source_ip"], s["messages"], s["dkim_rate"]) for s in only["items"]] == [
        (REPORTED, 40, 100.0)]
    assert admin.api("GET", f"/dmarc/{data.managed}/sources?origin=both").status == 422


def test_reporters_say_what_each_receiver_did(data: WebServer) -> None:
    admin = data.client(bearer=data.admin_token)
    reporters = admin.api("GET", f"/dmarc/{data.managed}/reporters").json()
    assert [(r["org_name"], r["reports"], r["messages"], r["disposition_none"])
            for r in reporters] == [("google.com", 1, 40, 40)]
    assert admin.api("GET", f"/dmarc/{SENDER}/reporters").json() == []


def test_the_dmarc_page_lists_domains_and_its_picker_leads_to_the_dashboard(
        data: WebServer) -> None:
    admin = data.client()
    admin.login(data.admin)
    index = admin.get("/dmarc")
    assert index.status == 200 and data.managed in index.text and SENDER in index.text
    picked = admin.get(f"/dmarc?domain={data.managed.upper()}&range=30d&from=2026-01-01&to=x")
    assert picked.status == 303
    assert picked.header("location") == f"/dmarc/{data.managed}?range=30d"
    custom = admin.get(f"/dmarc?domain={data.managed}&range=custom&from=2026-03-01&to=2026-03-02")
    assert custom.header("location") == \
        f"/dmarc/{data.managed}?range=custom&from=2026-03-01&to=2026-03-02"
    page = admin.get(f"/dmarc/{data.managed}?range=30d")
    assert page.status == 200
    for text in (GOOD, BAD, REPORTED, "Not ready yet", "google.com", "<svg"):
        assert text in page.text
    assert page.text.count("<svg") == 3 and "charts.css" in page.text
    assert 'aria-current="page"' in page.text and 'href="/dmarc"' in page.text
    custom = admin.get(f"/dmarc/{data.managed}?range=custom&from="
                       f"{(NOW - timedelta(days=2)).date()}&to={NOW.date()}")
    assert custom.status == 200 and 'value="custom" checked' in custom.text
    wrong = admin.get(f"/dmarc/{data.managed}?range=custom&from=2026-13-01&to=x")
    assert wrong.status == 200 and "That range cannot be shown" in wrong.text


def test_a_manager_gets_a_403_page_for_a_sender_domain(data: WebServer) -> None:
    manager = data.client()
    manager.login(data.manager)
    assert manager.get(f"/dmarc/{data.managed}").status == 200
    refused = manager.get(f"/dmarc/{SENDER}")
    assert refused.status == 403 and OUTSIDE not in refused.text
    assert SENDER not in manager.get("/dmarc").text


def test_source_lookups_are_counted(data: WebServer) -> None:
    data.client(bearer=data.admin_token).api("GET", f"/dmarc/{data.managed}")
    text = data.process.get("/metrics")[1].decode()
    assert "postroom_web_source_lookups_total{" in text
