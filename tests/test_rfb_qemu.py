"""VncAuthProxy against a real qemu VNC server with a password.

qemu runs without a guest kernel (SeaBIOS draws the screen) and serves VNC
on a unix socket with ``password-secret``; a plain blocking socket drives
the sans-IO proxy as the tunnel will: the right password gets us to qemu's
ServerInit, a wrong one gets the viewer qemu's reason.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.qemuguest import QEMU, GuestImage, QemuGuest
from tests.tools import require_tool
from vdsmconsole.protocols.rfb import (
    SEC_NONE,
    SEC_VNC_AUTH,
    AuthFailed,
    HandshakeDone,
    VncAuthProxy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.qemu]

PASSWORD = b"s3cr3t!"  # qemu takes at most 8 characters for VNC
V38 = b"RFB 003.008\n"


class VncQemu(QemuGuest):
    """qemu with only a VGA card and a password-protected VNC unix socket.

    Reuses QemuGuest's start (QMP readiness with a deadline) and stop (by
    pid, SIGTERM then SIGKILL); no kernel is booted, so the image is unused.
    The password goes in a 0600 file, not on the command line qemu.log keeps.
    """

    def __init__(self, workdir: Path, password: bytes | None) -> None:
        unused = GuestImage(kernel=Path(os.devnull), initrd=Path(os.devnull))
        super().__init__(unused, "unix", workdir)
        self.vnc_path = self.socket_path.with_name("vnc.sock")
        self.secret_path = self.workdir / "vnc.secret"
        self.password = password
        if password is not None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            with os.fdopen(os.open(self.secret_path, flags, 0o600), "wb") as f:
                f.write(password)

    def argv(self, paused: bool = False) -> list[str]:
        vnc = ["-vnc", f"unix:{self.vnc_path}"]
        if self.password is not None:
            vnc = [
                "-object", f"secret,id=vs0,file={self.secret_path}",
                "-vnc", f"unix:{self.vnc_path},password-secret=vs0",
            ]  # fmt: skip
        return [
            QEMU,
            "-accel", "tcg", "-nodefaults", "-display", "none", "-vga", "std",
            "-m", "32",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            *vnc,
        ]  # fmt: skip


def running(
    tmp_path_factory: pytest.TempPathFactory, password: bytes | None
) -> Iterator[VncQemu]:
    """Fixture body: a VncQemu, stopped by pid at teardown whatever happens."""
    require_tool(QEMU, "qemu-system-x86")
    guest = VncQemu(tmp_path_factory.mktemp("vncqemu"), password)
    try:
        guest.start(timeout=60)
        yield guest
    finally:
        guest.stop()


@pytest.fixture(scope="module")
def vnc_qemu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VncQemu]:
    """One qemu with a VNC password for the module."""
    yield from running(tmp_path_factory, PASSWORD)


@pytest.fixture(scope="module")
def open_vnc_qemu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VncQemu]:
    """One qemu whose VNC server has no password (offers None only)."""
    yield from running(tmp_path_factory, None)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def proxied_handshake(
    path: Path, password: bytes, viewer_version: bytes
) -> tuple[list[object], bytes, socket.socket, VncAuthProxy]:
    """Drive VncAuthProxy between qemu (a real socket) and a scripted viewer
    that answers ``viewer_version``, picks None and sends ClientInit (shared)
    as soon as it is offered None.  Returns (events, bytes the viewer got,
    the socket to qemu)."""
    proxy = VncAuthProxy(password)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)  # the deadline for each read from qemu
    sock.connect(str(path))
    to_viewer = proxy.data_to_viewer()
    assert to_viewer == V38
    proxy.viewer_data(viewer_version)
    events: list[object] = []
    answered = False
    while not (proxy.done or proxy.failed):
        data = sock.recv(4096)
        if data:
            proxy.server_data(data)
        else:
            proxy.server_closed()
        if to_server := proxy.data_to_server():
            sock.sendall(to_server)
        to_viewer += proxy.data_to_viewer()
        offer = (b"\x00\x00\x00\x01",) if viewer_version == b"RFB 003.003\n" else ()
        if not answered and to_viewer.endswith((b"\x01\x01", *offer)):
            answered = True
            choice = b"" if offer else b"\x01"
            proxy.viewer_data(choice + b"\x01")  # None, then ClientInit
            sock.sendall(proxy.data_to_server())
            to_viewer += proxy.data_to_viewer()
        events += proxy.events()
    return events, to_viewer, sock, proxy


@pytest.mark.parametrize(
    "viewer_version",
    [b"RFB 003.003\n", b"RFB 003.007\n", V38],
    ids=["3.3", "3.7", "3.8"],
)
def test_right_password_reaches_server_init(vnc_qemu, viewer_version):
    """With qemu's password the proxy authenticates (VNC auth, DES), offers
    the viewer None, forwards ClientInit, and qemu's ServerInit follows with
    a sane framebuffer size."""
    events, _, sock, proxy = proxied_handshake(
        vnc_qemu.vnc_path, PASSWORD, viewer_version
    )
    assert proxy.security_type == SEC_VNC_AUTH
    assert_server_init(sock, events)


def test_server_offering_none_only(open_vnc_qemu):
    """qemu without a VNC password offers None only: the proxy, although it
    holds a password, uses None and reaches ServerInit."""
    events, _, sock, proxy = proxied_handshake(open_vnc_qemu.vnc_path, PASSWORD, V38)
    assert proxy.security_type == SEC_NONE
    assert_server_init(sock, events)


def assert_server_init(sock: socket.socket, events: list[object]) -> None:
    with contextlib.closing(sock):
        assert events == [HandshakeDone(b"", b"")]
        width, height = struct.unpack(">HH", recv_exactly(sock, 4))
        pixel_format, name_length = recv_exactly(sock, 16), recv_exactly(sock, 4)
        name = recv_exactly(sock, struct.unpack(">I", name_length)[0])
    assert 0 < width <= 8192 and 0 < height <= 8192, (width, height)
    assert pixel_format[0] in (8, 16, 32)  # bits per pixel
    assert name == b"QEMU"


def test_wrong_password_tells_the_viewer(vnc_qemu):
    """A wrong stored password: qemu refuses it, the viewer gets no security
    types and qemu's reason, AuthFailed is emitted; the password never
    appears in what the viewer got."""
    events, to_viewer, sock, _ = proxied_handshake(vnc_qemu.vnc_path, b"wrong", V38)
    sock.close()
    why = "the VNC server refused the stored VNC password (Authentication failed)"
    assert events == [AuthFailed(why)]
    text = b"vdsmconsole: " + why.encode()
    assert to_viewer == V38 + b"\x00" + struct.pack(">I", len(text)) + text
    assert PASSWORD not in to_viewer and b"wrong" not in to_viewer
