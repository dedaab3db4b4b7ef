"""Headless Chromium for console tests (Debian's chromium through chromium-driver), and where
their screenshots go.

Screenshots are test artifacts: ``$POSTROOM_TEST_ARTIFACTS`` (default ``test-artifacts/`` at
the repository's top, which git ignores), one PNG per page and colour scheme.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    """The folder screenshots are saved in (made when missing)."""
    folder = Path(os.environ.get("POSTROOM_TEST_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def chromium(width: int = 1280, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium WebDriver that keeps the browser console's log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(argument)
    options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, name: str, *, dark: bool = False) -> Path:
    """The whole page as ``NAME.png`` (``NAME-dark.png`` with prefers-color-scheme: dark)."""
    if dark:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {
            "features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    try:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 1280, "height": min(int(height), 8000), "deviceScaleFactor": 1,
            "mobile": False})
        path = artifacts_dir() / f"{name}{'-dark' if dark else ''}.png"
        driver.save_screenshot(str(path))
        return path
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        if dark:
            driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


def csp_violations(driver: Any) -> list[str]:
    """Content-Security-Policy refusals in the browser console since the last call."""
    return [e["message"] for e in driver.get_log("browser")
            if "Content Security Policy" in e["message"] or "Refused to" in e["message"]]
