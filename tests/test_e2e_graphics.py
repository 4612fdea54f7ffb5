"""Graphics endpoints against the real server over xmlrpc.client: create,
list(fullStatus), getVmStats with whether each answers, a restart, destroy,
the [sources] policy, and a VNC password that no answer or log ever shows.

The endpoints are stand-ins: a listening TCP socket and a listening unix
socket (the kernel completes a connect to a listening socket without an
accept), and a port held bound but not listening (refused).
"""

from __future__ import annotations

import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import wait_for
from tests.streamhelp import curl_base
from tests.tools import require_tool
from vdsmconsole.core import registryfile
from vdsmconsole.testing import free_port

pytestmark = pytest.mark.e2e

PASSWORD = "Pw-e2e-7f3a9c"  # what must never leave registry.json


@pytest.fixture
def listening() -> Iterator[int]:
    """A TCP port on loopback that something listens on (never accepts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.fixture
def closed() -> Iterator[int]:
    """A TCP port on loopback that nothing listens on: connects are refused."""
    held = free_port()
    with held as port:
        yield port


@pytest.fixture
def unix_listening(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "spice.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        sock.listen(16)
        yield path


def ok(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["status"]["code"] == 0, answer["status"]
    return answer


def answers_of(server: Any, vm_id: str) -> dict[str, bool]:
    [entry] = ok(server.rpc().list(True, [vm_id]))["vmList"]
    return {e["type"]: e["answers"] for e in entry["graphics"]}


def test_graphics_created_listed_probed_restored_destroyed(
    server_factory: Any, listening: int, closed: int, unix_listening: str
) -> None:
    """A graphics-only VM: list(fullStatus) and getVmStats show its endpoints
    without the password, answers true for a listening server (TCP and unix)
    and false for a closed port; a restart keeps them; destroy removes them."""
    server = server_factory()
    graphics = [
        {"type": "vnc", "host": "127.0.0.1", "port": listening, "password": PASSWORD},
        {"type": "spice", "path": unix_listening},
        {"type": "rdp", "host": "127.0.0.1", "port": closed},
    ]
    shown = [
        {"type": "vnc", "host": "127.0.0.1", "port": listening},
        {"type": "spice", "path": unix_listening},
        {"type": "rdp", "host": "127.0.0.1", "port": closed},
    ]
    created = ok(server.rpc().create({"vmId": "gfx", "graphics": graphics}))
    assert [e["vmId"] for e in created["vmList"]] == ["gfx"]
    want = {"vnc": True, "spice": True, "rdp": False}
    wait_for(lambda: answers_of(server, "gfx") == want, 10, "probe answers")

    [entry] = ok(server.rpc().list(True))["vmList"]
    assert entry == {
        "vmId": "gfx",
        "status": "up",
        "graphics": [dict(s, answers=want[s["type"]]) for s in shown],
    }
    assert ok(server.rpc().list())["vmList"] == [{"vmId": "gfx", "status": "up"}]
    [stats] = ok(server.rpc().getVmStats("gfx"))["statsList"]
    assert stats == {"vmId": "gfx", "state": "up", "graphics": entry["graphics"]}
    assert ok(server.rpc().getAllVmStats())["statsList"] == [stats]
    # No serial console: console calls say so (104), not "no such VM".
    assert server.rpc().consoleRead("gfx")["status"]["code"] == 104
    registry = server.state_dir / "registry.json"
    journal = server.state_dir / "registry.journal"  # the create's line
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    server.stop()
    assert stat.S_IMODE(registry.stat().st_mode) == 0o600  # compacted at stop

    again = server_factory()  # same workdir: state, PKI, config
    wait_for(lambda: answers_of(again, "gfx") == want, 10, "answers after restart")
    [entry] = ok(again.rpc().list(True))["vmList"]
    assert [
        {k: v for k, v in e.items() if k != "answers"} for e in entry["graphics"]
    ] == shown
    ok(again.rpc().destroy("gfx"))
    assert ok(again.rpc().list())["vmList"] == []
    assert again.rpc().getVmStats("gfx")["status"]["code"] == 1
    state = registryfile.read(registry)
    assert state is not None and "gfx" not in str(state.as_json())


def test_a_vm_with_console_and_graphics(server_factory: Any, listening: int) -> None:
    """A VM with both: the console's status and facts, plus its graphics;
    a console-only VM shows an empty graphics list."""
    server = server_factory()
    console = {"type": "tcp", "host": "127.0.0.1", "port": listening}
    vnc = {"type": "vnc", "host": "127.0.0.1", "port": listening}
    ok(server.rpc().create({"vmId": "both", "console": console, "graphics": [vnc]}))
    ok(server.rpc().create({"vmId": "plain", "console": console}))
    wait_for(lambda: answers_of(server, "both") == {"vnc": True}, 10, "probe")
    full = {e["vmId"]: e for e in ok(server.rpc().list(True))["vmList"]}
    assert full["both"]["console"] == console and full["plain"]["graphics"] == []
    [stats] = ok(server.rpc().getVmStats("both"))["statsList"]
    assert stats["graphics"] == [dict(vnc, answers=True)] and "bytesIn" in stats


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"vmId": "x"}, 11),  # neither console nor graphics
        ({"vmId": "x", "graphics": []}, 11),
        ({"vmId": "x", "graphics": [{"type": "telnet", "host": "h", "port": 1}]}, 11),
        ({"vmId": "x", "graphics": [{"type": "vnc", "path": "rel.sock"}]}, 11),
        ({"vmId": "x", "graphics": [{"type": "rdp", "host": "h", "port": 0}]}, 11),
        (
            {
                "vmId": "x",
                "graphics": [
                    {"type": "vnc", "host": "127.0.0.1", "port": 5901},
                    {"type": "vnc", "host": "127.0.0.1", "port": 5902},
                ],
            },
            11,
        ),
        (
            {
                "vmId": "x",
                "graphics": [
                    {"type": "spice", "host": "127.0.0.1", "port": 1, "password": "p"}
                ],
            },
            11,
        ),
        (
            {
                "vmId": "x",
                "graphics": [
                    {"type": "vnc", "path": "/a.sock", "host": "127.0.0.1", "port": 1}
                ],
            },
            11,
        ),
        # [sources]: loopback TCP only; libvirt's own socket is not a guest's.
        (
            {
                "vmId": "x",
                "graphics": [{"type": "rdp", "host": "10.1.2.3", "port": 3389}],
            },
            103,
        ),
        (
            {
                "vmId": "x",
                "graphics": [{"type": "vnc", "path": "/run/libvirt/libvirt-sock"}],
            },
            103,
        ),
    ],
)
def test_bad_graphics_register_nothing(server: Any, params: dict, code: int) -> None:
    """Malformed graphics are MissParam, disallowed ones notAllowed; nothing
    is registered."""
    answer = server.rpc().create(params)
    assert answer["status"]["code"] == code, answer["status"]
    assert ok(server.rpc().list())["vmList"] == []


def test_the_password_is_never_shown_or_logged(
    server_factory: Any, listening: int
) -> None:
    """The VNC password appears in no RPC answer, no audit record, no server
    log line, also for a refused create: only in the registry's files.  (And
    the probes write no log line each.)"""
    server = server_factory()
    vnc = {"type": "vnc", "host": "127.0.0.1", "port": listening, "password": PASSWORD}
    far = {"type": "vnc", "host": "10.1.2.3", "port": 5900, "password": PASSWORD}
    answers = [
        server.rpc().create({"vmId": "refused", "graphics": [far]}),
        server.rpc().create({"vmId": "gfx", "graphics": [vnc]}),
    ]
    wait_for(lambda: answers_of(server, "gfx") == {"vnc": True}, 10, "probe")
    answers += [
        server.rpc().list(),
        server.rpc().list(True),
        server.rpc().getVmStats("gfx"),
        server.rpc().getAllVmStats(),
    ]
    assert answers[0]["status"]["code"] == 103
    assert [a["status"]["code"] for a in answers[1:]] == [0] * 5
    registry = server.state_dir / "registry.json"
    journal = server.state_dir / "registry.journal"
    assert PASSWORD in journal.read_text()
    server.stop()  # its log is complete; the registry compacted
    assert PASSWORD in registry.read_text()
    again = server_factory()
    answers.append(again.rpc().list(True))
    answers.append(again.rpc().destroy("gfx"))
    again.stop()
    assert PASSWORD not in repr(answers)
    audit = (server.state_dir / "audit.log").read_text()
    assert '"event": "refused"' in audit and '"event": "create"' in audit
    assert PASSWORD not in audit
    assert "vdsmconsole listening" in server.log()
    assert PASSWORD not in server.log()
    assert "graphicsprobe" not in server.log()  # no log line per probe
    unexpected = [
        p
        for p in server.workdir.rglob("*")
        if p.is_file()
        and p not in (registry, journal)
        and PASSWORD.encode() in p.read_bytes()
    ]
    assert unexpected == []


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_a_stream_of_a_graphics_only_vm_says_it_has_no_console(
    server: Any, listening: int, version: str
) -> None:
    """/consoleStream of a graphics-only VM is 404 "no serial console", not
    "does not exist"; an unknown vmId keeps noVM's words."""
    require_tool("curl", "curl")
    vnc = {"type": "vnc", "host": "127.0.0.1", "port": listening}
    ok(server.rpc().create({"vmId": "gfx", "graphics": [vnc]}))
    for vm_id, words in [
        ("gfx", "VM gfx has no serial console"),
        ("nobody", "Virtual machine does not exist: nobody"),
    ]:
        done = subprocess.run(
            [*curl_base(server), version, "-i", server.url(f"/consoleStream/{vm_id}")],
            capture_output=True,
            timeout=30,
            check=True,
        )
        assert done.stdout.split(b" ", 2)[1] == b"404"
        assert done.stdout.rstrip().endswith(words.encode())
