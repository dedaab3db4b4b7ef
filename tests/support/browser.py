"""A real headless Chromium (Debian's chromium through chromium-driver) for console tests,
and screenshots saved as test artifacts.

    def test_page(web: WebServer, browser: Any) -> None:
        browser.get(...)
        save_screenshot(browser, "users")     # -> $POSTROOM_TEST_ARTIFACTS/users.png

Screenshots go to the directory in ``POSTROOM_TEST_ARTIFACTS`` (default ``test-artifacts/``
in the repository, which git ignores); each saved path is printed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module, 1200x900, with the console's log kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(argument)
    options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        yield driver
    finally:
        driver.quit()


def csp_violations(browser: Any) -> list[str]:
    """The Content-Security-Policy refusals in the browser's console since the last call."""
    return [e["message"] for e in browser.get_log("browser")
            if "Content Security Policy" in e["message"] or "Refused to" in e["message"]]


def artifacts_dir() -> Path:
    """POSTROOM_TEST_ARTIFACTS, else test-artifacts/ in the repository (made if missing)."""
    path = Path(os.environ.get("POSTROOM_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_screenshot(browser: Any, name: str) -> Path:
    """The whole page as ``<artifacts>/<name>.png``; prints the path."""
    path = artifacts_dir() / f"{name}.png"
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1200, max(900, min(int(height) + 40, 6000)))
    browser.save_screenshot(str(path))
    browser.set_window_size(1200, 900)
    print(f"screenshot: {path}")
    return path
