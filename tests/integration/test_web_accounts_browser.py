"""The account pages in a real headless Chromium: an admin logs in, adds a domain and a user,
an alias and a DKIM key, and sees each DNS record's status (the loopback DNS server
publishing some of them right, one wrong, the rest not at all). Every page is saved as a
screenshot (tests/support/browser.py: $POSTROOM_TEST_ARTIFACTS, default test-artifacts/)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from postroom.store import dkim, users
from tests.support.browser import csp_violations, save_screenshot
from tests.support.dns import DNSServer
from tests.support.redisdb import wait_until
from tests.support.web import HOSTNAME, PASSWORD, WebServer

pytestmark = pytest.mark.slow


def _status(browser: Any, kind: str) -> str:
    """The status badge of the DNS table's row for ``kind`` (MX, SPF, DKIM, ...); "" while
    the page is being replaced (a polled check sees the next page on its next try)."""
    try:
        for row in browser.find_elements(By.CSS_SELECTOR, "table.records tbody tr"):
            if row.find_element(By.TAG_NAME, "strong").text == kind:
                return str(row.find_element(By.CSS_SELECTOR, ".badge").text)
    except StaleElementReferenceException:
        return ""
    raise AssertionError(f"no {kind} row")


def _submit(browser: Any, form: Any, *, accept: bool = True) -> None:
    asks = form.get_attribute("data-confirm")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    if asks:
        wait_until(lambda: _alert(browser) is not None, timeout=5)
        alert = browser.switch_to.alert
        alert.accept() if accept else alert.dismiss()


def _alert(browser: Any) -> Any:
    try:
        return browser.switch_to.alert
    except NoAlertPresentException:
        return None


def test_an_admin_adds_a_domain_and_a_user_and_sees_the_dns_status(
        web: WebServer, browser: Any, dns_server: DNSServer) -> None:
    base = f"http://{web.host}:{web.port}"
    domain = f"shop-{secrets.token_hex(3)}.test"
    browser.get(f"{base}/login")
    browser.find_element(By.ID, "address").send_keys(web.admin)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, ".login button[type=submit]").click()
    wait_until(lambda: browser.current_url == f"{base}/", timeout=10)

    # a domain, with the form of the domains page
    browser.get(f"{base}/domains")
    browser.find_element(By.ID, "name").send_keys(domain)
    browser.find_element(By.CSS_SELECTOR, "form.inline button[type=submit]").click()
    wait_until(lambda: f"Domain {domain} added." in browser.page_source, timeout=10)
    save_screenshot(browser, "accounts-domains")

    # a user, with the users page's form
    browser.get(f"{base}/users?domain={domain}")
    browser.find_element(By.CSS_SELECTOR, "details.add summary").click()
    browser.find_element(By.ID, "localpart").send_keys("hanna")
    Select(browser.find_element(By.ID, "new-domain")).select_by_value(domain)
    browser.find_element(By.ID, "password").send_keys("a long enough passphrase 7")
    browser.find_element(By.ID, "quota").send_keys("2G")
    browser.find_element(By.CSS_SELECTOR, "details.add button[type=submit]").click()
    wait_until(lambda: browser.current_url == f"{base}/users/hanna@{domain}", timeout=10)
    assert "User hanna@" in browser.page_source
    assert web.db.run_sync(users.get_user, f"hanna@{domain}").quota_bytes == 2 << 30
    save_screenshot(browser, "accounts-user")
    browser.get(f"{base}/users?domain={domain}")
    assert f"hanna@{domain}" in browser.page_source
    save_screenshot(browser, "accounts-users")

    # an alias
    browser.get(f"{base}/aliases?domain={domain}")
    browser.find_element(By.ID, "source").send_keys("sales")
    browser.find_element(By.ID, "destination").send_keys(f"hanna@{domain}")
    browser.find_element(By.CSS_SELECTOR, "form[method='post'][action='/aliases'] button").click()
    wait_until(lambda: "Alias sales@" in browser.page_source, timeout=10)
    save_screenshot(browser, "accounts-aliases")

    # a DKIM key
    browser.get(f"{base}/dkim?domain={domain}")
    Select(browser.find_element(By.ID, "algorithm")).select_by_value("ed25519")
    browser.find_element(By.ID, "selector").send_keys("shop1")
    browser.find_element(By.CSS_SELECTOR, f"form[action='/dkim/{domain}/generate'] "
                                          "button").click()
    wait_until(lambda: "New pending key" in browser.page_source, timeout=10)
    assert "badge-pending" in browser.page_source
    save_screenshot(browser, "accounts-dkim")

    # DNS publishes some records right, one wrong and the rest not at all
    dns_server.set_records(domain, "MX", [(10, HOSTNAME)])
    dns_server.set_records(domain, "TXT", ["v=spf1 mx -all"])
    dns_server.set_records(f"_dmarc.{domain}", "TXT", ["v=DMARC1; p=none", "v=DMARC1; p=reject"])
    browser.get(f"{base}/domains")
    browser.find_element(By.LINK_TEXT, domain).click()
    wait_until(lambda: browser.current_url == f"{base}/domains/{domain}", timeout=10)
    assert _status(browser, "MX") == "published" and _status(browser, "SPF") == "published"
    assert _status(browser, "DMARC") == "wrong" and _status(browser, "DKIM") == "missing"
    assert _status(browser, "TLS-RPT") == "missing"
    records = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "pre.copy")]
    assert f"{domain}. IN MX 10 {HOSTNAME}." in records
    save_screenshot(browser, "accounts-domain-dns")

    # the key's record published: "check now" shows it, and the key can be activated
    [key] = web.db.run_sync(dkim.list_keys, domain)
    dns_server.set_records(f"shop1._domainkey.{domain}", "TXT",
                           [f"v=DKIM1; k=ed25519; p={key.public_key_b64}"])
    browser.find_element(By.XPATH, "//button[text()='Check now']").click()
    wait_until(lambda: _status(browser, "DKIM") == "published", timeout=10)
    assert "the key is still pending until it is activated" in browser.page_source
    browser.find_element(By.LINK_TEXT, "activate it").click()
    wait_until(lambda: browser.current_url == f"{base}/dkim?domain={domain}", timeout=10)
    _submit(browser, browser.find_element(
        By.CSS_SELECTOR, f"form[action='/dkim/{domain}/shop1/activate']"))
    wait_until(lambda: "Key shop1 is active" in browser.page_source, timeout=10)
    # the little script asks before retiring; saying no sends nothing
    _submit(browser, browser.find_element(
        By.CSS_SELECTOR, f"form[action='/dkim/{domain}/shop1/retire']"), accept=False)
    assert web.db.run_sync(dkim.list_keys, domain)[0].state == "active"
    assert csp_violations(browser) == []
