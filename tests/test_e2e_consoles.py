"""Guest consoles end to end: the real server, xmlrpc.client, qemu and ptys.

The server runs as a child process (``server_factory``), clients speak
XML-RPC over TLS with the engine's certificate, and the guests are real:
a tiny Linux under qemu with its serial console on a pty, a unix socket or a
TCP socket, or the demo guest the server spawns on a pty of its own.  Every
wait polls with a deadline; deadlines only keep a broken run from hanging,
they never decide whether a test passes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import ssl
import uuid
import warnings
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest

from tests.consolehelp import (
    DEMO_PROMPT,
    ConsoleReader,
    MiB,
    attach_paused_guest,
    code,
    config,
    create,
    create_demo,
    demo_marker,
    disk_use,
    full_status,
    ok,
    open_files,
    proc_status,
    qemu_marker,
    send,
    server_pid,
    stats,
    tree,
    wait_state,
)
from tests.qemuguest import (
    BANNER,
    PROMPT,
    QemuGuestPool,
    require_qemu,
)
from tests.serverproc import (
    ServerProcess,
    client_context,
    wait_for,
    wait_for_progress,
)
from tests.streamhelp import at_prompt
from vdsmconsole.core import registryfile
from vdsmconsole.testing import queued

pytestmark = pytest.mark.e2e


# -- qemu -------------------------------------------------------------------


@pytest.mark.qemu
@pytest.mark.parametrize("kind", ["pty", "unix", "tcp"])
def test_qemu_console_shows_boot_and_answers_input(
    server_factory: Any, guests: QemuGuestPool, kind: str
) -> None:
    """Each chardev kind: attach, boot banner, a command's output, list, stats."""
    require_qemu()
    server = server_factory(config())
    guest = guests.start(kind, paused=True)
    vm_id = f"qemu-{kind}"
    reader = attach_paused_guest(server, guest, vm_id)
    qemu_marker(server, reader)

    entry = full_status(server, vm_id)
    assert entry["status"] == "connected"
    assert entry["console"] == guest.console
    assert entry["source"]["type"] == kind
    assert ok(server.rpc().list())["vmList"] == [{"vmId": vm_id, "status": "connected"}]
    numbers = stats(server, vm_id)
    assert numbers["state"] == "connected"
    assert numbers["bytesIn"] >= reader.offset > 0
    assert numbers["bytesOut"] > 0
    assert numbers["firstOffset"] == 0
    # The banner is at the start: nothing before the console attached was lost.
    assert BANNER in reader.data[:4096]


@pytest.mark.qemu
@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_socket_source_reconnects_and_keeps_offsets(
    server_factory: Any, guests: QemuGuestPool, kind: str
) -> None:
    """qemu restarts: reconnecting, connected, offsets grow, old bytes stay."""
    require_qemu()
    server = server_factory(config())
    guest = guests.start(kind, paused=True)
    vm_id = f"again-{kind}"
    reader = attach_paused_guest(server, guest, vm_id)
    qemu_marker(server, reader)
    before = reader.poll()

    if kind == "unix":
        # Stop, see the state, start again on the same socket path.
        guest.stop()
        wait_state(server, vm_id, "reconnecting")
        assert full_status(server, vm_id)["status"] == "reconnecting"
        guest.start(paused=True)
    else:
        # restart() on the same port: the state change is in the server log.
        guest.restart(paused=True)
    wait_for(
        lambda: full_status(server, vm_id)["source"]["connections"] == 2,
        30,
        "the second connection",
    )
    wait_state(server, vm_id, "connected")
    transitions = re.findall(
        rf"console {vm_id}: (connecting|connected|reconnecting|down) ", server.log()
    )
    assert transitions == ["connecting", "connected", "reconnecting", "connected"]

    guest.cont()
    reboot_at = reader.expect(BANNER)
    assert reboot_at > len(before)  # after everything from the first boot
    reader.expect(PROMPT)
    qemu_marker(server, reader)
    assert ConsoleReader(server, vm_id).poll()[: len(before)] == before
    numbers = stats(server, vm_id)
    assert numbers["firstOffset"] == 0 and numbers["nextOffset"] >= reader.offset


