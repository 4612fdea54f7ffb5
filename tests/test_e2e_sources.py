"""What a console may point at, on the real server: refusals and what is allowed.

The server runs as a child process with the suite's ``[sources]`` (the
defaults plus this interpreter's ptys and sockets under the temporary
directory, tests/serverproc.py) or a section of a test's own.  Each refused
``create`` answers a clear status, registers nothing, never opens or connects
the target, and leaves a ``refused`` line in the audit log.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import ServerProcess, wait_for
from tests.streamhelp import console_bytes
from tests.tools import require_tool
from vdsmconsole.core import registryfile

pytestmark = pytest.mark.e2e

DONE, MISS_PARAM, NOT_ALLOWED = 0, 11, 103
SCRIPT_ARGV = ["script", "-qfec", "tty; exec sleep 100000", "/dev/null"]


def create(server: ServerProcess, vm_id: str, console: dict[str, Any]) -> dict:
    reply: dict = server.rpc().create({"vmId": vm_id, "console": console})
    return reply


def audit(server: ServerProcess, event: str) -> list[dict]:
    path = server.state_dir / "audit.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["event"] == event]


def assert_refused(
    server: ServerProcess, vm_id: str, console: dict[str, Any], code: int, why: str
) -> None:
    """create answers ``code`` with ``why`` in its message; nothing is
    registered; one audit line says who, what and why."""
    before = len(audit(server, "refused"))
    reply = create(server, vm_id, console)
    assert reply["status"]["code"] == code, reply
    assert why in reply["status"]["message"], reply
    assert server.rpc().list()["vmList"] == []
    assert not (server.state_dir / "consoles" / vm_id).exists()
    state = registryfile.read(server.state_dir / "registry.json")
    assert state is None or vm_id not in state.consoles
    entries = audit(server, "refused")
    assert len(entries) == before + 1
    assert entries[-1]["identity"] == "engine"
    assert (entries[-1]["method"], entries[-1]["vmId"]) == ("create", vm_id)
    assert entries[-1]["console"] == console
    assert why in entries[-1]["reason"]


def cooked(path: str) -> bool:
    """Whether a terminal is in its usual line mode (never put in raw mode)."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        lflag = termios.tcgetattr(fd)[3]
    finally:
        os.close(fd)
    return bool(lflag & termios.ICANON) and bool(lflag & termios.ECHO)


@pytest.fixture
def own_pty() -> Iterator[str]:
    """A pty whose master this test process holds (an allowed owner here)."""
    master, slave = os.openpty()
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


