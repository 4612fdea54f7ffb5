"""The noVNC page in a real headless Chromium (issue 14): remoteConsole's URL
opens it, it connects to a real qemu guest whose VNC has a password without
asking for one, and its canvas shows the guest's screen."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from tests.browser import browser  # noqa: F401 - the fixture
from tests.pagehelp import canvas_not_flat
from tests.qemugraphics import start_graphics
from tests.serverproc import wait_for
from tests.tools import unavailable
from tests.webtokens import remote_console, web_config

pytestmark = pytest.mark.e2e
ASSETS = Path(__file__).resolve().parent.parent / "web" / "node_modules"


@pytest.mark.qemu
def test_novnc_page_shows_a_password_guest_without_asking(
    server_factory,
    guests,
    browser,  # noqa: F811 - the fixture
    tmp_path,
):
    """remoteConsole answers the noVNC page's URL; opened as it is, the page
    connects to qemu's password-protected VNC without asking for a password,
    its canvas is not one flat colour and fills the window's width; the
    password is in no log."""
    if not (ASSETS / "@novnc/novnc/core/rfb.js").is_file():
        unavailable("browser assets not installed: run tools/assets.sh")
    password = f"pw-{random.randrange(10**9)}"
    guest = start_graphics(guests, vnc="unix", password=password)
    server = server_factory(web_config(ASSETS))
    reply = server.rpc().create({"vmId": "screen", "graphics": guest.graphics})
    assert reply["status"]["code"] == 0, reply
    console = remote_console(server, "screen", "vnc", role="viewer")
    assert console["type"] == "novnc"
    assert "/console/vnc?token=" in console["url"]
    browser.get(console["url"])

    def state() -> dict:
        return browser.execute_script("return window.vncState || {}")

    wait_for(lambda: state().get("connects") == 1, 60, "noVNC to connect")
    wait_for(
        lambda: canvas_not_flat(browser, tmp_path / "canvas.png"),
        150,
        "a canvas that is not one flat colour",
    )
    shown = state()
    assert not shown["credentialsAsked"] and shown["disconnects"] == 0, shown
    # Scaled to the window: the VGA text screen (720x400) fills its width.
    canvas = browser.find_element(By.CSS_SELECTOR, "#screen canvas")
    inner = browser.execute_script("return window.innerWidth")
    assert abs(canvas.size["width"] - inner) <= 2, (canvas.size, inner)
    assert password not in server.log()
    logged = browser.get_log("browser")
    assert not [e["message"] for e in logged if e["level"] == "SEVERE"], logged
