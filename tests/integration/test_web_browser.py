"""The console in a real browser (Debian's chromium through chromium-driver, headless):
logging in with the form, the pages render without a single Content-Security-Policy
violation, the cookies are what the server set, and dark mode comes from the one CSS file."""

from __future__ import annotations

from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.support.browser import csp_violations
from tests.support.redisdb import wait_until
from tests.support.web import PASSWORD, WebServer

pytestmark = pytest.mark.slow


def test_an_admin_logs_in_and_browses_without_csp_violations(web: WebServer,
                                                             browser: Any) -> None:
    base = f"http://{web.host}:{web.port}"
    browser.get(f"{base}/domains")
    wait_until(lambda: "/login" in browser.current_url, timeout=10)
    browser.find_element(By.ID, "address").send_keys(web.admin)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, ".login button[type=submit]").click()
    wait_until(lambda: browser.current_url == f"{base}/domains", timeout=10)
    assert web.managed in browser.page_source and web.other in browser.page_source
    session = browser.get_cookie("postroom_session")
    assert session is not None and session["httpOnly"] and session["sameSite"] == "Strict"
    # the stylesheet and the script loaded (no inline anything was needed)
    background = browser.execute_script(
        "return getComputedStyle(document.querySelector('header.top')).display")
    assert background == "flex"
    assert browser.execute_script("return document.scripts.length") == 1
    browser.get(f"{base}/")
    assert "Queues" in browser.page_source
    assert csp_violations(browser) == []


def test_dark_mode_follows_the_system_setting(web: WebServer, browser: Any) -> None:
    base = f"http://{web.host}:{web.port}"
    browser.get(f"{base}/login")
    light = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    dark = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    assert light == "rgb(251, 251, 250)" and dark == "rgb(22, 24, 27)"


def test_a_form_posted_from_another_site_is_refused_in_the_browser(web: WebServer,
                                                                   browser: Any) -> None:
    """A page elsewhere that auto-submits a form to the console: no cookie goes along
    (SameSite=Strict) and the origin check refuses it anyway."""
    target = f"http://{web.host}:{web.port}/domains"
    attack = ("data:text/html,<form id=f method=post action='" + target + "'>"
              "<input name=name value=attack.test><input name=csrf_token value=x></form>"
              "<script>document.getElementById('f').submit()</script>")
    browser.get(attack)
    wait_until(lambda: browser.current_url.startswith("http"), timeout=10)
    assert "attack.test" not in browser.page_source
    client = web.client(bearer=web.admin_token)
    names = [d["name"] for d in client.api("GET", "/domains?limit=500").json()["items"]]
    assert "attack.test" not in names
