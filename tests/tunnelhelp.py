"""What the tunnel tests share: the client's ``tunnel`` command as a user
runs it, a SPICE link message, and whether a captured screen shows anything.

This is a helper module the tests import, not a test file.
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import subprocess
from pathlib import Path

from tests.clihelp import CLIENT

# "listening on 127.0.0.1:PORT (HINT)", the one line the command prints.
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+) \((.+)\)")


class TunnelCommand:
    """``vdsmconsole-client --pki DIR 127.0.0.1:PORT tunnel VMID --protocol P``
    as a child process; ``stop()`` (the fixture's) kills it by pid."""

    def __init__(
        self,
        server_port: int,
        pki_root: Path,
        workdir: Path,
        vm_id: str,
        protocol: str = "vnc",
        *extra: str,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.out = workdir / f"tunnel-{vm_id}-{protocol}.out"
        self.err = workdir / f"tunnel-{vm_id}-{protocol}.err"
        argv = [*CLIENT, "--pki", str(pki_root), f"127.0.0.1:{server_port}"]
        argv += ["tunnel", vm_id, "--protocol", protocol, *extra]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )

    def listening(self) -> int | None:
        """The local port once the command printed its line (for wait_for)."""
        if self.process.poll() is not None:
            raise AssertionError(
                f"tunnel exited {self.process.returncode}: {self.err.read_text()}"
            )
        found = LISTENING.search(self.out.read_text())
        return int(found.group(1)) if found else None

    def hint(self) -> str:
        found = LISTENING.search(self.out.read_text())
        assert found, self.out.read_text()
        return found.group(2)

    def rss(self) -> int:
        """The command's resident memory, in bytes."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert found, status
        return int(found.group(1)) * 1024

    def interrupt(self, timeout: float = 10) -> int:
        """^C, as a user ends it; its exit status."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"closed after {len(data)} of {size} bytes"
        data += chunk
    return data


# SPICE's link message (spice-protocol's SpiceLinkHeader, then SpiceLinkMess,
# packed, little-endian): magic "REDQ", version 2.2, the size of what
# follows; then connection id 0 (a new session), channel type 1 (main),
# channel id 0, no capabilities, whose offset is the SpiceLinkMess's size.
SPICE_MAGIC = b"REDQ"
SPICE_LINK_MESS = struct.pack("<IBBIII", 0, 1, 0, 0, 0, 18)
SPICE_LINK = struct.pack("<4sIII", SPICE_MAGIC, 2, 2, len(SPICE_LINK_MESS))
SPICE_LINK += SPICE_LINK_MESS


def spice_link_reply(sock: socket.socket) -> tuple[bytes, int, int, int]:
    """Send the link message; the reply's header: magic, major, minor, size."""
    sock.sendall(SPICE_LINK)
    magic, major, minor, size = struct.unpack("<4sIII", recv_exactly(sock, 16))
    return magic, major, minor, size


def is_flat(png: Path) -> bool:
    """Whether every pixel of the image has one colour (Pillow, which
    vncdotool brings, reads it)."""
    from PIL import Image

    with Image.open(png) as image:
        bands = image.convert("RGB").getextrema()
    return all(low == high for low, high in bands)
