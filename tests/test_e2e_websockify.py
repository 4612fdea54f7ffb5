"""``/websockify?token=T`` on the web listener (issue 14): graphics through
the tunnels' relay (the server's own VNC authentication, a viewer token's
view-only filter, backpressure both ways), refusals, and serial followers,
against the real server with the ``websockets`` library as the browser."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import select
import socket
import ssl
import threading

import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.connecthelp import StandIn, register, tunnel_records
from tests.h2help import RssWatch
from tests.hardening import Bystander, still_serving
from tests.rfbhelp import (
    MESSAGES,
    PASSWORD,
    SERVER_INIT,
    SET_ENCODINGS,
    UPDATE_REQUEST,
    open_vnc_server,
    vnc_server,
)
from tests.serverproc import ServerProcess, wait_for
from tests.streamhelp import DEMO_CONFIG, create_demo, flood_output
from tests.webtokens import browser_tls, mint, web_config, web_port, web_socket
from tests.wshelp import SyncSocket
from vdsmconsole.server.tokens.store import token_id
from vdsmconsole.testing import free_port

pytestmark = pytest.mark.e2e
MiB = 1 << 20


@pytest.fixture
def web(server_factory, tmp_path) -> tuple[ServerProcess, int]:
    """A server with [web] on and the demo guest vm1."""
    server = server_factory(DEMO_CONFIG + web_config(tmp_path))
    create_demo(server, "vm1")
    return server, web_port(server)


class WsStream:
    """A websocket's binary messages as one byte stream (an RFB viewer's)."""

    def __init__(self, ws: SyncSocket) -> None:
        self.ws = ws
        self.buffer = bytearray()

    def read_exactly(self, n: int, timeout: float = 20) -> bytes:
        while len(self.buffer) < n:
            message = self.ws.recv(timeout=timeout)
            assert isinstance(message, bytes), message
            self.buffer += message
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def send(self, data: bytes) -> None:
        self.ws.send(data)


def rfb_to_server_init(stream: WsStream) -> bytes:
    """An RFB 3.8 viewer up to ServerInit; returns the security types offered."""
    assert stream.read_exactly(12) == b"RFB 003.008\n"
    stream.send(b"RFB 003.008\n")
    (count,) = stream.read_exactly(1)
    offered = stream.read_exactly(count)
    stream.send(b"\x01")  # None
    assert stream.read_exactly(4) == b"\x00\x00\x00\x00"  # SecurityResult: ok
    stream.send(b"\x01")  # ClientInit: shared
    assert stream.read_exactly(len(SERVER_INIT)) == SERVER_INIT
    return offered


def closed_by_server(ws: SyncSocket, timeout: float = 15) -> int | None:
    """Read until the server closes; its close code."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            ws.recv(timeout=timeout)
    return ws.protocol.close_code


def test_vnc_password_stays_on_the_server(web):
    """A VNC endpoint with a password: the browser is offered None only, the
    server authenticates, then bytes flow raw both ways as binary messages;
    the open and close are audited as a websocket's."""
    server, port = web
    standin = StandIn(vnc_server(PASSWORD), speaks_first=True)
    try:
        endpoint = {**standin.endpoint("vnc"), "password": PASSWORD.decode()}
        register(server, "vnc1", [endpoint])
        token = mint(server, "vnc1", "vnc")
        with web_socket(server, port, f"/websockify?token={token}") as ws:
            assert ws.subprotocol == "binary"
            stream = WsStream(ws)
            assert rfb_to_server_init(stream) == b"\x01"  # None, nothing else
            stream.send(b"raw bytes now")
            assert stream.read_exactly(13) == b"RAW BYTES NOW"
    finally:
        standin.stop()
    assert not standin.errors
    closed = wait_for(lambda: tunnel_records(server, "tunnel-close"), 15, "close")
    (opened,) = tunnel_records(server, "tunnel-open")
    assert (opened["via"], opened["vmId"], opened["token"]) == ("websocket", "vnc1", 1)
    assert closed[0]["bytesFromViewer"] == 12 + 1 + 1 + 13
    assert PASSWORD.decode() not in server.log()
    assert token not in server.log()


