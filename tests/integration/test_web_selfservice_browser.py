"""App passwords and two-factor login end to end: a plain user in real Chromium makes an app
password and turns two-factor login on, logs in again with a TOTP code, and the real imap, pop3
and msa processes (stdlib clients) then refuse the main password and take the app password
until it is revoked in the browser. Screenshots of each self-service page are kept
(POSTROOM_TEST_ARTIFACTS, default test-artifacts/)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from selenium.webdriver.common.by import By

from tests.integration.test_login_limits import imap_login, pop3_login, smtp_login
from tests.support.browser import csp_violations, save_screenshot
from tests.support.redisdb import wait_until
from tests.support.suite import PASSWORD, Running, Suite

pytestmark = pytest.mark.slow

LIMITS = {"POSTROOM_AUTH_FAIL_LIMIT": "1000", "POSTROOM_AUTH_ADDRESS_FAIL_LIMIT": "10000",
          "POSTROOM_AUTH_DELAY_MAX": "0"}
USER = "walter@selfservice.example"
SOURCE = "127.0.0.1"


@pytest.fixture(scope="module")
def services(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Suite, dict[str, Running]]]:
    with Suite(redis_url, Path(tmp_path_factory.mktemp("selfservice"))) as suite:
        started = {name: suite.start(name, wait=False, **LIMITS)
                   for name in ("web", "imap", "pop3", "msa")}
        for running in started.values():
            running.process.wait_healthy(timeout=60)
        suite.add_user(USER)
        yield suite, started


def shoot(browser: Any, name: str) -> None:
    save_screenshot(browser, f"selfservice-{name}")


def fill(browser: Any, field: str, value: str) -> None:
    element = browser.find_element(By.ID, field)
    element.clear()
    element.send_keys(value)


def submit(browser: Any, form_action: str) -> None:
    browser.find_element(By.CSS_SELECTOR,
                         f'form[action="{form_action}"] button[type=submit]').click()


def log_in(browser: Any, base: str, password: str) -> None:
    browser.get(f"{base}/login")
    fill(browser, "address", USER)
    fill(browser, "password", password)
    browser.find_element(By.CSS_SELECTOR, ".login button[type=submit]").click()


def test_app_passwords_and_two_factor_login_through_the_browser_and_mail_clients(
        services: tuple[Suite, dict[str, Running]], browser: Any) -> None:
    _, running = services
    base = f"http://127.0.0.1:{running['web'].port}"
    log_in(browser, base, PASSWORD)
    wait_until(lambda: browser.current_url == f"{base}/account", timeout=10)
    shoot(browser, "account")

    # an app password for this "phone", read off the page (shown once)
    browser.get(f"{base}/account/app-passwords")
    fill(browser, "name", "phone")
    submit(browser, "/account/app-passwords")
    secret = wait_until(lambda: browser.find_elements(By.ID, "app-password-secret"),
                        timeout=10)[0].text.strip()
    assert re.fullmatch(r"[a-z]{4}(-[a-z]{4}){3}", secret), secret
    shoot(browser, "app-passwords")

    # two-factor login on: the code computed from the key the page shows
    browser.get(f"{base}/account/two-factor")
    submit(browser, "/account/two-factor/begin")
    key = wait_until(lambda: browser.find_elements(By.ID, "totp-secret"),
                     timeout=10)[0].get_attribute("data-secret")
    assert browser.find_elements(By.CSS_SELECTOR, ".qr svg")
    shoot(browser, "two-factor-setup")
    fill(browser, "code", pyotp.TOTP(key).now())
    submit(browser, "/account/two-factor/enable")
    codes = wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#recovery-codes li"),
                       timeout=10)
    assert len(codes) == 10, browser.page_source[-3000:]
    shoot(browser, "two-factor-recovery-codes")
    for page in ("password", "vacation", "filters", "sieve"):
        browser.get(f"{base}/account/{page}")
        shoot(browser, page)

    # out, and in again: the password, then a fresh code (a later step than the last one)
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_until(lambda: "/login" in browser.current_url, timeout=10)
    log_in(browser, base, PASSWORD)
    wait_until(lambda: "/login/code" in browser.current_url, timeout=10)
    shoot(browser, "login-code")
    # the enabling code's time step may not log in twice; the next step's code is within
    # the window the server accepts (a phone's clock half a minute ahead)
    fill(browser, "code", pyotp.TOTP(key).at(time.time() + 30))
    browser.find_element(By.CSS_SELECTOR, ".login button[type=submit]").click()
    wait_until(lambda: browser.current_url.rstrip("/").endswith(("/account", base)), timeout=10)
    assert browser.get_cookie("postroom_session") is not None

    # the mail clients: the main password is refused with the reason, the app password works
    imap, pop3, msa = running["imap"], running["pop3"], running["msa"]
    ok, text = imap_login(imap, SOURCE, USER, PASSWORD)
    assert not ok and "app password required" in text, text
    ok, text = pop3_login(pop3, SOURCE, USER, PASSWORD)
    assert not ok and "app password required" in text, text
    ok, text = smtp_login(msa, SOURCE, USER, PASSWORD)
    assert not ok and "password required" in text.lower(), text
    assert imap_login(imap, SOURCE, USER, secret) == (True, "OK")
    assert pop3_login(pop3, SOURCE, USER, secret)[0]
    assert smtp_login(msa, SOURCE, USER, secret)[0]

    # revoked in the browser: IMAP refuses it within seconds (the cached login is dropped)
    browser.get(f"{base}/account/app-passwords")
    assert "127.0.0.1" in browser.page_source  # last used from
    browser.find_element(By.CSS_SELECTOR,
                         'form[action="/account/app-passwords/revoke"] button').click()
    browser.switch_to.alert.accept()
    wait_until(lambda: "revoked" in browser.page_source, timeout=10)
    revoked_at = time.monotonic()
    wait_until(lambda: not imap_login(imap, SOURCE, USER, secret)[0], timeout=10, interval=0.2)
    assert time.monotonic() - revoked_at < 10
    assert not smtp_login(msa, SOURCE, USER, secret)[0]
    assert not pop3_login(pop3, SOURCE, USER, secret)[0]
    shoot(browser, "app-passwords-revoked")
    assert csp_violations(browser) == []