@pytest.mark.qemu
def test_pty_guest_gone_is_down_and_never_reattached(
    server_factory: Any, guests: QemuGuestPool
) -> None:
    """qemu exits: down, still readable, never reattached to a recycled pts."""
    require_qemu()
    server = server_factory(config())
    guest = guests.start("pty", paused=True)
    path = guest.pty_path
    reader = attach_paused_guest(server, guest, "gone")
    qemu_marker(server, reader)
    send(server, "gone", "exit\n")
    assert guest.wait(30) == 0
    wait_state(server, "gone", "down")
    retained = reader.poll()
    assert b"shell exited" in retained
    end = stats(server, "gone")["nextOffset"]
    assert end == len(retained)
    # The server keeps no fd on the old pty.
    assert path not in open_files(server)
    # Writing to a down console is refused (code 100), nothing is sent.
    assert code(server.rpc().consoleWrite("gone", "echo hi\n")) == 100

    opened: list[tuple[int, int]] = []
    try:
        # The kernel hands out the lowest free pty number; keep the others
        # open until ours comes round.
        for _ in range(64):
            master, slave = os.openpty()
            opened.append((master, slave))
            if os.ttyname(slave) == path:
                break
        recycled = [pair for pair in opened if os.ttyname(pair[1]) == path]
        # If the number did not come back (another process took it), every
        # new pty still stands in for "another guest".
        intruders = recycled or opened
        intrusion = b"intruder-" + uuid.uuid4().hex.encode() + b"\n"
        for master, _ in intruders:
            os.write(master, intrusion)
        # Round trips through the server's reactor, then: nobody read them.
        for _ in range(3):
            assert stats(server, "gone")["state"] == "down"
        for _, slave in intruders:
            assert queued(slave) == len(intrusion)
        assert path not in open_files(server)
        if not recycled:
            # Another process holds the number: the fd check above still
            # shows the server cannot hear it.
            warnings.warn(f"{path} was not handed out again", stacklevel=1)
    finally:
        for pair in opened:
            for fd in pair:
                os.close(fd)
    after = ConsoleReader(server, "gone").poll()
    assert after == retained and intrusion not in after
    assert stats(server, "gone")["nextOffset"] == end
    assert full_status(server, "gone")["console"] == {"type": "pty", "path": path}


# -- the registry and the log across restarts --------------------------------


def test_server_restart_restores_registry_and_old_bytes(server_factory: Any) -> None:
    """After a restart the consoles are back and old offsets return the same bytes."""
    server = server_factory(config())
    reader = create_demo(server, "kept")
    line = demo_marker(server, reader)
    before = reader.poll()
    registry = registryfile.read(server.state_dir / "registry.json")
    assert registry is not None
    server.stop()

    again = server_factory(config())  # same workdir: state, PKI, config
    assert again.state_dir == server.state_dir
    assert ok(again.rpc().list())["vmList"][0]["vmId"] == "kept"
    # The clean stop left all of it in registry.json, the journal empty.
    assert (again.state_dir / "registry.journal").read_bytes() == b""
    snapshot = (again.state_dir / "registry.json").read_text()
    assert json.loads(snapshot) == registry.as_json()
    old = ConsoleReader(again, "kept")
    assert old.poll()[: len(before)] == before
    assert line in old.data[: len(before)]
    # The demo guest runs again; its new output continues the offsets.
    resumed = ConsoleReader(again, "kept", start=len(before))
    resumed.expect(DEMO_PROMPT)
    assert stats(again, "kept")["firstOffset"] == 0
    demo_marker(again, resumed)


