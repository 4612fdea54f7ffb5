"""Issue 13's acceptance for graphical consoles: a real server on loopback
TLS, real qemu guests under TCG with a VGA screen (tests/qemugraphics.py),
the client's ``tunnel`` command, and real viewers: ``vncdo`` (vncdotool)
captures the screen, a SPICE link message gets qemu's own reply.

First the rig itself (the guests' endpoints, without the server), so that a
failure below is the server's or the client's, not the guest's.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clihelp import client_args, run_client
from tests.qemugraphics import GraphicsGuest, start_graphics
from tests.serverproc import wait_for
from tests.tools import unavailable
from tests.tunnelhelp import (
    SPICE_MAGIC,
    TunnelCommand,
    is_flat,
    recv_exactly,
    spice_link_reply,
)

pytestmark = pytest.mark.e2e

BOOTED = b"vdsmconsole-test-guest: booted"


def vncdo() -> str:
    """vncdotool's command, installed with the test extra beside our Python."""
    beside = Path(sys.executable).parent / "vncdo"
    if beside.is_file():
        return str(beside)
    found = shutil.which("vncdo")
    if found:
        return found
    unavailable("vncdo not found: pip install -e '.[test]' (vncdotool)")


def capture(port: int, png: Path, seconds: float = 30) -> bool:
    """``vncdo -s 127.0.0.1::PORT capture PNG``, with no password given (and
    nothing on its standard input to give one); False when it did not finish
    in ``seconds`` (a TCG guest on a loaded machine answers slowly), and a
    failure when vncdo failed."""
    argv = [vncdo(), "-t", str(int(seconds)), "-s", f"127.0.0.1::{port}"]
    try:
        done = subprocess.run(
            [*argv, "capture", str(png)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=seconds + 15,
        )
    except subprocess.TimeoutExpired:
        return False
    assert done.returncode == 0, f"vncdo: {done.stdout}{done.stderr}"
    return True


def capture_not_flat(port: int, png: Path, timeout: float = 150) -> Path:
    """Capture until the screen shows something (the guest draws its text
    within a second or two of starting); fail after ``timeout``."""
    wait_for(
        lambda: capture(port, png) and not is_flat(png),
        timeout,
        "a screen that is not one flat colour",
    )
    return png


def rfb_security_types(sock: socket.socket) -> list[int]:
    """An RFB 3.8 viewer's first steps: the security types offered."""
    version = recv_exactly(sock, 12)
    assert re.fullmatch(rb"RFB \d{3}\.\d{3}\n", version), version
    sock.sendall(b"RFB 003.008\n")
    (count,) = recv_exactly(sock, 1)
    assert count, "the server refused the connection"
    return list(recv_exactly(sock, count))


@pytest.fixture
def tunnels(tmp_path, pki) -> Iterator:
    """Start ``tunnel`` commands; each is killed by pid at the end."""
    started: list[TunnelCommand] = []

    def start(server, vm_id: str, protocol: str, *extra: str) -> int:
        tunnel = TunnelCommand(
            server.port, pki.root, tmp_path / "tunnels", vm_id, protocol, *extra
        )
        started.append(tunnel)
        return wait_for(tunnel.listening, 30, "the tunnel's listening line")

    yield start
    for tunnel in started:
        tunnel.stop()


def create(server, vm_id: str, guest: GraphicsGuest, serial: bool) -> None:
    spec = {"vmId": vm_id, "graphics": guest.graphics}
    if serial:
        spec["console"] = guest.console
    result = server.rpc().create(spec)
    assert result["status"]["code"] == 0, result


def wait_booted(server, vm_id: str) -> None:
    """Until the guest's banner is on its serial console (one connection for
    all the polls: no TLS handshake each time on a loaded machine)."""
    with server.rpc() as proxy:

        def booted() -> bool:
            result = proxy.consoleRead(vm_id, 0, 1024 * 1024)
            return BOOTED in result["data"].data

        wait_for(booted, 60, "the guest to boot")


# -- the rig -------------------------------------------------------------------


@pytest.mark.qemu
def test_the_rigs_endpoints_answer_as_qemu_does(guests, tmp_path):
    """The guests' own endpoints, no server between: the unix VNC with a
    password offers only VNC authentication; the TCP VNC shows the screen
    to vncdo; SPICE answers a link message with REDQ 2.2."""
    locked = start_graphics(guests, vnc="unix", password="s3cret!")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(locked.vnc_path))
        assert rfb_security_types(sock) == [2]
    screen = start_graphics(guests, vnc="tcp", spice=True)
    capture_not_flat(screen.vnc_port, tmp_path / "direct.png")
    with socket.create_connection(("127.0.0.1", screen.spice_port), 30) as sock:
        assert spice_link_reply(sock)[:3] == (SPICE_MAGIC, 2, 2)
    assert "s3cret!" not in " ".join(locked.argv())


