"""Serial tunnels and roles, console tokens on tunnels, and the server's own
VNC authentication, on the real port (docs/protocol.rst, "Tunnels")."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import pytest

from tests.connecthelp import StandIn, TunnelSocket, register, tunnel_records
from tests.h2help import issue_client_cert
from tests.rfbhelp import (
    MESSAGES,
    PASSWORD,
    SERVER_INIT,
    SET_ENCODINGS,
    UPDATE_REQUEST,
    open_vnc_server,
    vnc_server,
)
from tests.serverproc import wait_for
from tests.streamhelp import console_bytes, stats

pytestmark = pytest.mark.e2e

ROLES_CONFIG = """
[spawn.commands]
cat = ["/bin/cat"]

[authorization]
"engine" = "admin"
"watcher" = "viewer"
"typist" = "operator"
"""


@pytest.fixture
def roles_server(server_factory, tmp_path):
    """A server with a ``cat`` guest and a viewer and an operator certificate."""
    server = server_factory(ROLES_CONFIG)
    reply = server.rpc().create(
        {"vmId": "cat1", "console": {"type": "spawn", "command": "cat"}}
    )
    assert reply["status"]["code"] == 0, reply
    wait_for(lambda: stats(server, "cat1")["state"] == "connected", 15, "cat")
    certs = {
        name: issue_client_cert(server.pki, tmp_path, name)
        for name in ("watcher", "typist")
    }
    return server, certs


def test_serial_tunnel_viewer_cannot_type_operator_can(roles_server):
    """On a serial tunnel a viewer sees the console's output, but what it
    sends never reaches the guest; an operator's input does."""
    server, certs = roles_server
    viewer = TunnelSocket(server, "cat1", "serial", cert=certs["watcher"])
    operator = TunnelSocket(server, "cat1", "serial", cert=certs["typist"])
    assert (viewer.status, operator.status) == (200, 200)
    viewer.sock.sendall(b"viewer-secret\n")
    operator.sock.sendall(b"operator-words\n")
    assert b"operator-words" in viewer.read_until(b"operator-words")
    assert b"operator-words" in operator.read_until(b"operator-words")
    viewer.close()
    closed = wait_for(
        lambda: tunnel_records(server, "tunnel-close"), 15, "the viewer's close"
    )
    assert closed[0]["identity"] == "watcher"
    assert closed[0]["inputDropped"] == len(b"viewer-secret\n")
    assert b"viewer-secret" not in console_bytes(server, "cat1")
    assert stats(server, "cat1")["bytesOut"] == len(b"operator-words\n")
    operator.close()


def test_certificate_without_a_role_is_403(roles_server, tmp_path):
    """A certificate the [authorization] table does not name opens nothing,
    and the denial is audited."""
    server, _ = roles_server
    stranger = issue_client_cert(server.pki, tmp_path, "stranger")
    tunnel = TunnelSocket(server, "cat1", "serial", cert=stranger)
    assert tunnel.status == 403, tunnel.head
    assert b"stranger" in tunnel.body()
    denied = [e for e in server.audit() if e["event"] == "denied"]
    assert [(e["identity"], e["method"]) for e in denied] == [("stranger", "CONNECT")]


def test_tunnel_to_a_unix_socket_endpoint(server, tmp_path):
    """A graphics endpoint on a unix socket is relayed as a TCP one is."""
    standin = StandIn(
        lambda conn, first: conn.sendall(first.upper()), path=tmp_path / "spice.sock"
    )
    try:
        register(server, "unix1", [standin.endpoint("spice")])
        tunnel = TunnelSocket(server, "unix1", "spice", early=b"link")
        assert tunnel.status == 200, tunnel.head
        assert tunnel.read_exactly(4) == b"LINK"
        tunnel.close()
    finally:
        standin.stop()


def _mint(server, vm_id: str, protocol: str, **params) -> str:
    reply = server.rpc().remoteConsole(vm_id, protocol, params)
    assert reply["status"]["code"] == 0, reply
    return reply["console"]["token"]