@pytest.mark.parametrize(
    ("role", "passed"),
    [("viewer", SET_ENCODINGS + UPDATE_REQUEST), ("operator", MESSAGES)],
)
def test_viewer_token_is_view_only(web, role, passed):
    """Through a viewer token's websocket, framebuffer update requests reach
    the VNC server and key and pointer events never do; an operator's all do."""
    server, port = web
    got: list[bytes] = []
    standin = StandIn(open_vnc_server(got, len(passed)), speaks_first=True)
    try:
        register(server, "vnc3", [standin.endpoint("vnc")])
        token = mint(server, "vnc3", "vnc", role=role)
        with web_socket(server, port, f"/websockify?token={token}") as ws:
            stream = WsStream(ws)
            assert rfb_to_server_init(stream) == b"\x01"
            stream.send(MESSAGES)
            assert stream.read_exactly(4) == b"seen"
        assert got == [passed]
    finally:
        standin.stop()
    assert not standin.errors


def test_unknown_client_message_closes_a_viewer_session(web):
    """A viewer's message of a type the filter cannot measure closes the
    websocket, with one log line; what came before it went on."""
    server, port = web
    got: list[bytes] = []
    standin = StandIn(open_vnc_server(got, len(SET_ENCODINGS)), speaks_first=True)
    try:
        register(server, "vnc4", [standin.endpoint("vnc")])
        token = mint(server, "vnc4", "vnc", role="viewer")
        with web_socket(server, port, f"/websockify?token={token}") as ws:
            stream = WsStream(ws)
            rfb_to_server_init(stream)
            stream.send(SET_ENCODINGS + b"\xee\x00\x00\x00")
            assert closed_by_server(ws) == 1000
        assert got == [SET_ENCODINGS]
    finally:
        standin.stop()
    lines = [line for line in server.log().splitlines() if "view-only VNC" in line]
    assert len(lines) == 1, lines


def test_endpoint_refusing_is_502_before_the_upgrade(web):
    """An endpoint that refuses the connection: the browser's request gets
    HTTP 502 (no websocket), and the server logs one line."""
    server, port = web
    with free_port() as closed:
        register(server, "gone", [{"type": "rdp", "host": "127.0.0.1", "port": closed}])
        token = mint(server, "gone", "rdp")
        with pytest.raises(InvalidStatus) as refused:
            web_socket(server, port, f"/websockify?token={token}")
    assert refused.value.response.status_code == 502
    lines = [line for line in server.log().splitlines() if "the endpoint" in line]
    assert len(lines) == 1 and "failed" in lines[0], lines
    assert not tunnel_records(server, "tunnel-open")


def test_destroy_closes_and_stop_cuts_graphics_websockets(web):
    """Destroying the VM closes its graphics websocket (1000); a stopping
    server cuts the others."""
    server, port = web
    standin = echo_standin()
    try:
        register(server, "gfx", [standin.endpoint("rdp")])
        register(server, "gfx2", [standin.endpoint("rdp")])
        first = web_socket(
            server, port, f"/websockify?token={mint(server, 'gfx', 'rdp')}"
        )
        second = web_socket(
            server, port, f"/websockify?token={mint(server, 'gfx2', 'rdp')}"
        )
        for ws in (first, second):
            ws.send(b"up")
            assert ws.recv(timeout=20) == b"UP"
        assert server.rpc().destroy("gfx")["status"]["code"] == 0
        assert closed_by_server(first) == 1000
        server.stop()
        with pytest.raises(ConnectionClosed):
            while True:
                second.recv(timeout=15)
    finally:
        standin.stop()
    whys = [r["why"] for r in tunnel_records(server, "tunnel-close")]
    assert whys == ["the VM was destroyed", "the server is stopping"], whys


def test_wrong_subprotocol_or_page_is_refused_before_any_connection(web):
    """A browser offering subprotocols but not ``binary`` is 400 before the
    endpoint is connected; a serial token's VNC page is 404."""
    server, port = web
    standin = echo_standin()
    try:
        register(server, "gfx", [standin.endpoint("rdp")])
        token = mint(server, "gfx", "rdp")
        with pytest.raises(InvalidStatus) as refused:
            web_socket(
                server, port, f"/websockify?token={token}", subprotocols=["base64"]
            )
        assert refused.value.response.status_code == 400
        assert not tunnel_records(server, "tunnel-open")  # nothing connected
        assert relays(server, port, token)
    finally:
        standin.stop()
    assert page_status(server, port, mint(server, "vm1")) == 404


