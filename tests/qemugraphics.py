"""The test guest of tests/qemuguest.py with a screen: VGA, and VNC or
SPICE for the tunnels' acceptance tests.

Why: the graphics tunnels exist for real viewers of real qemu displays (a
VNC server that asks for its password, a SPICE server's link reply), and a
stand-in would only answer what its author expected.  The guest is the
same kernel and busybox initramfs; ``console=tty0`` (and no ``quiet``)
puts the kernel's messages on the VGA text screen too, so a capture of it
is never one flat colour, while the shell stays on the serial port.

- ``vnc="unix"``: ``-vnc unix:PATH``, with ``password-secret`` when a
  password is given (qemu then offers only VNC authentication; the secret
  is read from a file, mode 0600, not from the command line);
- ``vnc="tcp"``: ``-vnc 127.0.0.1:N``, no password;
- ``spice=True``: ``-spice port=N,addr=127.0.0.1,disable-ticketing=on``.

``GraphicsGuest.graphics`` is the ``graphics`` list ``create`` takes.
This is a helper module the tests import, not a test file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.qemuguest import GuestImage, QemuGuest, QemuGuestPool, free_tcp_port

VNC_BASE = 5900  # qemu's -vnc HOST:N listens on 5900 + N


def free_vnc_display() -> int:
    """A display number whose port (5900 + N) was free a moment ago."""
    while True:
        port = free_tcp_port()
        if port > VNC_BASE:
            return port - VNC_BASE


class GraphicsGuest(QemuGuest):
    """A ``QemuGuest`` whose VGA screen is served over VNC and/or SPICE."""

    def __init__(
        self,
        image: GuestImage,
        kind: str,
        workdir: Path,
        *,
        vnc: str | None = None,
        password: str = "",
        spice: bool = False,
    ) -> None:
        super().__init__(image, kind, workdir)
        if vnc not in (None, "unix", "tcp"):
            raise ValueError(f"vnc must be unix or tcp, not {vnc!r}")
        if password and vnc != "unix":
            raise ValueError("only the unix VNC endpoint takes a password here")
        self.vnc = vnc
        self.password = password
        self.vnc_path = self.socket_path.parent / "vnc.sock"
        self.vnc_display = free_vnc_display() if vnc == "tcp" else 0
        self.spice_port = free_tcp_port() if spice else 0
        self.secret_path = self.workdir / "vnc.secret"

    @property
    def vnc_port(self) -> int:
        return VNC_BASE + self.vnc_display

    @property
    def graphics(self) -> list[dict[str, Any]]:
        """The endpoints as ``create``'s ``graphics`` takes them."""
        endpoints: list[dict[str, Any]] = []
        if self.vnc == "unix":
            endpoint: dict[str, Any] = {"type": "vnc", "path": str(self.vnc_path)}
            if self.password:
                endpoint["password"] = self.password
            endpoints.append(endpoint)
        elif self.vnc == "tcp":
            endpoints.append(
                {"type": "vnc", "host": "127.0.0.1", "port": self.vnc_port}
            )
        if self.spice_port:
            endpoints.append(
                {"type": "spice", "host": "127.0.0.1", "port": self.spice_port}
            )
        return endpoints

    def argv(self, paused: bool = False) -> list[str]:
        argv = super().argv(paused)
        append = argv.index("-append") + 1
        argv[append] = "console=tty0 console=ttyS0 panic=-1"
        argv += ["-vga", "std"]
        if self.vnc == "unix":
            option = f"unix:{self.vnc_path}"
            if self.password:
                argv += ["-object", f"secret,id=vs0,file={self.secret_path}"]
                option += ",password-secret=vs0"
            argv += ["-vnc", option]
        elif self.vnc == "tcp":
            argv += ["-vnc", f"127.0.0.1:{self.vnc_display}"]
        if self.spice_port:
            argv += [
                "-spice",
                f"port={self.spice_port},addr=127.0.0.1,disable-ticketing=on",
            ]
        return argv

    def start(self, paused: bool = False, timeout: float = 30.0) -> None:
        if self.password:
            fd = os.open(self.secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.password)
        super().start(paused=paused, timeout=timeout)


def start_graphics(
    pool: QemuGuestPool, kind: str = "unix", **graphics: Any
) -> GraphicsGuest:
    """Start a ``GraphicsGuest`` in ``pool`` (which stops it at teardown)."""
    guest = GraphicsGuest(
        pool.image,
        kind,
        pool.workdir / f"guest{len(pool.guests)}-graphics",
        **graphics,
    )
    pool.guests.append(guest)  # before start(): cleanup covers failures
    guest.start()
    return guest