def test_log_disk_use_is_bounded_and_loss_is_exact(server_factory: Any) -> None:
    """After 5x the log limit the disk use is bounded and loss is exact."""
    file_bytes, keep = 64 * 1024, 2
    limit = (keep + 1) * file_bytes
    server = server_factory(
        config(ring_bytes=16 * 1024, log_file_bytes=file_bytes, log_keep_files=keep)
    )
    create_demo(server, "flood")
    logdir = server.state_dir / "consoles" / "flood"
    start = stats(server, "flood")["nextOffset"]
    send(server, "flood", f"flood {5 * limit}\r")
    most = 0

    def flooded() -> bool:
        nonlocal most
        most = max(most, disk_use(logdir))
        return stats(server, "flood")["nextOffset"] >= start + 5 * limit

    wait_for(flooded, 60, "the flood")
    # Its last lines and the prompt may still be coming: the figures below
    # hold once the console is still (a rotation would move firstOffset).
    wait_for(lambda: at_prompt(server, "flood"), 60, "the flood to finish")
    segments = list(logdir.glob("*.log"))
    assert len(segments) <= keep + 1
    # Besides the segments, only the console's small offset mark.
    assert {p.name for p in logdir.iterdir()} - {p.name for p in segments} == {
        "next-offset"
    }
    assert (logdir / "next-offset").stat().st_size < 100
    assert most <= limit
    assert disk_use(logdir) <= limit

    first = stats(server, "flood")["firstOffset"]
    assert first > start
    for asked in (0, first // 2, first - 1):
        reply = ok(server.rpc().consoleRead("flood", asked, 4096))
        assert reply["offset"] == first, reply
        assert reply["lost"] == first - asked
    # What is retained is whole: the flood's numbered lines follow each other.
    kept = ConsoleReader(server, "flood", start=first).poll()
    numbers = [int(n) for n in re.findall(rb"(\d{8}) [0-9A-Za-z]{69}\r\n", kept)]
    assert len(numbers) > (limit - file_bytes) // 80
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))


# -- a follower that never reads ---------------------------------------------


def stalled_follower(server: ServerProcess, vm_id: str) -> ssl.SSLSocket:
    """A TLS client that asks to follow the console and then never reads."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    tls = client_context(server.pki).wrap_socket(raw, server_hostname="localhost")
    tls.sendall(
        f"GET /consoleStream/{vm_id} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    )
    return tls


def test_never_reading_follower_does_not_hold_back_50mb(server_factory: Any) -> None:
    """A never-reading follower: 50 MB still flow, the server's memory bounded."""
    total = 50 * MiB
    server = server_factory(
        config(ring_bytes=4 * MiB, log_file_bytes=8 * MiB, log_keep_files=1)
    )
    create_demo(server, "big")
    pid = server_pid(server)
    with contextlib.closing(stalled_follower(server, "big")):
        wait_for(lambda: stats(server, "big")["readers"] == 1, 10, "the follower")
        baseline = proc_status(pid, "VmRSS")
        start = stats(server, "big")["nextOffset"]
        send(server, "big", f"flood {total}\r")
        # Its speed is the machine's load: wait while the console grows.
        wait_for_progress(
            lambda: stats(server, "big")["nextOffset"] >= start + total,
            lambda: stats(server, "big")["nextOffset"],
            60,
            "50 MB through the console",
        )
        reader = ConsoleReader(server, "big", start=start + total)
        reader.expect(DEMO_PROMPT)  # the guest was never held back
        numbers = stats(server, "big")
        assert numbers["readers"] == 1  # still attached, never read
        assert numbers["bytesIn"] >= total
        # The peak against the resident size before the flood.  A server
        # that buffered the flood for the stalled client would grow by 50 MiB
        # or more; this one may hold the ring (4 MiB) and a little more.
        growth = proc_status(pid, "VmHWM") - baseline
        assert growth < 24 * MiB, f"the server grew by {growth / MiB:.1f} MiB"


# -- bad input ----------------------------------------------------------------

BAD_VM_IDS = ["../etc", "a" * 65, "", "-leading-dash", "a/b", "a b"]
BAD_CONSOLES: list[Any] = [
    {"type": "unix"},
    {"type": "unix", "path": ""},
    {"type": "pty", "path": "dev/pts/3"},
    {"type": "unix", "path": "relative.sock"},
    {"type": "vnc", "path": "/x"},
    {"path": "/x"},
    {"type": "tcp", "host": "127.0.0.1", "port": 0},
    {"type": "tcp", "host": "127.0.0.1", "port": 70000},
    {"type": "tcp", "host": "127.0.0.1", "port": "x"},
    {"type": "tcp", "host": "127.0.0.1"},
    {"type": "tcp", "port": 22},
    {"type": "spawn", "command": "not-configured"},
    {"type": "spawn", "command": ["/bin/sh", "-c", "id"]},
    {"type": "spawn"},
    "unix:/x",
]