@pytest.fixture
def foreign_pty() -> Iterator[str]:
    """A terminal held by ``script`` (a user's session, say): not allowed."""
    require_tool("script", "bsdutils")
    process = subprocess.Popen(
        SCRIPT_ARGV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        path = process.stdout.readline().decode().strip()
        assert path.startswith("/dev/pts/"), path
        yield path
    finally:
        process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def test_tcp_outside_loopback_is_refused(server_factory: Any) -> None:
    """A tcp console to a non-loopback address: 103, nothing registered, audited."""
    server = server_factory()
    for host in ("192.0.2.7", "169.254.169.254", "::ffff:10.0.0.1", "0.0.0.0"):
        console = {"type": "tcp", "host": host, "port": 80}
        assert_refused(server, "far", console, NOT_ALLOWED, "tcp_endpoints")


def test_tcp_port_outside_the_configured_range_is_refused(
    server_factory: Any,
) -> None:
    """With tcp_endpoints narrowed to a port range, loopback's other ports are
    refused and a port in the range is registered."""
    server = server_factory('[sources]\ntcp_endpoints = ["127.0.0.1:4555-4565"]\n')
    console = {"type": "tcp", "host": "127.0.0.1", "port": 22}
    assert_refused(server, "ssh", console, NOT_ALLOWED, "tcp_endpoints")
    allowed = {"type": "tcp", "host": "127.0.0.1", "port": 4560}
    assert create(server, "chardev", allowed)["status"]["code"] == DONE
    assert [e["vmId"] for e in audit(server, "create")] == ["chardev"]


def test_unix_socket_outside_the_allowed_globs_is_refused(
    server_factory: Any, tmp_path: Path
) -> None:
    """A unix socket outside unix_paths, a link from inside to outside them,
    a monitor socket inside them: 103, never connected; one inside: Done."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    server = server_factory(f'[sources]\nunix_paths = ["{allowed}/**"]\n')
    with (
        socket.socket(socket.AF_UNIX) as foreign,
        socket.socket(socket.AF_UNIX) as chardev,
    ):
        target = outside / "service.sock"
        foreign.bind(str(target))
        foreign.listen()
        link = allowed / "innocent.sock"
        link.symlink_to(target)
        for path, why in [
            (str(target), "unix_paths"),
            (str(link), str(target)),
            (str(allowed / "../outside/service.sock"), str(target)),
            ("/var/run/docker.sock", "unix_paths"),
            (str(allowed / "domain-1-vm" / "monitor.sock"), "unix_denied"),
        ]:
            console = {"type": "unix", "path": path}
            assert_refused(server, "sock", console, NOT_ALLOWED, why)
        # Nobody knocked on the socket outside.
        assert select.select([foreign], [], [], 0)[0] == []

        chardev.bind(str(allowed / "console.sock"))
        chardev.listen()
        console = {"type": "unix", "path": str(allowed / "console.sock")}
        assert create(server, "sock", console)["status"]["code"] == DONE
        wait_for(lambda: select.select([chardev], [], [], 0)[0], 10, "connect")


@pytest.mark.parametrize(
    ("kind", "code", "why"),
    [
        ("ptmx", NOT_ALLOWED, "must be /dev/pts/N"),
        ("symlink", NOT_ALLOWED, "symbolic link to /dev/pts/"),
        ("file", NOT_ALLOWED, "must be /dev/pts/N"),
        ("missing", MISS_PARAM, "does not exist"),
    ],
)
def test_pty_that_is_no_guest_pty_is_refused(
    server_factory: Any, own_pty: str, tmp_path: Path, kind: str, code: int, why: str
) -> None:
    """/dev/ptmx, a link to an (allowed) pty, a plain file, a missing pty:
    an error status, nothing registered, audited."""
    link = tmp_path / "console-link"
    link.symlink_to(own_pty)
    plain = tmp_path / "not-a-pty"
    plain.write_text("")
    path = {
        "ptmx": "/dev/ptmx",
        "symlink": str(link),
        "file": str(plain),
        "missing": "/dev/pts/999999",
    }[kind]
    server = server_factory()
    assert_refused(server, "tty", {"type": "pty", "path": path}, code, why)
    assert cooked(own_pty)


def test_pty_held_by_a_process_not_allowed_is_refused_and_left_alone(
    server_factory: Any, foreign_pty: str
) -> None:
    """A terminal whose master ``script`` holds: 103, naming the holder, and
    the terminal is never put in raw mode."""
    server = server_factory()
    assert cooked(foreign_pty)
    console = {"type": "pty", "path": foreign_pty}
    assert_refused(server, "login", console, NOT_ALLOWED, "/usr/bin/script")
    assert cooked(foreign_pty)


def test_pty_held_by_an_allowed_process_is_attached(
    server_factory: Any, own_pty: str
) -> None:
    """A pty this interpreter holds, the interpreter allowed in the suite's
    configuration: Done and connected, in raw mode; a server whose
    [sources] does not name the interpreter refuses the same pty."""
    server = server_factory()
    reply = create(server, "fake", {"type": "pty", "path": own_pty})
    assert reply["status"]["code"] == DONE, reply
    assert reply["vmList"][0]["source"]["ownerPid"] == os.getpid()
    assert not cooked(own_pty)
    assert server.rpc().destroy("fake")["status"]["code"] == DONE

    qemu_only = server_factory("[sources]\n", name="qemu-only")
    console = {"type": "pty", "path": own_pty}
    assert_refused(qemu_only, "fake", console, NOT_ALLOWED, "pty_owners")


def test_pty_of_a_process_a_spawn_console_started_is_allowed(
    server_factory: Any,
) -> None:
    """``script`` run by a spawn console holds a pty: a pty console on it is
    allowed (its holder is the server's own child)."""
    script = require_tool("script", "bsdutils")
    config = f"[spawn.commands]\nnested = {json.dumps([script, *SCRIPT_ARGV[1:]])}\n"
    server = server_factory(config + "[sources]\n")
    assert (
        create(server, "outer", {"type": "spawn", "command": "nested"})["status"][
            "code"
        ]
        == DONE
    )

    def printed() -> str:
        output = console_bytes(server, "outer")
        return output.decode().strip() if output.endswith(b"\n") else ""

    path = wait_for(printed, 10, "the nested pty's name")
    assert path.startswith("/dev/pts/"), path
    reply = create(server, "inner", {"type": "pty", "path": path})
    assert reply["status"]["code"] == DONE, reply


def test_restart_keeps_a_no_longer_allowed_console_down(
    server_factory: Any, tmp_path: Path
) -> None:
    """Restarted with [sources] narrowed: the console is listed down with the
    reason, never connected, and stays in the registry file."""
    with socket.socket(socket.AF_UNIX) as listener:
        path = tmp_path / "chardev.sock"
        listener.bind(str(path))
        listener.listen()
        server = server_factory()
        console = {"type": "unix", "path": str(path)}
        assert create(server, "vm", console)["status"]["code"] == DONE
        wait_for(lambda: select.select([listener], [], [], 0)[0], 10, "connect")
        first, _ = listener.accept()
        server.stop()
        first.close()

        again = server_factory('[sources]\nunix_paths = ["/run/libvirt/qemu/**"]\n')
        (entry,) = again.rpc().list(True)["vmList"]
        assert entry["status"] == "down"
        assert entry["reason"].startswith("not allowed by the configuration: ")
        assert "unix_paths" in entry["reason"]
        assert entry["source"]["lastError"] == entry["reason"]
        assert entry["console"] == console
        assert select.select([listener], [], [], 0)[0] == []
        assert "console vm stays down: not allowed" in again.log()
        registry = json.loads((again.state_dir / "registry.json").read_text())
        assert registry["consoles"] == {"vm": console}
