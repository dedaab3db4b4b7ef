"""The DMARC dashboard end to end (issue 19): mail through port 25 from several loopback
addresses, for sender domains the test DNS server publishes SPF, DKIM and DMARC for (some
passing, some failing), one aggregate report mailed to the report mailbox and read by the
dmarc service, then the console in headless Chromium: log in, pick a domain, see the
sources, the pass rates and the readiness verdict; screenshots in light and dark mode.

dash.test runs mta, dmarc, mda and web on 127.0.0.7; the senders connect from
127.0.0.10 (allowed by good.test's and mixed.test's SPF, DKIM-signed for good.test),
127.0.0.11 (allowed by nobody) and 127.0.0.13 (the reporter's mail).
"""

from __future__ import annotations

import base64
import gzip
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from selenium.webdriver.common.by import By

from postroom.mailauth.dmarcreport import IncomingReport, IncomingRow
from postroom.store import dmarc as dmarc_store
from postroom.store import webaccess
from tests.support.browser import csp_violations, save_screenshot
from tests.support.dns import DNSServer
from tests.support.instance import Instance, shared_free_port
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, cli_argv
from tests.support.redisdb import wait_until
from tests.support.web import PASSWORD

pytestmark = pytest.mark.slow

DASH = "127.0.0.7"
GOOD_IP, BAD_IP, REPORTER_IP = "127.0.0.10", "127.0.0.11", "127.0.0.13"
ADMIN = "admin@dash.test"
REPORTS = "dmarc@dash.test"


def _key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(public).decode()


@pytest.fixture(scope="module")
def dash(redis_url: str, dns_server_session: DNSServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Instance, str]]:
    env = {"POSTROOM_DMARC_REPORT_MAILBOX": REPORTS,
           "POSTROOM_DMARC_REPORT_SCAN_INTERVAL": "1s", "POSTROOM_AUTH_DELAY_MAX": "0"}
    with Instance("dash.test", DASH, redis_url, tmp_path_factory.mktemp("dash"),
                  smtp_port=shared_free_port(DASH), dns=dns_server_session,
                  env=env) as inst:
        inst.spawn(("dmarc", "mda", "mta"))
        inst.setup_domain()
        port = free_port()
        web = ServiceProcess("web", {**inst.env(),
                                     "POSTROOM_WEB_LISTEN": f"tcp:{port}:interface={DASH}"},
                             argv=cli_argv("web"))
        inst.processes["web"] = web.spawn()
        inst.add_user(ADMIN)
        inst.add_user(REPORTS)
        inst.db.run_sync(webaccess.set_admin, ADMIN, True)
        inst.wait()
        yield inst, f"http://{DASH}:{port}"


