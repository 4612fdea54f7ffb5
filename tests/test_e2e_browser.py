"""The serial console page in a real headless Chromium (issue 14), against the
real server, with a token it minted (remoteConsole)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.browser import browser  # noqa: F401 - the fixture
from tests.serverproc import ServerProcess, wait_for
from tests.streamhelp import (
    DEMO_CONFIG,
    PROMPT,
    console_bytes,
    create_demo,
    wget_follow,
)
from tests.tools import unavailable
from tests.webtokens import mint

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "web" / "node_modules"
WEB_LISTENING = re.compile(r"vdsmconsole web listening on [^:\s]+:(\d+)")


@pytest.fixture
def page_server(server_factory) -> tuple[ServerProcess, int, str]:
    if not (ASSETS / "@xterm/xterm/lib/xterm.js").is_file():
        unavailable("browser assets not installed: run tools/assets.sh")
    server = server_factory(
        DEMO_CONFIG + f'\n[web]\nenabled = true\nport = 0\nassets = "{ASSETS}"\n'
    )
    create_demo(server, "vm1")
    port = wait_for(lambda: WEB_LISTENING.search(server.log()), 10, "the web port")
    return server, int(port.group(1)), mint(server, "vm1", role="operator")


def screen_text(driver) -> str:
    rows = driver.find_elements(By.CSS_SELECTOR, ".xterm-rows")
    return rows[0].text if rows else ""


def test_serial_page_shows_the_prompt_types_and_reloads_once(
    browser,  # noqa: F811 - the fixture
    page_server,
    readers,
    tmp_path,
):
    """The page shows the prompt; typed keys come back as output on the page
    and in a wget following the same console; a reload shows the recent
    history again, once."""
    server, port, token = page_server
    url = f"https://127.0.0.1:{port}/console/serial?token={token}"
    browser.get(url)
    wait_for(lambda: "demo#" in screen_text(browser), 20, "the prompt on the page")
    # From offset 0, so that it is following once the prompt has reached it.
    wget = wget_follow(server, "/consoleStream/vm1?offset=0", readers, tmp_path / "w")
    wait_for(lambda: PROMPT in wget.data(), 20, "the prompt in wget")
    text = f"web-{random.randrange(10**9)}"
    browser.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea").send_keys(
        f"echo {text}" + Keys.ENTER
    )
    wait_for(lambda: screen_text(browser).count(text) == 2, 20, "the echo on the page")
    # The guest's output line, not only the echo of what was typed.
    output = f"\r\n{text}\r\n".encode()
    wait_for(lambda: output in wget.data(), 20, "the output in wget")
    assert wget.running(), "wget stopped following"
    assert output in console_bytes(server, "vm1")
    browser.refresh()
    wait_for(lambda: text in screen_text(browser), 20, "the history after a reload")
    state = browser.execute_script("return window.consoleState")
    assert state["connects"] == 1 and state["lost"] == 0
    assert screen_text(browser).count(text) == 2  # the command and its output
    # Nothing refused by the page's Content-Security-Policy, nothing missing.
    logged = browser.get_log("browser")
    assert not [e["message"] for e in logged if e["level"] == "SEVERE"], logged


def test_serial_page_resumes_across_a_server_restart(
    browser,  # noqa: F811 - the fixture
    page_server,
):
    """Restart the server under an open page: it reconnects from its last
    offset and shows every byte once, none lost, none twice."""
    server, port, token = page_server
    browser.get(f"https://127.0.0.1:{port}/console/serial?token={token}")
    wait_for(lambda: "demo#" in screen_text(browser), 20, "the prompt on the page")
    before = f"before-{random.randrange(10**9)}"
    textarea = browser.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea")
    textarea.send_keys(f"echo {before}" + Keys.ENTER)
    wait_for(lambda: screen_text(browser).count(before) == 2, 20, "the echo")
    server.stop()
    # The same ports again: the page reconnects to the address it came from.
    server.config_text = server.config_text.replace("port = 0", f"port = {port}", 1)
    server.start(port=server.port)

    def state() -> dict:
        return browser.execute_script("return window.consoleState")

    wait_for(lambda: state()["connects"] >= 2, 30, "the page to reconnect")
    after = f"after-{random.randrange(10**9)}"
    wait_for(lambda: b"demo# " in console_bytes(server, "vm1")[-64:], 20, "a prompt")
    textarea.send_keys(f"echo {after}" + Keys.ENTER)
    wait_for(lambda: screen_text(browser).count(after) == 2, 20, "the echo after")
    shown = state()
    assert shown["lost"] == 0
    assert shown["next"] - shown["first"] == shown["bytes"]
    held = console_bytes(server, "vm1", shown["first"], shown["next"])
    assert len(held) == shown["bytes"]
    assert held.count(before.encode()) == 2 and held.count(after.encode()) == 2


def test_serial_page_says_when_the_guest_is_down(
    browser,  # noqa: F811 - the fixture
    page_server,
):
    """A guest that exits: the page keeps its output and says it is down."""
    server, port, token = page_server
    browser.get(f"https://127.0.0.1:{port}/console/serial?token={token}")
    wait_for(lambda: "demo#" in screen_text(browser), 20, "the prompt on the page")
    textarea = browser.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea")
    textarea.send_keys("exit" + Keys.ENTER)
    status = browser.find_element(By.ID, "status")
    wait_for(lambda: "down" in status.text, 20, "the status line")
    # It keeps trying (a guest may come back) and keeps saying so.
    wait_for(
        lambda: browser.execute_script("return window.consoleState.connects") >= 3,
        20,
        "two reconnects",
    )
    assert "down" in status.text
    assert "demo#" in screen_text(browser)