def test_token_sets_the_role_and_single_use_works_once(roles_server):
    """A viewer token makes an admin's serial tunnel read-only; a single-use
    token opens one tunnel only; a token for another console is 403."""
    server, _ = roles_server
    token = _mint(server, "cat1", "serial", role="viewer", singleUse=True)
    tunnel = TunnelSocket(server, "cat1", "serial", token=token)
    assert tunnel.status == 200, tunnel.head
    tunnel.sock.sendall(b"typed-with-a-viewer-token\n")
    tunnel.close()
    closed = wait_for(lambda: tunnel_records(server, "tunnel-close"), 15, "close")
    assert closed[0]["inputDropped"] == len(b"typed-with-a-viewer-token\n")
    again = TunnelSocket(server, "cat1", "serial", token=token)
    assert again.status == 403, again.head
    again.close()
    other = _mint(server, "cat1", "serial", role="operator")
    wrong = TunnelSocket(server, "cat1", "vnc", token=other)
    assert wrong.status == 403, wrong.head
    wrong.close()
    assert b"typed-with" not in console_bytes(server, "cat1")
    assert token not in server.log() and other not in server.log()
    uses = [e for e in server.audit() if e["event"] == "tokenUse"]
    assert [e["via"] for e in uses] == ["tunnel"]


def test_viewer_token_never_raises_a_role(roles_server):
    """An operator token in a viewer's hands still gives a viewer's tunnel."""
    server, certs = roles_server
    token = _mint(server, "cat1", "serial", role="operator")
    tunnel = TunnelSocket(server, "cat1", "serial", token=token, cert=certs["watcher"])
    assert tunnel.status == 200, tunnel.head
    tunnel.sock.sendall(b"not-from-a-viewer\n")
    tunnel.close()
    closed = wait_for(lambda: tunnel_records(server, "tunnel-close"), 15, "close")
    assert closed[0]["inputDropped"] == len(b"not-from-a-viewer\n")


# -- VNC with a password: a small RFB 3.8 server that asks VNC authentication.


def _viewer_handshake(tunnel: TunnelSocket) -> bytes:
    """A 3.8 viewer: what the server offered as security types (count, types)."""
    assert tunnel.read_exactly(12) == b"RFB 003.008\n"
    tunnel.sock.sendall(b"RFB 003.008\n")
    (count,) = struct.unpack("B", tunnel.read_exactly(1))
    return bytes([count]) + (tunnel.read_exactly(count) if count else b"")


def test_vnc_password_stays_on_the_server(server):
    """A VNC endpoint with a password: the viewer is offered None only, the
    server authenticates, then bytes flow raw both ways."""
    standin = StandIn(vnc_server(PASSWORD), speaks_first=True)
    try:
        endpoint = {**standin.endpoint("vnc"), "password": PASSWORD.decode()}
        register(server, "vnc1", [endpoint])
        tunnel = TunnelSocket(server, "vnc1", "vnc")
        assert tunnel.status == 200, tunnel.head
        assert _viewer_handshake(tunnel) == b"\x01\x01"  # None, nothing else
        tunnel.sock.sendall(b"\x01")
        assert tunnel.read_exactly(4) == b"\x00\x00\x00\x00"  # SecurityResult ok
        tunnel.sock.sendall(b"\x01")  # ClientInit: shared
        assert tunnel.read_exactly(len(SERVER_INIT)) == SERVER_INIT
        tunnel.sock.sendall(b"raw bytes now")
        assert tunnel.read_exactly(13) == b"RAW BYTES NOW"
        tunnel.close()
    finally:
        standin.stop()
    assert not standin.errors
    assert PASSWORD.decode() not in server.log()


