"""contrib/'s example configuration and scripts, run from anywhere as documented."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.serverproc import wait_for
from tests.streamhelp import DEMO_CONFIG, PROMPT, create_demo
from vdsmconsole.clientcli import UsageError, parse_host_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_CONF = REPO / "contrib" / "vdsmconsole.conf.example"
LIST_CONSOLES = REPO / "contrib" / "examples" / "list_consoles.py"
FOLLOW_CONSOLE = REPO / "contrib" / "examples" / "follow_console.sh"
# A service manager's PATH: no virtual environment on it.
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"


def uncommented_example() -> str:
    """The example configuration with its [spawn.commands] block switched on."""
    return re.sub(
        r"^# (\[spawn\.commands\]|\w+ = \[.*\])$",
        r"\1",
        EXAMPLE_CONF.read_text(),
        flags=re.M,
    )


def test_example_spawn_command_runs_from_anywhere(
    server_factory, tmp_path, monkeypatch
):
    """The example's demo spawn command starts the guest from any directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The server starts outside the repository, with a PATH lacking the venv.
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("PATH", PLAIN_PATH)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv("VDSMCONSOLE_DEMO_FAST", "1")
    server = server_factory(uncommented_example())
    create_demo(server, "demo")  # waits for the demo guest's prompt


def run_list_consoles(*args: str) -> subprocess.CompletedProcess[str]:
    """The example as its docs run it: the script itself, by its path."""
    return subprocess.run(
        [str(LIST_CONSOLES), *args], capture_output=True, text=True, timeout=30
    )


def test_list_consoles_takes_zero_as_this_host(server_factory, pki):
    """``0:PORT`` lists the consoles of this host, as vdsmconsole-client reads it."""
    server = server_factory(DEMO_CONFIG)
    create_demo(server, "vm1")
    listing = run_list_consoles("--pki", str(pki.root), f"0:{server.port}")
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert rows[0] == ["vmId", "status", "type", "source", "nextOffset"]
    assert rows[1][:4] == ["vm1", "connected", "spawn", "demo"]


@pytest.mark.parametrize(
    ("where", "status", "message"),
    [
        ("0:1", 1, "https://localhost:1/RPC2: "),
        ("0:x", 2, "bad port in '0:x'"),
        ("[::1", 2, "bad HOST[:PORT] '[::1'"),
        ("0:99999", 2, "bad HOST[:PORT] '0:99999'"),
    ],
)
def test_list_consoles_errors_are_one_line(pki, where, status, message):
    """Nothing listening or a bad HOST[:PORT]: one line on stderr, no traceback."""
    listing = run_list_consoles("--pki", str(pki.root), where)
    assert listing.returncode == status
    assert listing.stderr.startswith(f"list_consoles.py: {message}")
    assert listing.stderr.count("\n") == 1, listing.stderr


def test_list_consoles_without_certificates_is_one_line(tmp_path):
    """A PKI directory without the certificates: one line naming it."""
    listing = run_list_consoles("--pki", str(tmp_path), "0")
    assert listing.returncode == 2
    assert listing.stderr.startswith(
        f"list_consoles.py: cannot load the certificates from {tmp_path}: "
    )
    assert listing.stderr.count("\n") == 1, listing.stderr


@pytest.mark.parametrize(
    "text",
    ["0", "0:54322", "host1", "host1:1", "[::1]:5", "[::1]", "::1", "", ":5", "a:b"]
    + ["[x", "h:0", "h:65536", "h:+1", "[::1]:x"],
)
def test_list_consoles_reads_host_port_as_the_client_does(text):
    """The example's copy of HOST[:PORT] parsing agrees with vdsmconsole-client's."""
    spec = importlib.util.spec_from_file_location("list_consoles", LIST_CONSOLES)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    try:
        expected = parse_host_port(text)
    except UsageError:
        with pytest.raises(ValueError):
            example.parse_host_port(text)
    else:
        assert example.parse_host_port(text) == expected


def test_follow_console_takes_zero_as_this_host(server_factory, pki, tmp_path):
    """follow_console.sh VMID 0:PORT follows this host's console with wget."""
    require_tool("wget", "wget")
    server = server_factory(DEMO_CONFIG)
    create_demo(server, "vm1")
    out = tmp_path / "follow.out"
    with open(out, "wb") as sink:
        follower = subprocess.Popen(
            [str(FOLLOW_CONSOLE), "vm1", f"0:{server.port}"],
            env=dict(os.environ, PKI=str(pki.root)),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: PROMPT in out.read_bytes(), 15, "the console's prompt")
    finally:
        if follower.poll() is None:
            os.killpg(follower.pid, signal.SIGKILL)
        follower.wait(10)