# -- refusals ------------------------------------------------------------------


def echo_standin() -> StandIn:
    """An RDP stand-in that answers every read upper-cased."""

    def echo(conn: socket.socket, first: bytes) -> None:
        data = first
        while data:
            conn.sendall(data.upper())
            data = conn.recv(65536)

    return StandIn(echo)


def relays(server: ServerProcess, port: int, token: str) -> bool:
    """A websocket with ``token`` relays to the echo stand-in."""
    with web_socket(server, port, f"/websockify?token={token}") as ws:
        ws.send(b"still here")
        return ws.recv(timeout=20) == b"STILL HERE"


def page_status(server: ServerProcess, port: int, token: str) -> int:
    """The status of GET /console/vnc?token= (a lookup: spends nothing)."""
    context = browser_tls(server)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(
                f"GET /console/vnc?token={token} HTTP/1.1\r\n"
                "Host: localhost\r\nConnection: close\r\n\r\n".encode()
            )
            head = tls.recv(12)
    return int(head[9:12])


@pytest.mark.parametrize(
    "case", ["no token", "wrong", "expired", "used single-use", "foreign origin"]
)
def test_refusals_leave_the_server_serving(web, case):
    """Each refusal is 403 with one audit line (never the token), and the
    server relays a good token's websocket and a serial follower after it."""
    server, port = web
    bystander = Bystander(server, "vm1")
    standin = echo_standin()
    try:
        register(server, "gfx", [standin.endpoint("rdp")])
        good = mint(server, "gfx", "rdp")
        origin: str | None = f"https://127.0.0.1:{port}"
        query = ""
        if case == "wrong":
            query = "?token=" + "w" * 43
        elif case == "expired":
            token = mint(server, "gfx", "rdp", ttl=1)
            wait_for(lambda: page_status(server, port, token) == 403, 10, "expiry")
            query = f"?token={token}"
        elif case == "used single-use":
            token = mint(server, "gfx", "rdp", single_use=True)
            assert relays(server, port, token)
            query = f"?token={token}"
        elif case == "foreign origin":
            query = f"?token={good}"
            origin = "https://evil.example"
        before = len(server.audit())
        with pytest.raises(InvalidStatus) as refused:
            web_socket(server, port, f"/websockify{query}", origin=origin)
        assert refused.value.response.status_code == 403
        refusals = ("tokenRefused", "denied")
        audited = [a for a in server.audit()[before:] if a["event"] in refusals]
        events = [(a["event"], a.get("reason")) for a in audited]
        if case == "foreign origin":
            assert events == [("denied", "origin")]
        elif case == "no token":
            assert events == [("tokenRefused", "no token")]
        else:
            assert events == [("tokenRefused", "unknown, expired or used token")]
            assert audited[0]["tokenId"] == token_id(query.partition("=")[2])
        assert relays(server, port, good)
        still_serving(server, bystander, "vm1")
    finally:
        standin.stop()
        bystander.close()
    assert good not in server.log()
    assert good not in (server.state_dir / "audit.log").read_text()


# -- many followers, one stalled client ------------------------------------------


def test_fifty_websockify_followers_get_identical_bytes_of_a_burst(web):
    """Fifty browsers' websockets on one serial console (one token each)
    each get exactly its 20 MB burst."""
    server, port = web
    size = 20 * MiB
    command = f"flood {size}"
    expected = flood_output(command, size)
    tokens = [mint(server, "vm1", role="operator") for _ in range(50)]

    async def follow_all() -> list[bytes]:
        tls = browser_tls(server)
        sockets = [
            await async_connect(
                f"wss://127.0.0.1:{port}/websockify?token={token}",
                ssl=tls,
                server_hostname="localhost",
                origin=f"https://127.0.0.1:{port}",  # type: ignore[arg-type]
                subprotocols=["binary"],  # type: ignore[list-item]
                max_size=None,
                compression=None,
            )
            for token in tokens
        ]
        for ws in sockets:
            await ws.recv()  # the offset: each is attached from here on
        await sockets[0].send(f"{command}\r".encode())

        async def read(ws) -> bytes:
            got = bytearray()
            while len(got) < len(expected):
                got += await asyncio.wait_for(ws.recv(), 60)
            await ws.close()
            return bytes(got)

        return await asyncio.gather(*(read(ws) for ws in sockets))

    results = asyncio.run(follow_all())
    assert all(r == expected for r in results), [len(r) for r in results]


