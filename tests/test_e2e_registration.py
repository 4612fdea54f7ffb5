"""Registering consoles against the real server: a vmId destroyed and created
again, a socket console before it ever connected, the one wording for a vmId
that has no console, a guest that is slow to stop."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import xmlrpc.client

import pytest

from tests.conftest import require_tool
from tests.hardening import read_until_closed
from tests.serverproc import wait_for
from tests.streamhelp import (
    DEMO_CONFIG,
    console_bytes,
    create_demo,
    curl_base,
    stats,
    tls_socket,
    type_into,
)
from tests.test_e2e_endings import headers_of

pytestmark = pytest.mark.e2e

# Ignores SIGTERM (an ignored signal stays ignored across exec): the server
# kills it after its stop timeout, 5 s.
SLOW_GUEST = """
slow = ["/bin/sh", "-c", "trap '' TERM; echo slow-guest-up; exec sleep 600"]
"""


def marker_line(server, vm_id: str, text: str) -> None:
    type_into(server, vm_id, f"echo {text}\r")
    wait_for(lambda: f"\r\n{text}\r\n".encode() in console_bytes(server, vm_id), 15)


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_a_console_created_again_shows_only_its_own_output(server_factory, version):
    """destroy and create vm1 again: consoleRead, a stream from offset 0 and a
    tail show none of the old guest's output (reported as lost instead), and
    the new offsets start above every old one."""
    require_tool("curl", "curl")
    server = server_factory(DEMO_CONFIG)
    create_demo(server, "vm1")
    marker_line(server, "vm1", "old-guest-said-this")
    old_end = stats(server, "vm1")["nextOffset"]
    assert server.rpc().destroy("vm1")["status"]["code"] == 0
    create_demo(server, "vm1")
    marker_line(server, "vm1", "new-guest-said-this")

    numbers = stats(server, "vm1")
    assert numbers["firstOffset"] == old_end
    reply = server.rpc().consoleRead("vm1", 0, 1 << 20)
    assert (reply["offset"], reply["lost"]) == (old_end, old_end)
    data = reply["data"].data
    assert b"new-guest-said-this" in data and b"old-guest-said-this" not in data
    for query in ("offset=0&follow=0", "tail=100000000&follow=0"):
        url = server.url(f"/consoleStream/vm1?{query}")
        done = subprocess.run(
            [*curl_base(server), version, "-i", url],
            capture_output=True,
            timeout=30,
            check=True,
        )
        assert b"old-guest-said-this" not in done.stdout
        assert b"new-guest-said-this" in done.stdout
        assert f"x-console-offset: {old_end}\r\n".encode() in done.stdout.lower()


def test_a_socket_console_is_connecting_until_it_first_connects(
    server_factory, tmp_path
):
    """A unix console is "connecting" until its first connection, then
    "connected", and "reconnecting" only once it has lost one."""
    server = server_factory(
        "[console]\nreconnect_initial = 0.05\nreconnect_max = 0.2\n"
    )
    path = tmp_path / "guest.sock"
    spec = {"vmId": "vm1", "console": {"type": "unix", "path": str(path)}}
    reply = server.rpc().create(spec)
    assert reply["vmList"][0]["status"] == "connecting"
    wait_for(
        lambda: (
            server.rpc().list(True)["vmList"][0]["source"]["reconnectAttempts"] >= 2
        ),
        10,
        "failed attempts",
    )
    assert stats(server, "vm1")["state"] == "connecting"
    assert server.rpc().list()["vmList"] == [{"vmId": "vm1", "status": "connecting"}]
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        wait_for(lambda: stats(server, "vm1")["state"] == "connected", 10)
        guest, _ = listener.accept()
        guest.close()
    wait_for(lambda: stats(server, "vm1")["state"] == "reconnecting", 10)


def test_a_missing_console_has_one_wording(server_factory):
    """Every RPC and every stream method says "Virtual machine does not exist:
    nope" for a vmId without a console."""
    server = server_factory()
    proxy = server.rpc()
    message = "Virtual machine does not exist: nope"
    for reply in (
        proxy.getVmStats("nope"),
        proxy.destroy("nope"),
        proxy.consoleRead("nope", 0, 10),
        proxy.consoleWrite("nope", xmlrpc.client.Binary(b"x")),
    ):
        assert reply["status"] == {"code": 1, "message": message}
    for method in ("GET", "POST"):
        sock = tls_socket(server)
        sock.sendall(
            f"{method} /consoleStream/nope HTTP/1.1\r\nHost: x\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        answer = read_until_closed(sock)
        assert headers_of(answer)[0] == 404
        assert answer.split(b"\r\n\r\n", 1)[1] == message.encode() + b"\n"


def test_create_waits_until_a_slow_guest_has_stopped(server_factory):
    """destroy of a guest that ignores SIGTERM takes its stop timeout; a create
    of that vmId meanwhile is answered once the old guest is gone, and the
    offset mark never falls below an offset handed out."""
    server = server_factory(DEMO_CONFIG + SLOW_GUEST)
    create_demo(server, "vm1", command="slow")
    wait_for(lambda: b"slow-guest-up" in console_bytes(server, "vm1"), 15, "up")
    old_end = stats(server, "vm1")["nextOffset"]
    (entry,) = server.rpc().list(True)["vmList"]
    pid = entry["source"]["pid"]
    destroyed: list[dict] = []
    destroying = threading.Thread(
        target=lambda: destroyed.append(server.rpc().destroy("vm1")), daemon=True
    )
    destroying.start()
    wait_for(lambda: server.rpc().getVmStats("vm1")["status"]["code"] == 1, 10)

    create_demo(server, "vm1")  # waits for the old guest to be gone
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    destroying.join(15)
    assert destroyed and destroyed[0]["status"]["code"] == 0
    type_into(server, "vm1", "flood 200000\r")
    wait_for(lambda: stats(server, "vm1")["nextOffset"] > old_end + 200_000, 30)
    numbers = stats(server, "vm1")
    assert numbers["firstOffset"] >= old_end
    mark = server.state_dir / "consoles" / "vm1" / "next-offset"
    assert int(mark.read_bytes().split()[0]) >= numbers["nextOffset"]