def send(inst: Instance, source: str, sender: str, *, sign: tuple[bytes, str] | None = None,
         body: bytes | None = None, rcpt: str = "alice@dash.test") -> int:
    """One message to ``rcpt`` over port 25 from ``source``; the DATA reply's code."""
    domain = sender.rpartition("@")[2]
    if body is None:
        body = (f"From: <{sender}>\r\nTo: <alice@dash.test>\r\n"
                f"Subject: dashboard {secrets.token_hex(3)}\r\n"
                f"Message-ID: <{secrets.token_hex(8)}@{domain}>\r\n\r\nhello\r\n").encode()
    if sign is not None:
        pem, selector = sign
        body = dkim.sign(body, selector.encode(), domain.encode(), pem,
                         include_headers=[b"from", b"to", b"subject", b"message-id"]) + body
    client = inst.smtp(source=source)
    try:
        assert client.mail(sender)[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        return client.data(body)[0]
    finally:
        client.close()


def report_mail(begin: datetime) -> bytes:
    """Google's aggregate report about dash.test: our relay passing, a spoofer failing."""
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<feedback><version>1.0</version>
  <report_metadata><org_name>google.com</org_name><email>noreply-dmarc@google.test</email>
    <report_id>dash-{secrets.token_hex(4)}</report_id><date_range>
    <begin>{int(begin.timestamp())}</begin><end>{int(begin.timestamp()) + 86399}</end>
    </date_range></report_metadata>
  <policy_published><domain>dash.test</domain><p>none</p></policy_published>
  <record><row><source_ip>{DASH}</source_ip><count>60</count><policy_evaluated>
    <disposition>none</disposition><dkim>pass</dkim><spf>pass</spf></policy_evaluated></row>
    <identifiers><header_from>dash.test</header_from></identifiers></record>
  <record><row><source_ip>198.51.100.66</source_ip><count>4</count><policy_evaluated>
    <disposition>none</disposition><dkim>fail</dkim><spf>fail</spf></policy_evaluated></row>
    <identifiers><header_from>dash.test</header_from></identifiers></record>
</feedback>""".encode()
    msg = EmailMessage()
    msg["From"] = "noreply-dmarc-support@google.test"
    msg["To"] = REPORTS
    msg["Subject"] = "Report domain: dash.test Submitter: google.com"
    msg["Message-ID"] = f"<{secrets.token_hex(8)}@google.test>"
    msg.set_content("report attached\n")
    msg.add_attachment(gzip.compress(xml), maintype="application", subtype="gzip",
                       filename="google.com!dash.test.xml.gz")
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.fixture(scope="module")
def mail(dash: tuple[Instance, str], dns_server_session: DNSServer) -> tuple[Instance, str]:
    inst, base = dash
    dns = dns_server_session
    inst.add_user("alice@dash.test")
    inst.publish("p=none")  # dash.test itself: reports wanted, nothing enforced yet
    pem, public = _key()
    dns.load({
        "good.test": {"TXT": [f"v=spf1 ip4:{GOOD_IP} -all"]},
        "s1._domainkey.good.test": {"TXT": [f"v=DKIM1; k=rsa; p={public}"]},
        "_dmarc.good.test": {"TXT": ["v=DMARC1; p=reject"]},
        "mixed.test": {"TXT": [f"v=spf1 ip4:{GOOD_IP} -all"]},
        "_dmarc.mixed.test": {"TXT": ["v=DMARC1; p=none; rua=mailto:d@mixed.test"]},
        "forged.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
        "_dmarc.forged.test": {"TXT": ["v=DMARC1; p=quarantine"]},
    })
    for _ in range(3):  # aligned SPF and DKIM
        assert send(inst, GOOD_IP, "news@good.test", sign=(pem, "s1")) == 250
    for source in (GOOD_IP, GOOD_IP, BAD_IP, BAD_IP):  # SPF passes from .10 only, no DKIM
        assert send(inst, source, "shop@mixed.test") == 250
    assert send(inst, BAD_IP, "ceo@forged.test") == 250  # quarantined: into Junk
    # the aggregate report, through port 25 into the report mailbox, read by the dmarc service
    assert send(inst, REPORTER_IP, "noreply-dmarc-support@google.test",
                body=report_mail(datetime.now(UTC) - timedelta(days=1)), rcpt=REPORTS) == 250
    wait_until(lambda: inst.query("SELECT 1 FROM dmarc_incoming_reports WHERE status = "
                                  "'stored' AND domain = 'dash.test'"), timeout=60)
    # and two weeks of earlier reports (the same rows), so dash.test has a verdict to show
    for day in range(2, 16):
        begin = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) \
            - timedelta(days=day)
        rows = (IncomingRow(source_ip=DASH, count=60, disposition="none", dkim="pass",
                            spf="pass", header_from="dash.test"),
                IncomingRow(source_ip="198.51.100.66", count=4, disposition="none",
                            dkim="fail", spf="fail", header_from="dash.test"))
        inst.db.run_sync(dmarc_store.store_incoming_report, secrets.token_hex(32),
                         IncomingReport(org_name="Microsoft", email="r@microsoft.test",
                                        report_id=f"ms-{day}", domain="dash.test",
                                        begin=begin, end=begin + timedelta(days=1),
                                        policy={"p": "none"}, rows=rows))
    wait_until(lambda: len(inst.query("SELECT 1 FROM dmarc_results")) >= 8, timeout=30)
    return inst, base


def screenshot(browser: Any, name: str, *, dark: bool = False) -> None:
    """The page as a test artifact; ``dark``: with prefers-color-scheme: dark."""
    if not dark:
        save_screenshot(browser, name)
        return
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    try:
        save_screenshot(browser, f"{name}-dark")
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


def _text(browser: Any) -> str:
    return str(browser.find_element(By.TAG_NAME, "main").text)


def test_the_dashboard_shows_sources_rates_and_verdicts_in_chromium(
        mail: tuple[Instance, str], browser: Any) -> None:
    _inst, base = mail
    browser.get(f"{base}/dmarc")
    wait_until(lambda: "/login" in browser.current_url, timeout=10)
    browser.find_element(By.ID, "address").send_keys(ADMIN)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, ".login button[type=submit]").click()
    wait_until(lambda: browser.current_url == f"{base}/dmarc", timeout=10)
    listed = _text(browser)
    for domain in ("dash.test", "good.test", "mixed.test", "forged.test"):
        assert domain in listed
    screenshot(browser, "dmarc-index")

    # the picker (a GET form): a sender domain over the last 24 hours
    field = browser.find_element(By.ID, "dmarc-domain")
    field.clear()
    field.send_keys("mixed.test")
    browser.find_element(By.CSS_SELECTOR, "input[name=range][value='24h']").click()
    browser.find_element(By.CSS_SELECTOR, ".dmarc-picker button[type=submit]").click()
    wait_until(lambda: browser.current_url == f"{base}/dmarc/mixed.test?range=24h", timeout=10)
    page = _text(browser)
    assert GOOD_IP in page and BAD_IP in page
    totals = browser.find_element(By.CSS_SELECTOR, "#dmarc-totals-title + table").text
    assert "seen 4 50.0% 50.0% 0.0%" in totals  # DMARC, aligned SPF, aligned DKIM
    assert "Not ready yet" in page and "only 4 messages were measured" in page
    assert len(browser.find_elements(By.CSS_SELECTOR, "figure.chart-figure svg")) == 3
    failing = browser.find_element(By.ID, "dmarc-failing-title").find_element(
        By.XPATH, "..").text
    assert BAD_IP in failing and GOOD_IP not in failing
    screenshot(browser, "dmarc-sender-mixed")
    screenshot(browser, "dmarc-sender-mixed", dark=True)

    browser.get(f"{base}/dmarc/good.test?range=24h")
    good = browser.find_element(By.CSS_SELECTOR, "#dmarc-totals-title + table").text
    assert "seen 3 100.0% 100.0% 100.0%" in good

    # our domain: the report read from the mailbox and the earlier ones, and a verdict
    browser.get(f"{base}/dmarc/dash.test?range=30d")
    ours = _text(browser)
    assert DASH in ours and "198.51.100.66" in ours
    assert "google.com" in ours and "Microsoft" in ours
    assert "Ready for p=reject" in ours
    record = browser.find_element(By.CSS_SELECTOR, "pre.dmarc-record-next").text
    assert record.startswith('_dmarc.dash.test. IN TXT "v=DMARC1; p=reject')
    screenshot(browser, "dmarc-ours")
    screenshot(browser, "dmarc-ours", dark=True)
    # dark mode changes the charts' colours too (charts.css by prefers-color-scheme)
    line = "return getComputedStyle(document.querySelector('.chart')).color"
    light_colour = browser.execute_script(line)
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    dark_colour = browser.execute_script(line)
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    assert light_colour != dark_colour
    assert csp_violations(browser) == []