def raw_web_socket(server: ServerProcess, port: int, token: str) -> ssl.SSLSocket:
    """A browser's websocket handshake on a small receive buffer, by hand:
    then the socket is the test's to stall or flood."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    tls = browser_tls(server).wrap_socket(sock, server_hostname="localhost")
    key = base64.b64encode(os.urandom(16)).decode()
    tls.sendall(
        (
            f"GET /websockify?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Origin: https://127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Protocol: binary\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += tls.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return tls


def test_stalled_websocket_bounds_memory_while_the_endpoint_floods(web):
    """An endpoint writing 200 MB to a browser that reads nothing: the server
    stops reading the endpoint, its RSS grows by less than 16 MiB, and a
    serial follower keeps streaming meanwhile."""
    server, port = web
    bystander = Bystander(server, "vm1")
    sent = [0]

    def flood(conn: socket.socket, first: bytes) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        chunk = os.urandom(MiB)
        for _ in range(200):
            conn.sendall(chunk)
            sent[0] += len(chunk)

    standin = StandIn(flood)
    tls = None
    try:
        register(server, "flood", [standin.endpoint("rdp")])
        token = mint(server, "flood", "rdp")
        watch = RssWatch(server)
        tls = raw_web_socket(server, port, token)
        tls.sendall(binary_frame(b"go"))
        assert standin.accepted.wait(10)
        wait_for(lambda: sent[0] >= 2 * MiB, 10, "the endpoint to flood")
        peak = watch.settle(16 * MiB)
        assert peak < 16 * MiB, f"the server grew {peak / MiB:.1f} MiB"
        assert sent[0] < 32 * MiB, f"the endpoint could send {sent[0]} bytes"
        still_serving(server, bystander, "vm1")
    finally:
        if tls is not None:
            tls.close()
        standin.stop()
        bystander.close()


def binary_frame(payload: bytes) -> bytes:
    """A client's binary frame (masked, with a zero key: the payload as is;
    its length in the shortest form, as RFC 6455 requires)."""
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 1 << 16:
        length = b"\xfe" + n.to_bytes(2, "big")
    else:
        length = b"\xff" + n.to_bytes(8, "big")
    return b"\x82" + length + bytes(4) + payload


def test_stalled_endpoint_stops_reading_the_websocket(web):
    """An endpoint that reads nothing: the server stops reading the browser,
    so a browser sending without end is held back after a bounded amount."""
    server, port = web
    standin = StandIn(lambda conn, first: threading.Event().wait(60))
    tls = None
    try:
        register(server, "deaf", [standin.endpoint("rdp")])
        token = mint(server, "deaf", "rdp")
        watch = RssWatch(server)
        tls = raw_web_socket(server, port, token)
        tls.sendall(binary_frame(b"x"))
        assert standin.accepted.wait(10)
        assert standin.tunnel is not None
        standin.tunnel.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        tls.setblocking(False)
        frame = binary_frame(os.urandom(64 * 1024))
        pushed = 0
        view = memoryview(b"")
        # Send until the connection takes nothing for 2 s (or 200 MB went).
        while pushed < 200 * MiB:
            _, writable, _ = select.select([], [tls], [], 2.0)
            if not writable:
                break
            if not view:
                view = memoryview(frame)
            try:
                n = tls.send(view)
            except (ssl.SSLWantWriteError, BlockingIOError):
                continue
            view = view[n:]
            pushed += n
        assert pushed < 32 * MiB, f"the browser could send {pushed} bytes"
        assert watch.growth() < 16 * MiB
        assert not tunnel_records(server, "tunnel-close")  # held, not closed
    finally:
        if tls is not None:
            tls.close()
        standin.stop()