# -- through the server --------------------------------------------------------


@pytest.mark.qemu
def test_vnc_with_a_password_on_a_unix_socket_through_the_tunnel(
    server_factory, guests, tunnels, tmp_path
):
    """A guest with -vnc unix:PATH and a password, registered with its serial
    console and graphics: vncdo through the client's tunnel, given no
    password, captures a screen that is not one flat colour; the password is
    in no log."""
    password = "pw-7f3a"
    guest = start_graphics(guests, vnc="unix", password=password)
    server = server_factory()
    create(server, "vncpw", guest, serial=True)
    wait_booted(server, "vncpw")
    port = tunnels(server, "vncpw", "vnc")
    png = capture_not_flat(port, tmp_path / "shot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert password not in server.log()
    stats = server.rpc().getVmStats("vncpw")["statsList"][0]
    assert password not in repr(stats)


@pytest.mark.qemu
def test_vnc_on_tcp_without_a_password_through_the_tunnel(
    server_factory, guests, tunnels, tmp_path
):
    """A graphics-only VM (no serial console) with -vnc 127.0.0.1:N: vncdo
    through the tunnel captures its screen."""
    guest = start_graphics(guests, vnc="tcp")
    server = server_factory()
    create(server, "vnctcp", guest, serial=False)
    port = tunnels(server, "vnctcp", "vnc")
    capture_not_flat(port, tmp_path / "shot.png")


@pytest.mark.qemu
def test_spice_link_message_through_the_tunnel(server_factory, guests, tunnels):
    """A guest with -spice port=N,disable-ticketing=on: a SPICE link message
    through the tunnel gets qemu's link reply (magic REDQ, version 2.2)."""
    guest = start_graphics(guests, spice=True)
    server = server_factory()
    create(server, "spice", guest, serial=False)
    port = tunnels(server, "spice", "spice")
    with socket.create_connection(("127.0.0.1", port), 30) as sock:
        sock.settimeout(30)
        magic, major, minor, size = spice_link_reply(sock)
        assert (magic, major, minor) == (SPICE_MAGIC, 2, 2)
        (error,) = struct.unpack("<I", recv_exactly(sock, size)[:4])
        assert error == 0  # SPICE_LINK_ERR_OK: no ticket asked


class EchoServer:
    """A stand-in RDP endpoint on loopback: every byte back, unchanged, on
    every connection (the server's probe connects too)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)


@pytest.fixture
def rdp() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def test_rdp_bytes_both_ways_and_a_token_for_it(server_factory, rdp, tunnels, pki):
    """An RDP endpoint (a stand-in echo server): the tunnel carries every
    byte value both ways unchanged; remote-console prints a URL and a token
    whose connect info is the endpoint's host and port."""
    server = server_factory()
    spec = {"vmId": "rdp", "graphics": [{"type": "rdp", "host": "127.0.0.1"}]}
    spec["graphics"][0]["port"] = rdp.port
    assert server.rpc().create(spec)["status"]["code"] == 0
    port = tunnels(server, "rdp", "rdp")
    payload = bytes(range(256)) * 256
    with socket.create_connection(("127.0.0.1", port), 30) as sock:
        sock.settimeout(30)
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload

    done = run_client(
        client_args(server, pki, "remote-console", "rdp", "--protocol", "rdp")
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert set(lines) == {"url", "token", "expires"}
    token = lines["token"]
    assert lines["url"] == (
        f"https://127.0.0.1:{server.port}/consoleTunnel/rdp?protocol=rdp&token={token}"
    )
    info = server.rpc().consoleConnectInfo(token)
    assert info["console"]["host"] == "127.0.0.1"
    assert info["console"]["port"] == rdp.port
    assert info["console"]["console_type"] == "rdp"


def test_the_tunnel_command_refuses_what_the_server_refuses(
    server_factory, rdp, tunnels, pki
):
    """An unknown VM ends the command at once (exit 1, one line); a VM
    without that protocol's console too; remote-console for an unknown VM
    exits with the RPC's status, one line."""
    server = server_factory()
    spec = {"vmId": "rdp", "graphics": [{"type": "rdp", "host": "127.0.0.1"}]}
    spec["graphics"][0]["port"] = rdp.port
    assert server.rpc().create(spec)["status"]["code"] == 0
    for vm_id, protocol in (("nosuch", "vnc"), ("rdp", "vnc")):
        done = run_client(
            client_args(server, pki, "tunnel", vm_id, "--protocol", protocol)
        )
        assert done.returncode == 1, done
        assert done.stdout == "" and len(done.stderr.splitlines()) == 1
    done = run_client(
        client_args(server, pki, "remote-console", "nosuch", "--protocol", "vnc")
    )
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done
