"""The qemu test guest works, so end-to-end failures are the server's fault.

These tests talk to the guest's serial console directly (a raw pty, a unix
socket, a tcp socket), without vdsmconsole in between.
"""

from __future__ import annotations

import errno
import gzip
import os
import select
import socket
import time
import tty
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import qemuguest
from tests.qemuguest import (
    BANNER,
    PROMPT,
    QemuGuest,
    QemuGuestError,
    QemuGuestPool,
    qemu_guest_pool,
)
from tests.tools import unavailable


class Console:
    """A raw byte stream to a guest console with an expect() that has a deadline."""

    def __init__(self, fd: int, sock: socket.socket | None = None) -> None:
        self.fd = fd
        self._sock = sock  # the socket owning fd, if any
        self.buffer = b""

    @classmethod
    def attach(cls, guest: QemuGuest) -> Console:
        console = guest.console
        if console["type"] == "pty":
            fd = os.open(console["path"], os.O_RDWR | os.O_NOCTTY)
            tty.setraw(fd)  # as the server does: no echo, no line discipline
            return cls(fd)
        if console["type"] == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(console["path"])
        else:
            sock = socket.create_connection((console["host"], console["port"]), 10)
        return cls(sock.fileno(), sock)

    def send(self, data: bytes) -> None:
        while data:
            data = data[os.write(self.fd, data) :]

    def expect(self, needle: bytes, timeout: float = 30.0) -> bytes:
        """Read until ``needle``; return everything up to and including it."""
        deadline = time.monotonic() + timeout
        while needle not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {needle!r} within {timeout}s: {self.buffer!r}"
                )
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError as e:
                    if e.errno != errno.EIO:  # EIO: the pty's other end is gone
                        raise
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"EOF before {needle!r}: {self.buffer!r}")
                self.buffer += chunk
        end = self.buffer.index(needle) + len(needle)
        seen, self.buffer = self.buffer[:end], self.buffer[end:]
        return seen

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        else:
            os.close(self.fd)


@pytest.fixture
def guests(tmp_path: Path) -> Iterator[QemuGuestPool]:
    """Guests for one test, all stopped at teardown."""
    yield from qemu_guest_pool(tmp_path)


def run_marker(console: Console) -> None:
    """Make the guest shell compute something the input echo cannot contain."""
    token = uuid.uuid4().hex[:12]
    console.send(f"echo marker-$((6*7))-{token}\n".encode())
    console.expect(f"marker-42-{token}\r\n".encode(), timeout=10)
    console.expect(PROMPT, timeout=10)


@pytest.mark.qemu
@pytest.mark.parametrize("kind", ["pty", "unix", "tcp"])
def test_boot_paused_then_shell(guests: QemuGuestPool, kind: str) -> None:
    """A paused guest loses nothing: banner, prompt and a shell command arrive."""
    guest = guests.start(kind, paused=True)
    assert guest.pid is not None
    console = Console.attach(guest)
    try:
        started = time.monotonic()
        guest.cont()
        console.expect(BANNER)
        console.expect(PROMPT)
        boot = time.monotonic() - started
        run_marker(console)
    finally:
        console.close()
    print(f"{kind}: prompt {boot:.2f}s after cont")


@pytest.mark.qemu
@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_restart_same_endpoint(guests: QemuGuestPool, kind: str) -> None:
    """restart() brings a socket console back on the same path or port."""
    guest = guests.start(kind, paused=True)
    before, first_pid = guest.console, guest.pid
    console = Console.attach(guest)
    guest.cont()
    console.expect(PROMPT)
    guest.restart(paused=True)
    with pytest.raises(AssertionError, match="EOF"):
        console.expect(b"never sent", timeout=10)  # the old connection is gone
    console.close()
    assert guest.console == before and guest.pid != first_pid
    console = Console.attach(guest)
    try:
        guest.cont()
        console.expect(BANNER)
        console.expect(PROMPT)
        run_marker(console)
    finally:
        console.close()


@pytest.mark.qemu
def test_exit_in_guest_ends_qemu(guests: QemuGuestPool) -> None:
    """Typing exit at the guest prompt makes qemu exit, and stop() stays safe."""
    guest = guests.start("unix", paused=True)
    console = Console.attach(guest)
    try:
        guest.cont()
        console.expect(PROMPT)
        console.send(b"exit\n")
        assert guest.wait(timeout=30) == 0
        assert guest.pid is None
    finally:
        console.close()
    guest.stop()
    guest.stop()


@pytest.mark.qemu
def test_stop_kills_running_guest(guests: QemuGuestPool) -> None:
    """stop() ends a running qemu and is idempotent."""
    guest = guests.start("tcp")
    pid = guest.pid
    assert pid is not None
    guest.stop()
    assert guest.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    guest.stop()


def test_initramfs_is_newc_with_init() -> None:
    """The initramfs we write is a gzip'd newc cpio holding /init and busybox."""
    try:
        data = gzip.decompress(qemuguest.build_initramfs())
    except QemuGuestError as e:
        unavailable(str(e))
    assert data.startswith(b"070701")
    for name in (b"init\0", b"bin/busybox\0", b"dev/console\0", b"TRAILER!!!\0"):
        assert name in data
    assert len(data) % 4 == 0


def test_missing_busybox_names_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without /bin/busybox the error tells the operator to install busybox-static."""
    monkeypatch.setattr(qemuguest, "BUSYBOX", tmp_path / "busybox")
    with pytest.raises(QemuGuestError, match="busybox-static"):
        qemuguest.build_initramfs()


def test_cached_image_is_reused(tmp_path: Path) -> None:
    """A cached image is returned as is, without running apt or rebuilding."""
    kernel = tmp_path / "vmlinuz"
    initrd = tmp_path / qemuguest._initrd_name()
    kernel.write_bytes(b"kernel")
    initrd.write_bytes(b"initrd")
    image = qemuguest.ensure_guest_image(tmp_path)
    assert image == qemuguest.GuestImage(kernel, initrd)
    assert kernel.read_bytes() == b"kernel"
    assert initrd.read_bytes() == b"initrd"
