"""Headless Chromium for the tests that look at a page as a person would (Debian's chromium and
chromium-driver, installed by `.ci/run`; the tests skip where a clone lacks them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def missing_browser() -> str | None:
    """Why a browser test cannot run here, or None: a user's clone may lack all three."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        return f"no {CHROMIUM} or {CHROMEDRIVER}: apt-get install chromium chromium-driver"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed: pip install -e '.[dev]'"
    return None


def chromium():
    """A headless Chromium driven by Selenium, browser console logs kept; call .quit() after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    return driver
