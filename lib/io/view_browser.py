"""Headless Chromium for the pages' tests (tests/test_view.py) and benchmark (benchmarks/bench_view.py): Debian's
`chromium` driven through its `chromium-driver` by Selenium (a dev dependency), console messages logged."""

from __future__ import annotations

import shutil

from lib.core.errors import UserError

WINDOW = "1400,1000"


def headless_chromium():
    """A Selenium driver of headless Chromium; one UserError line when the distribution's packages are missing."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        raise UserError(
            "headless Chromium needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW}",
    ):
        options.add_argument(arg)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # driver.get_log("browser")
    return webdriver.Chrome(service=Service(driver), options=options)
