"""A headless Chromium from Debian driven by selenium, for the console pages.

The fixture starts ``/usr/bin/chromedriver`` (selenium's Service, no driver
download) and Chromium with ``--headless --no-sandbox`` (root), and stops
both when the test ends, by pid after a deadline if ``quit`` does not.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.tools import require_tool, unavailable

CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[Any]:
    require_tool("chromium", "chromium")
    require_tool("chromedriver", "chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (the test extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1024,768",
    ):
        options.add_argument(flag)
    # The test CA is not in Chromium's store: the page, not the PKI, is tested.
    options.accept_insecure_certs = True
    service = Service(CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        pid = service.process.pid if service.process else None
        try:
            driver.quit()
        finally:
            if pid is not None and service.process.poll() is None:
                os.kill(pid, signal.SIGKILL)
                service.process.wait(10)