def test_wrong_vnc_password_is_a_clear_error_and_a_log_line(server):
    """A stored password the VNC server refuses: the viewer gets an RFB
    failure with a reason, the server one log line, the tunnel closes."""
    standin = StandIn(vnc_server(b"another"), speaks_first=True)
    try:
        endpoint = {**standin.endpoint("vnc"), "password": PASSWORD.decode()}
        register(server, "vnc2", [endpoint])
        tunnel = TunnelSocket(server, "vnc2", "vnc")
        assert tunnel.status == 200, tunnel.head
        offered = _viewer_handshake(tunnel)
        assert offered[:1] == b"\x00", offered  # no types: a reason follows
        rest = tunnel.body()
        assert b"Authentication failed" in rest or b"refused" in rest.lower(), rest
    finally:
        standin.stop()
    closed = wait_for(lambda: tunnel_records(server, "tunnel-close"), 15, "close")
    assert closed[0]["why"].startswith("VNC authentication refused")
    log = server.log().splitlines()
    lines = [line for line in log if "[vdsmconsole.tunnels#" in line]
    assert len(lines) == 1 and "VNC authentication refused" in lines[0], lines
    assert PASSWORD.decode() not in server.log()


def _connected_to(port: int) -> bool:
    """Whether a socket here is connected to ``port`` (or half-closed by it)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(
        f[2].endswith(f":{port:04X}")
        and f[3] in ("01", "08")  # ESTABLISHED, CLOSE_WAIT
        for f in (line.split() for line in lines)
    )


def test_a_refusal_before_the_viewer_answers_still_reaches_it(server):
    """The VNC server refuses the stored password and closes before the
    viewer has sent its version: the viewer still gets the RFB failure with
    the reason once it answers, not a bare close."""
    handled = threading.Event()
    refuse = vnc_server(b"another")

    def refuse_then_close(conn, first):
        try:
            refuse(conn, first)
        finally:
            handled.set()

    standin = StandIn(refuse_then_close, speaks_first=True)
    try:
        endpoint = {**standin.endpoint("vnc"), "password": PASSWORD.decode()}
        register(server, "vnc4", [endpoint])
        tunnel = TunnelSocket(server, "vnc4", "vnc")
        assert tunnel.status == 200, tunnel.head
        assert tunnel.read_exactly(12) == b"RFB 003.008\n"
        assert handled.wait(15), "the VNC server never finished"
        # The server has seen the close: its side of the connection is gone.
        wait_for(lambda: not _connected_to(standin.port), 15, "the close")
        tunnel.sock.sendall(b"RFB 003.008\n")  # after the endpoint is gone
        assert tunnel.read_exactly(1) == b"\x00"  # no types: a reason follows
        assert b"Authentication failed" in tunnel.body()
    finally:
        standin.stop()
    closed = wait_for(lambda: tunnel_records(server, "tunnel-close"), 15, "close")
    assert closed[0]["why"].startswith("VNC authentication refused")


@pytest.mark.parametrize(
    ("who", "passed"),
    [
        ("watcher", SET_ENCODINGS + UPDATE_REQUEST),
        ("typist", MESSAGES),
    ],
)
def test_viewer_vnc_tunnel_is_view_only(roles_server, who, passed):
    """Through a viewer's VNC tunnel its key and pointer events never reach
    the VNC server (what shapes the picture does); an operator's all do."""
    server, certs = roles_server
    got: list[bytes] = []
    standin = StandIn(open_vnc_server(got, len(passed)), speaks_first=True)
    try:
        register(server, "vnc3", [standin.endpoint("vnc")])
        tunnel = TunnelSocket(server, "vnc3", "vnc", cert=certs[who])
        assert tunnel.status == 200, tunnel.head
        assert _viewer_handshake(tunnel) == b"\x01\x01"
        tunnel.sock.sendall(b"\x01")
        assert tunnel.read_exactly(4) == b"\x00\x00\x00\x00"
        tunnel.sock.sendall(b"\x01")
        assert tunnel.read_exactly(len(SERVER_INIT)) == SERVER_INIT
        tunnel.sock.sendall(MESSAGES)
        assert tunnel.read_exactly(4) == b"seen"
        assert got == [passed]
        tunnel.close()
    finally:
        standin.stop()
    assert not standin.errors
