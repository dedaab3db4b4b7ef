"""The TLS reports API and page, and the doctor API and page, on the real `web` service."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from postroom.mailauth import tlsrpt
from postroom.store import tlsreports
from tests.integration.test_tls_reports import _report_mail
from tests.support.web import WebServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reported(web: WebServer) -> WebServer:
    """An incoming TLS report about the managed domain, as the dmarc service stores it."""
    # the report's period must be recent to be shown
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    report = tlsrpt.parse_report_message(_report_mail(web.managed, end - timedelta(days=1), end))
    web.db.run_sync(tlsreports.store_incoming_report, "e" * 64, report)
    return web


def test_a_manager_reads_the_tls_reports_of_its_domain(reported: WebServer) -> None:
    boss = reported.client()
    boss.login(reported.manager)
    answer = boss.api("GET", f"/tls-reports/{reported.managed}")
    assert answer.status == 200
    [report] = answer.json()["reports"]
    assert (report["org_name"], report["successful"], report["failed"]) == ("Big Sender", 120, 4)
    assert report["policies"][0]["failure-details"][0]["result-type"] == "certificate-expired"
    assert boss.api("GET", f"/tls-reports/{reported.other}").status == 403


def test_the_tls_page_shows_the_reports_beside_the_nav_entry(reported: WebServer) -> None:
    boss = reported.client()
    boss.login(reported.manager)
    page = boss.get(f"/tls/{reported.managed}")
    assert page.status == 200
    assert "Big Sender" in page.text and "certificate-expired" in page.text
    assert 'href="/tls"' in page.text
    assert f'href="/tls/{reported.managed}"' in boss.get("/tls").text


def test_the_doctor_answers_the_same_checks_as_the_cli(reported: WebServer) -> None:
    bot = reported.client(bearer=reported.managed_token)
    answer = bot.api("GET", f"/domains/{reported.managed}/doctor")
    assert answer.status == 200
    doc = answer.json()
    names = {c["name"] for c in doc["checks"]}
    assert {"mx", "spf", "dmarc", "mta-sts", "tls-rpt", "dane", "certificate-name"} <= names
    # the test domain is not in any DNS: its MX check fails, with the record to publish
    mx = next(c for c in doc["checks"] if c["name"] == "mx")
    assert mx["status"] == "fail" and " IN MX " in mx["fix"]
    assert bot.api("GET", f"/domains/{reported.other}/doctor").status == 403
    boss = reported.client()
    boss.login(reported.manager)
    page = boss.get(f"/doctor/{reported.managed}")
    assert page.status == 200 and "tls-rpt" in page.text
