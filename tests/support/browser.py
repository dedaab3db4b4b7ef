"""Headless Chromium for the console's browser tests (Debian's chromium and chromium-driver).

The ``browser`` fixture (one per module) is a selenium WebDriver with the browser log on;
:func:`csp_violations` reads the Content-Security-Policy refusals from it, and
:func:`screenshot` saves a page under ``POSTROOM_TEST_ARTIFACTS`` (default
``test-artifacts/``, ignored by git) for people to look at.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
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
    """The browser log's Content-Security-Policy refusals since the last call."""
    return [e["message"] for e in browser.get_log("browser")
            if "Content Security Policy" in e["message"] or "Refused to" in e["message"]]


def artifacts_dir() -> Path:
    where = Path(os.environ.get("POSTROOM_TEST_ARTIFACTS", "test-artifacts"))
    path = where if where.is_absolute() else REPO_ROOT / where
    path.mkdir(parents=True, exist_ok=True)
    return path


def screenshot(browser: Any, name: str) -> Path:
    """The whole page as ``<artifacts>/<name>.png``; its path."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1200, max(900, min(int(height) + 40, 6000)))
    path = artifacts_dir() / f"{name}.png"
    browser.save_screenshot(str(path))
    return path
