"""What the console end-to-end tests share: a polling reader that checks no
byte is lost, and the RPC helpers around it (create, stats, markers)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import uuid
import xmlrpc.client
from pathlib import Path
from typing import Any

from tests.qemuguest import BANNER, PROMPT, QemuGuest
from tests.serverproc import ServerProcess, wait_for

MiB = 1024 * 1024
DEMO_PROMPT = b"demo# "
# No heartbeat: the guest's output is only what the tests type.
DEMO_ARGV = [
    *[sys.executable, "-m", "vdsmconsole.demoguest", "--fast"],
    *["--heartbeat", "86400"],
]


def config(**console: int | float) -> str:
    """Server configuration: quick reconnects, the demo guest, ``console`` keys."""
    settings = {"reconnect_initial": 0.1, "reconnect_max": 0.5, **console}
    lines = ["[console]"]
    lines += [f"{key} = {value!r}" for key, value in settings.items()]
    lines += ["", "[spawn.commands]", f"demo = {json.dumps(DEMO_ARGV)}", ""]
    return "\n".join(lines)


def ok(reply: Any) -> dict[str, Any]:
    assert reply["status"]["code"] == 0, reply
    return reply


def code(reply: Any) -> int:
    value: int = reply["status"]["code"]
    return value


class ConsoleReader:
    """Follows one console the way a polling client does: consoleRead from an
    offset, then again from ``nextOffset``, checking that nothing is lost."""

    def __init__(self, server: ServerProcess, vm_id: str, start: int = 0) -> None:
        self.proxy = server.rpc()
        self.vm_id = vm_id
        self.start = start
        self.offset = start
        self.data = bytearray()
        self._mark = 0  # expect() searches from here

    def poll(self) -> bytes:
        """Read everything new; return all bytes read so far."""
        while True:
            reply = ok(self.proxy.consoleRead(self.vm_id, self.offset, MiB))
            chunk = reply["data"].data
            assert (reply["offset"], reply["lost"]) == (self.offset, 0), reply
            assert reply["nextOffset"] == self.offset + len(chunk)
            if not chunk:
                return bytes(self.data)
            self.data += chunk
            self.offset = reply["nextOffset"]

    def expect(self, needle: bytes, timeout: float = 30.0) -> int:
        """Wait for ``needle`` past the last match; its end's absolute offset."""

        def found() -> int:
            self.poll()
            return self.data.find(needle, self._mark) + 1

        try:
            index = wait_for(found, timeout, f"{needle!r} on {self.vm_id}") - 1
        except AssertionError as e:
            raise AssertionError(
                f"{e}; the console ends {self.data[-600:]!r}"
            ) from None
        self._mark = index + len(needle)
        return self.start + self._mark


def stats(server: ServerProcess, vm_id: str) -> dict[str, Any]:
    reply = ok(server.rpc().getVmStats(vm_id))
    entry: dict[str, Any] = reply["statsList"][0]
    return entry


def full_status(server: ServerProcess, vm_id: str) -> dict[str, Any]:
    (entry,) = [e for e in ok(server.rpc().list(True))["vmList"] if e["vmId"] == vm_id]
    return entry


def wait_state(
    server: ServerProcess, vm_id: str, state: str, timeout: float = 30.0
) -> None:
    wait_for(
        lambda: stats(server, vm_id)["state"] == state,
        timeout,
        f"{vm_id} to be {state}",
    )


def send(server: ServerProcess, vm_id: str, text: str) -> None:
    reply = ok(server.rpc().consoleWrite(vm_id, xmlrpc.client.Binary(text.encode())))
    assert reply["written"] == len(text.encode())


def qemu_marker(server: ServerProcess, reader: ConsoleReader) -> int:
    """The guest shell computes a marker its input echo cannot contain."""
    token = uuid.uuid4().hex[:12]
    send(server, reader.vm_id, f"echo marker-$((6*7))-{token}\n")
    end = reader.expect(f"marker-42-{token}".encode())
    reader.expect(PROMPT)
    return end


def demo_marker(server: ServerProcess, reader: ConsoleReader) -> bytes:
    """The demo guest's echo command; its output line differs from the input echo."""
    token = uuid.uuid4().hex[:12]
    send(server, reader.vm_id, f"echo said-{token}\r")
    line = f"\r\nsaid-{token}\r\n".encode()
    reader.expect(line)
    reader.expect(DEMO_PROMPT)
    return line


def create(server: ServerProcess, vm_id: str, console: dict[str, Any]) -> None:
    reply = ok(server.rpc().create({"vmId": vm_id, "console": console}))
    assert reply["vmList"][0]["vmId"] == vm_id


def create_demo(server: ServerProcess, vm_id: str) -> ConsoleReader:
    create(server, vm_id, {"type": "spawn", "command": "demo"})
    reader = ConsoleReader(server, vm_id)
    reader.expect(DEMO_PROMPT)
    return reader


def proc_status(pid: int, field: str) -> int:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM), in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert found, text
    return int(found.group(1)) * 1024


def server_pid(server: ServerProcess) -> int:
    assert server.process is not None
    return server.process.pid


def tree(root: Path) -> set[str]:
    """Every path under ``root``, relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def open_files(server: ServerProcess) -> set[str]:
    """What the server process's fds point at."""
    found = set()
    for link in Path(f"/proc/{server_pid(server)}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            found.add(os.readlink(link))
    return found


def disk_use(directory: Path) -> int:
    """Bytes in the log segments of ``directory`` (they may vanish as we look)."""
    total = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.endswith(".log"):
                continue
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def attach_paused_guest(
    server: ServerProcess, guest: QemuGuest, vm_id: str
) -> ConsoleReader:
    """Register a paused guest's console, wait until attached, let it boot."""
    create(server, vm_id, guest.console)
    wait_state(server, vm_id, "connected")
    guest.cont()
    reader = ConsoleReader(server, vm_id)
    reader.expect(BANNER)
    reader.expect(PROMPT)
    return reader