def test_bad_input_gets_its_code_and_changes_nothing(
    server_factory: Any, tmp_path: Path
) -> None:
    """Codes 1, 4 and 11 for bad input; the registry, file and disk unchanged."""
    server = server_factory(config())
    spec = {"type": "unix", "path": str(tmp_path / "nobody-listens.sock")}
    create(server, "vm-1", spec)
    proxy = server.rpc()
    files = [server.state_dir / n for n in ("registry.json", "registry.journal")]

    def registry() -> list[bytes | None]:
        return [p.read_bytes() if p.exists() else None for p in files]

    snapshot = (registry(), proxy.list(), tree(server.workdir))

    def unchanged() -> None:
        now = (registry(), proxy.list(), tree(server.workdir))
        assert now == snapshot

    for name, args in [
        ("getVmStats", ()),
        ("consoleRead", (0, 10)),
        ("consoleWrite", ("x",)),
        ("destroy", ()),
    ]:
        assert code(getattr(proxy, name)("nobody", *args)) == 1, name
    unchanged()

    duplicate = {"type": "tcp", "host": "127.0.0.1", "port": 4444}
    assert code(proxy.create({"vmId": "vm-1", "console": duplicate})) == 4
    assert full_status(server, "vm-1")["console"] == spec
    unchanged()

    for vm_id in BAD_VM_IDS:
        assert code(proxy.create({"vmId": vm_id, "console": spec})) == 11, vm_id
        assert code(proxy.getVmStats(vm_id)) == 11, vm_id
        assert code(proxy.consoleRead(vm_id, 0, 10)) == 11, vm_id
        assert code(proxy.consoleWrite(vm_id, "x")) == 11, vm_id
        assert code(proxy.destroy(vm_id)) == 11, vm_id
        assert code(proxy.list(False, [vm_id])) == 11, vm_id
    # XML 1.0 cannot carry a NUL at all: such a call cannot be parsed.
    with pytest.raises(xmlrpc.client.Fault):
        proxy.create({"vmId": "a\x00b", "console": spec})
    assert code(proxy.create({"vmId": 42, "console": spec})) == 11
    assert code(proxy.create({"console": spec})) == 11
    assert code(proxy.create("vm-2")) == 11
    assert not (tmp_path / "etc").exists()
    assert not (server.state_dir / "etc").exists()
    unchanged()

    for console in BAD_CONSOLES:
        reply = proxy.create({"vmId": "vm-2", "console": console})
        assert code(reply) == 11, (console, reply)
    assert code(proxy.create({"vmId": "vm-2"})) == 11
    unchanged()

    for offset, max_bytes in [(-1, 10), (0, 0), (0, -5), ("x", 10), (10**9, 10)]:
        assert code(proxy.consoleRead("vm-1", offset, max_bytes)) == 11
    assert code(proxy.consoleWrite("vm-1", 42)) == 11
    unchanged()
    assert "Traceback" not in server.log()


def test_destroy_stops_the_spawned_guest(server_factory: Any) -> None:
    """destroy of a spawn console ends the process the server started for it."""
    server = server_factory(config())
    create_demo(server, "spawned")
    source = full_status(server, "spawned")["source"]
    pid = source["pid"]
    assert source["running"] and pid > 0
    assert b"vdsmconsole.demoguest" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ok(server.rpc().destroy("spawned"))
    # Stopped and reaped before destroy answered: the pid is gone.
    with pytest.raises(OSError) as info:
        Path(f"/proc/{pid}/cmdline").read_bytes()
    assert info.value.errno in (errno.ENOENT, errno.ESRCH)
    assert ok(server.rpc().list())["vmList"] == []
    assert code(server.rpc().getVmStats("spawned")) == 1
