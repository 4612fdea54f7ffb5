"""The real server under a stand-in for systemd: NOTIFY_SOCKET receives
READY=1 only once the port accepts connections, STOPPING=1 on SIGTERM, and
WATCHDOG=1 while the reactor runs; contrib/vdsmconsole.service passes
``systemd-analyze verify`` and keeps its hardening score."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.serverproc import wait_for
from vdsmconsole.testing import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "contrib" / "vdsmconsole.service"


@dataclass
class FakeSystemd:
    """A datagram socket as NOTIFY_SOCKET; when READY=1 arrives it connects
    to ``port`` at once and records whether the port accepted."""

    sock: socket.socket
    port: int
    messages: list[bytes] = field(default_factory=list)
    accepted_at_ready: list[bool] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.done.is_set():
            try:
                message = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if b"READY=1" in message.split(b"\n"):
                self.accepted_at_ready.append(connects(self.port))
            self.messages.append(message)

    def lines(self) -> list[bytes]:
        return [line for message in self.messages for line in message.split(b"\n")]


def connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.fixture
def fake_systemd(request, tmp_path, monkeypatch) -> Iterator[FakeSystemd]:
    """systemd's side: NOTIFY_SOCKET (a path, or ``@abstract`` when the test
    is parametrized so) and WATCHDOG_USEC in the server's environment."""
    abstract = getattr(request, "param", False)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"vdsmconsole-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name.encode())
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        path = tmp_path / "notify"
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # WATCHDOG=1 every 0.2 s
    # Held (bound, not listening) until the test ends: nobody else takes it,
    # and a connection to it is refused until the server listens there.
    held = free_port()
    fake = FakeSystemd(sock, held.port)
    thread = threading.Thread(target=fake.run, daemon=True)
    thread.start()
    yield fake
    held.release()
    fake.done.set()
    thread.join(5)
    sock.close()


@pytest.mark.parametrize("fake_systemd", [False, True], indirect=True)
def test_ready_after_listening_stopping_on_sigterm(fake_systemd, server_factory):
    """READY=1 comes once, when a connection to the port succeeds at that very
    moment; the watchdog is fed; SIGTERM sends STOPPING=1 and exits 0."""
    server = server_factory(port=fake_systemd.port)
    wait_for(lambda: fake_systemd.accepted_at_ready, 10, "READY=1")
    assert fake_systemd.accepted_at_ready == [True]
    ready = next(m for m in fake_systemd.messages if m.startswith(b"READY=1"))
    assert f"listening on 127.0.0.1:{server.port}".encode() in ready
    wait_for(lambda: fake_systemd.lines().count(b"WATCHDOG=1") >= 3, 10, "watchdog")
    server.signal(signal.SIGTERM)
    assert server.wait(15) == 0
    wait_for(lambda: b"STOPPING=1" in fake_systemd.lines(), 5, "STOPPING=1")
    lines = fake_systemd.lines()
    assert lines.count(b"READY=1") == 1
    assert lines.index(b"STOPPING=1") > lines.index(b"READY=1")


def unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at the console script installed here
    (verify checks that the command exists and is executable)."""
    script = shutil.which("vdsmconsole") or str(
        Path(sys.executable).parent / "vdsmconsole"
    )
    assert Path(script).is_file(), script
    text = UNIT.read_text()
    assert "ExecStart=/usr/bin/vdsmconsole " in text
    unit = tmp_path / "vdsmconsole.service"
    here = text.replace("ExecStart=/usr/bin/vdsmconsole ", f"ExecStart={script} ")
    unit.write_text(here)
    return unit


systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze"
)


@systemd_analyze
def test_unit_verifies(tmp_path):
    """``systemd-analyze verify`` accepts the unit with no complaint at all
    (an unknown or misspelt key is only a warning: none is allowed)."""
    unit = unit_for_this_machine(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""
    text = UNIT.read_text()
    assert re.search(r"^Type=notify$", text, re.MULTILINE)
    assert re.search(r"^NotifyAccess=main$", text, re.MULTILINE)
    assert re.search(r"^WatchdogSec=\S+$", text, re.MULTILINE)


# The exposure ``systemd-analyze security`` gives the unit (0 best, 10 worst):
# 7.4 before the unit was hardened further; what is left is the root user,
# the network, the guests' ptys and processes that the server must reach
# (see the unit's comments).
EXPOSURE_AT_MOST = 3.0


@systemd_analyze
def test_unit_is_hardened(tmp_path):
    """The unit's exposure stays at or under its recorded level, and it keeps
    the capabilities it needs and no others."""
    unit = unit_for_this_machine(tmp_path)
    result = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            f"--threshold={int(EXPOSURE_AT_MOST * 10)}",
            str(unit),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= EXPOSURE_AT_MOST, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    capabilities = re.search(
        r"^CapabilityBoundingSet=(.*)$", UNIT.read_text(), re.MULTILINE
    )
    assert capabilities
    assert set(capabilities.group(1).split()) == {
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_SYS_PTRACE",
    }
