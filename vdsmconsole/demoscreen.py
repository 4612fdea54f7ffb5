"""The demo guest's screen: a qemu with only its BIOS, over VNC.

Why: ``vdsmconsole demo`` shows the graphical consoles (a tunnel for a
native viewer, a console token) on a machine with qemu, with nothing to
download: qemu's own SeaBIOS draws its text on a VGA screen and stops at
"No bootable device", so no kernel or disk image is needed.  The screen is
served on a unix socket in the demo's throwaway directory, with a random
VNC password that only the server knows (it completes the VNC
authentication itself): it is read by qemu from a file (mode 0600, not its
command line) and never printed.

Without qemu (or when it does not start) there is no screen, and
``start_demo_screen`` says why in one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vdsmconsole.graphics import GraphicsEndpoint

__all__ = ["QEMU", "DemoScreen", "start_demo_screen"]

QEMU = "qemu-system-x86_64"
START_TIMEOUT = 10.0  # seconds for qemu to open its VNC socket
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGTERM when the demo dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class DemoScreen:
    """A running qemu and the VNC endpoint to register for it."""

    process: subprocess.Popen[bytes]
    endpoint: GraphicsEndpoint

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL after STOP_TIMEOUT; idempotent."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _last_line(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip()[:200] if lines else ""


def start_demo_screen(
    workdir: Path, qemu: str = QEMU, timeout: float = START_TIMEOUT
) -> DemoScreen | str:
    """Start the screen in ``workdir``; or the one line that says why not."""
    binary = shutil.which(qemu)
    if binary is None:
        return (
            f"no graphical console: {qemu} is not installed "
            "(apt-get install qemu-system-x86)"
        )
    # VNC authentication uses 8 bytes of the password.
    password = secrets.token_urlsafe(6)
    secret = workdir / "vnc.secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password)
    path = workdir / "vnc.sock"
    log = workdir / "qemu.log"
    argv = [
        binary,
        "-accel", "tcg",  # KVM is not everywhere; a BIOS needs no speed
        "-display", "none", "-nodefaults", "-no-user-config",
        "-m", "32", "-vga", "std",
        "-object", f"secret,id=vs0,file={secret}",
        "-vnc", f"unix:{path},password-secret=vs0",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # the demo stops it, after the server
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - one ctypes call
        )
    screen = DemoScreen(
        process, GraphicsEndpoint("vnc", path=str(path), password=password)
    )
    deadline = time.monotonic() + timeout
    while not _answers(path):
        if process.poll() is not None:
            reason = _last_line(log) or f"exit status {process.returncode}"
            return f"no graphical console: {qemu} exited: {reason}"
        if time.monotonic() > deadline:
            screen.stop()
            return f"no graphical console: {qemu} did not open {path} in {timeout:g}s"
        time.sleep(
            0.05
        )  # qemu opens its socket within a second; before the reactor runs
    return screen
