"""The demo's screen (vdsmconsole/demoscreen.py): a real qemu with only its
BIOS over VNC with a password, or one line saying why there is none."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from tests.tools import require_tool
from tests.tunnelhelp import recv_exactly
from vdsmconsole.demoscreen import DemoScreen, start_demo_screen


def test_without_qemu_one_line_says_why(tmp_path):
    """No qemu on PATH: no screen, and the line names the package."""
    why = start_demo_screen(tmp_path, qemu="no-such-qemu-system")
    assert why == (
        "no graphical console: no-such-qemu-system is not installed "
        "(apt-get install qemu-system-x86)"
    )


def test_a_qemu_that_fails_is_one_line_with_its_reason(tmp_path):
    """A qemu that exits at once: its last line of output is the reason."""
    fake = tmp_path / "fake-qemu"
    fake.write_text("#!/bin/sh\necho 'fake-qemu: -vnc: no such display' >&2\nexit 1\n")
    fake.chmod(0o755)
    workdir = tmp_path / "work"
    workdir.mkdir()
    why = start_demo_screen(workdir, qemu=str(fake))
    assert why == (
        f"no graphical console: {fake} exited: fake-qemu: -vnc: no such display"
    )


@pytest.mark.qemu
def test_the_screen_asks_for_a_password_kept_out_of_sight(tmp_path):
    """qemu's VNC answers on the socket and offers only VNC authentication;
    the password is in a 0600 file, not on qemu's command line; stop()
    ends qemu."""
    require_tool("qemu-system-x86_64", "qemu-system-x86")
    screen = start_demo_screen(tmp_path)
    assert isinstance(screen, DemoScreen), screen
    try:
        endpoint = screen.endpoint
        assert (endpoint.type, endpoint.path) == ("vnc", str(tmp_path / "vnc.sock"))
        secret = tmp_path / "vnc.secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert secret.read_text() == endpoint.password
        cmdline = Path(f"/proc/{screen.process.pid}/cmdline").read_bytes()
        assert endpoint.password.encode() not in cmdline
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(endpoint.path)
            assert recv_exactly(sock, 12) == b"RFB 003.008\n"
            sock.sendall(b"RFB 003.008\n")
            assert recv_exactly(sock, 2) == b"\x01\x02"  # one type: VNC auth
    finally:
        screen.stop()
    assert screen.process.returncode is not None
