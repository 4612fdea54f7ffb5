"""CONNECT tunnels on the real port: bytes both ways, backpressure both
ways, refusals, HTTP/2, and the server's stop (docs/protocol.rst, "Tunnels")."""

from __future__ import annotations

import os
import select
import socket
import ssl
import subprocess
import threading

import h2.errors
import h2.events
import pytest

from tests.connecthelp import StandIn, TunnelSocket, register, tunnel_records
from tests.h2help import RssWatch, ping_on
from tests.hardening import (
    Bystander,
    H2Client,
    http_exchange,
    status_of,
    still_serving,
)
from tests.serverproc import wait_for
from tests.streamhelp import DEMO_CONFIG, create_demo, curl_base, sha256
from vdsmconsole.testing import free_port

pytestmark = pytest.mark.e2e

MiB = 1 << 20


def _sink_and_send(payload: bytes, received: list[bytes]):
    """An RDP stand-in: sends ``payload``, keeps what comes until EOF."""

    def handle(conn: socket.socket, first: bytes) -> None:
        sender = threading.Thread(target=conn.sendall, args=(payload,), daemon=True)
        sender.start()
        got = bytearray(first)
        while more := conn.recv(1 << 20):
            got += more
        received.append(bytes(got))
        sender.join(30)
        conn.close()

    return handle


def test_rdp_tunnel_carries_bytes_both_ways_unchanged(server):
    """4 MB of random bytes each way pass through an RDP tunnel unchanged,
    and the tunnel's open and close are one audit line each with the counts."""
    to_viewer, to_endpoint = os.urandom(4 * MiB), os.urandom(4 * MiB)
    received: list[bytes] = []
    standin = StandIn(_sink_and_send(to_viewer, received))
    try:
        register(server, "rdp1", [standin.endpoint("rdp")])
        tunnel = TunnelSocket(server, "rdp1", "rdp", early=to_endpoint[:1000])
        assert tunnel.status == 200, tunnel.head
        got = tunnel.exchange(to_endpoint[1000:], len(to_viewer))
        tunnel.close()
        wait_for(lambda: received, 30, "the endpoint to see the viewer's EOF")
        assert sha256(got) == sha256(to_viewer)
        assert sha256(received[0]) == sha256(to_endpoint)
        closed = wait_for(
            lambda: tunnel_records(server, "tunnel-close"), 15, "the close record"
        )
        assert closed[0]["bytesToViewer"] == len(to_viewer)
        assert closed[0]["bytesFromViewer"] == len(to_endpoint)
        (opened,) = tunnel_records(server, "tunnel-open")
        assert (opened["identity"], opened["vmId"], opened["protocol"]) == (
            "engine",
            "rdp1",
            "rdp",
        )
    finally:
        standin.stop()
    assert not standin.errors


def test_stalled_viewer_bounds_memory_while_the_endpoint_floods(server_factory):
    """An endpoint writing 200 MB to a viewer that reads nothing: the server
    stops reading the endpoint (it cannot send 200 MB), its RSS grows by less
    than 16 MiB, and another console keeps streaming meanwhile."""
    server = server_factory(DEMO_CONFIG)
    create_demo(server, "vm1")
    bystander = Bystander(server, "vm1")
    sent = [0]

    def flood(conn: socket.socket, first: bytes) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        chunk = os.urandom(MiB)
        for _ in range(200):
            conn.sendall(chunk)
            sent[0] += len(chunk)

    standin = StandIn(flood)
    tunnel = None
    try:
        register(server, "flood", [standin.endpoint("rdp")])
        watch = RssWatch(server)
        tunnel = TunnelSocket(server, "flood", "rdp", rcvbuf=64 * 1024, early=b"go")
        assert tunnel.status == 200, tunnel.head
        peak = watch.settle(16 * MiB)
        assert peak < 16 * MiB, f"the server grew {peak / MiB:.1f} MiB"
        assert sent[0] < 32 * MiB, f"the endpoint could send {sent[0]} bytes"
        still_serving(server, bystander, "vm1")
    finally:
        if tunnel is not None:
            tunnel.close()
        standin.stop()
        bystander.close()


def test_stalled_endpoint_stops_reading_the_viewer(server):
    """An endpoint that reads nothing: the server stops reading the viewer,
    so a viewer sending without end is held back after a bounded amount."""
    standin = StandIn(lambda conn, first: threading.Event().wait(60))
    tunnel = None
    try:
        register(server, "deaf", [standin.endpoint("rdp")])
        watch = RssWatch(server)
        tunnel = TunnelSocket(server, "deaf", "rdp", early=b"x")
        assert tunnel.status == 200, tunnel.head
        assert standin.accepted.wait(10)
        assert standin.tunnel is not None
        standin.tunnel.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        tunnel.sock.setblocking(False)
        chunk = os.urandom(MiB)
        pushed = 0
        # Send until the connection takes nothing for 2 s (or all 200 MB went).
        while pushed < 200 * MiB:
            _, writable, _ = select.select([], [tunnel.sock], [], 2.0)
            if not writable:
                break
            try:
                pushed += tunnel.sock.send(chunk)
            except (ssl.SSLWantWriteError, BlockingIOError):
                continue
        assert pushed < 32 * MiB, f"the viewer could send {pushed} bytes"
        assert watch.growth() < 16 * MiB
    finally:
        if tunnel is not None:
            tunnel.close()
        standin.stop()


@pytest.mark.parametrize(
    ("vm_id", "query", "code"),
    [
        ("nosuch", "protocol=rdp", 404),
        ("gfx", "protocol=vnc", 404),  # no vnc graphics on that VM
        ("gfx", "protocol=serial", 404),  # graphics only: no serial console
        ("gfx", "protocol=telnet", 400),
        ("gfx", "", 400),
        ("gfx", "protocol=rdp&token=short", 400),
        ("gfx", "protocol=rdp&protocol=rdp", 400),
        ("bad%2Fid", "protocol=rdp", 404),
    ],
)
def test_bad_tunnel_requests_are_refused(server, vm_id, query, code):
    """Unknown vmId or console 404, unknown protocol or malformed token 400:
    a plain-text answer, then the connection closes."""
    with free_port() as port:
        register(server, "gfx", [{"type": "rdp", "host": "127.0.0.1", "port": port}])
        answer = http_exchange(
            server,
            f"CONNECT /consoleTunnel/{vm_id}?{query} HTTP/1.1\r\n"
            "Host: localhost\r\n\r\n".encode(),
        )
    assert status_of(answer) == code, answer
    assert b"Connection: close" in answer
    assert b"text/plain" in answer
    assert not tunnel_records(server, "tunnel-open")


def test_refusing_endpoint_is_502_with_one_log_line(server):
    """An endpoint that refuses the connection: 502 to the viewer, one log
    line saying which endpoint failed, and no tunnel is opened."""
    with free_port() as port:
        register(server, "gone", [{"type": "rdp", "host": "127.0.0.1", "port": port}])
        tunnel = TunnelSocket(server, "gone", "rdp")
        assert tunnel.status == 502, tunnel.head
        assert b"refused or failed" in tunnel.body()
    lines = [
        line for line in server.log().splitlines() if "vdsmconsole.tunnels" in line
    ]
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}" in lines[0] and "refused" in lines[0]
    assert not tunnel_records(server, "tunnel-open")


def test_connect_over_http2_is_refused_at_once(server):
    """An HTTP/2 CONNECT is reset with HTTP_1_1_REQUIRED at once (the
    connection goes on); curl's, with a path, ends at once too."""
    register(server, "h2vm", [{"type": "rdp", "host": "127.0.0.1", "port": 9}])
    client = H2Client(server, timeout=10)
    try:
        stream = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            stream, [(":method", "CONNECT"), (":authority", "localhost:1")]
        )
        client.sock.sendall(client.conn.data_to_send())
        status, _, events = client.response(stream)
        resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
        assert status is None and resets, events
        assert resets[0].error_code == h2.errors.ErrorCodes.HTTP_1_1_REQUIRED
        assert ping_on(client) == 200
    finally:
        client.close()
    curl = subprocess.run(
        [
            *curl_base(server),
            "--http2",
            "-X",
            "CONNECT",
            "--max-time",
            "20",
            server.url("/consoleTunnel/h2vm?protocol=rdp"),
        ],
        capture_output=True,
        timeout=30,
    )
    assert curl.returncode not in (0, 28), curl  # an error, not a timeout
    assert server.rpc().ping()["status"]["code"] == 0
    server.stop()  # nothing of those requests is left to trip the stop
    assert server.process is not None and server.process.returncode == 0
    assert "Traceback" not in server.log() and "vdsmconsole stopped" in server.log()


def test_server_stop_cuts_tunnels(server):
    """SIGTERM: an open tunnel is cut (the viewer and the endpoint both see
    their connection end) and the server exits cleanly."""
    standin = StandIn(lambda conn, first: None)
    try:
        register(server, "cut", [standin.endpoint("spice")])
        tunnel = TunnelSocket(server, "cut", "spice", early=b"x")
        assert tunnel.status == 200, tunnel.head
        assert standin.accepted.wait(10) and standin.tunnel is not None
        server.stop()
        assert server.process is not None and server.process.returncode == 0
        assert tunnel.closed_by_server()
        standin.tunnel.settimeout(10)
        assert standin.tunnel.recv(1) == b""
        (closed,) = tunnel_records(server, "tunnel-close")
        assert closed["why"] == "the server is stopping"
    finally:
        standin.stop()


def test_destroy_closes_the_vms_tunnels(server):
    """Destroying a VM closes its graphics tunnels and their endpoint
    connections."""
    standin = StandIn(lambda conn, first: None)
    try:
        register(server, "doomed", [standin.endpoint("vnc")])
        tunnel = TunnelSocket(server, "doomed", "vnc", early=b"x")
        assert tunnel.status == 200, tunnel.head
        assert standin.accepted.wait(10) and standin.tunnel is not None
        assert server.rpc().destroy("doomed")["status"]["code"] == 0
        assert tunnel.closed_by_server()
        standin.tunnel.settimeout(10)
        assert standin.tunnel.recv(1) == b""
        closed = wait_for(lambda: tunnel_records(server, "tunnel-close"), 15, "close")
        assert closed[0]["why"] == "the VM was destroyed"
    finally:
        standin.stop()
