"""Console websockets on the mTLS port: GET /consoleStream/<vmId> with
``Upgrade: websocket``, for certificate holders (issue 14), against the real
server with the ``websockets`` library as the client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import socket
import ssl

import h2.events
import h2.settings
import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.consolehelp import proc_status, server_pid
from tests.h2help import headers as h2headers
from tests.h2help import ping_on
from tests.hardening import H2Client, read_until_closed
from tests.serverproc import ServerProcess, client_context, wait_for, wait_for_progress
from tests.streamhelp import (
    DEMO_CONFIG,
    PROMPT,
    console_bytes,
    create_demo,
    flood_output,
    stats,
    type_into,
)
from tests.wshelp import WsFollower, ws_console, ws_url

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


@pytest.fixture
def demo(server_factory) -> ServerProcess:
    server = server_factory(DEMO_CONFIG)
    create_demo(server, "vm1")
    return server


def marker() -> str:
    return f"ws-{random.randrange(10**9)}"


def test_certificate_holder_follows_and_types(demo):
    """A websocket follows the console from its end and types into it."""
    with ws_console(demo, "vm1") as ws:
        assert ws.subprotocol == "binary"
        head = int(ws.response.headers["X-Console-Offset"])
        follower = WsFollower(ws)
        assert follower.offset == head == stats(demo, "vm1")["nextOffset"]
        text = marker()
        ws.send(f"echo {text}\r".encode())
        follower.expect(f"{text}\r\n{PROMPT.decode()}".encode())
        # What it got is exactly what the console holds from its offset.
        assert bytes(follower.data) == console_bytes(demo, "vm1", follower.offset)
    assert '"GET /consoleStream/vm1 HTTP/1.1" 101' in demo.log()


def test_resume_after_a_drop_loses_and_repeats_nothing(demo):
    """Reconnecting from the last offset received continues the bytes exactly."""
    got = bytearray()
    with ws_console(demo, "vm1", "?offset=0") as ws:
        first = WsFollower(ws)
        first.expect(PROMPT)
        got += first.data
        resume_at = first.end
    type_into(demo, "vm1", f"echo {marker()}\r")  # while nobody follows
    with ws_console(demo, "vm1", f"?offset={resume_at}") as ws:
        second = WsFollower(ws)
        assert (second.offset, second.lost) == (resume_at, 0)
        second.expect(PROMPT)
        got += second.data
    assert bytes(got) == console_bytes(demo, "vm1", 0, len(got))


def test_tail_and_bad_queries_as_for_get(demo):
    """tail=N starts N bytes back; a bad query is 400, an unknown vmId 404,
    an offset past the end 416, all before any upgrade."""
    end = stats(demo, "vm1")["nextOffset"]
    with ws_console(demo, "vm1", "?tail=6") as ws:
        assert WsFollower(ws).offset == end - 6
    for query, status in [
        ("?offset=x", 400),
        ("?follow=0", 400),
        (f"?offset={end + 10}", 416),
    ]:
        with pytest.raises(InvalidStatus) as refused:
            ws_console(demo, "vm1", query)
        assert refused.value.response.status_code == status, query
    with pytest.raises(InvalidStatus) as refused:
        ws_console(demo, "nope")
    assert refused.value.response.status_code == 404


def test_viewer_input_is_dropped(server_factory):
    """A viewer's websocket follows, but what it sends never reaches the guest."""
    admin = server_factory(DEMO_CONFIG, name="setup")
    create_demo(admin, "vm1")
    admin.stop()
    server = server_factory(
        DEMO_CONFIG + '\n[authorization]\n"engine" = "viewer"\n', name="setup"
    )
    wait_for(lambda: server.rpc().list()["vmList"], 15, "vm1 to be restored")
    wait_for(lambda: PROMPT in console_bytes(server, "vm1"), 15, "the prompt")
    with ws_console(server, "vm1", "?tail=0") as ws:
        follower = WsFollower(ws)
        text = marker()
        ws.send(f"echo {text}\r".encode())
        ws.ping().wait(10)  # the server has read the message by now
        assert text.encode() not in follower.poll(0.5)
    assert text.encode() not in console_bytes(server, "vm1")
    detach = [a for a in server.audit() if a["event"] == "detach"]
    assert detach[-1]["mode"] == "websocket-view"
    assert detach[-1]["inputDropped"] == len(text) + 6


def test_foreign_origin_is_refused_and_audited(demo):
    """A page of another origin gets 403 and one audit line; the server's own
    origin (the Host the browser used) is accepted."""
    with pytest.raises(InvalidStatus) as refused:
        ws_console(demo, "vm1", origin="https://evil.example")
    assert refused.value.response.status_code == 403
    denied = [a for a in demo.audit() if a["event"] == "denied"]
    assert [(a["reason"], a["origin"]) for a in denied] == [
        ("origin", "https://evil.example")
    ]
    own = f"https://127.0.0.1:{demo.port}"
    with ws_console(demo, "vm1", origin=own) as ws:
        WsFollower(ws)


def test_oversized_message_and_bad_utf8_close_with_their_codes(server_factory):
    """A message over max_message_bytes closes with 1009, a text message that is
    not UTF-8 with 1007; the console carries on for others."""
    server = server_factory(DEMO_CONFIG + "\n[web]\nmax_message_bytes = 4096\n")
    create_demo(server, "vm1")
    with ws_console(server, "vm1") as ws:
        WsFollower(ws)
        ws.send(b"x" * 5000)
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=10)
        assert ws.protocol.close_rcvd.code == 1009
    with ws_console(server, "vm1") as ws:
        WsFollower(ws)
        ws.send(b"\xff\xfe", text=True)
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=10)
        assert ws.protocol.close_rcvd.code == 1007
    assert b"x" * 100 not in console_bytes(server, "vm1")
    with ws_console(server, "vm1") as ws:
        follower = WsFollower(ws)
        text = marker()
        ws.send(f"echo {text}\r".encode())
        follower.expect(text.encode() + b"\r\n" + PROMPT)


def raw_websocket(server: ServerProcess, path: str) -> ssl.SSLSocket:
    """A TLS socket that did a websocket handshake and then does nothing."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    tls = client_context(server.pki).wrap_socket(sock, server_hostname="localhost")
    key = base64.b64encode(os.urandom(16)).decode()
    tls.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += tls.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return tls


def test_client_that_never_answers_pings_is_closed(server_factory):
    """A client that reads but never answers a ping is closed after the timeout."""
    server = server_factory(
        DEMO_CONFIG + "\n[web]\nping_interval = 0.5\nping_timeout = 1.0\n"
    )
    create_demo(server, "vm1")
    with contextlib.closing(raw_websocket(server, "/consoleStream/vm1")) as tls:
        wait_for(lambda: stats(server, "vm1")["readers"] == 1, 10, "the socket")

        def closed() -> bool:
            try:
                return tls.recv(65536) == b""
            except (ConnectionError, ssl.SSLError):
                return True
            except TimeoutError:
                return False

        tls.settimeout(0.2)
        wait_for(closed, 15, "the server to close the silent client")
    wait_for(lambda: stats(server, "vm1")["readers"] == 0, 10, "the detach")


def test_fifty_followers_get_identical_bytes_of_a_burst(demo):
    """Fifty websocket followers of one console each get exactly its burst."""
    size = 3 * MiB
    command = f"flood {size}"
    expected = flood_output(command, size)

    async def follow_all() -> list[bytes]:
        tls = client_context(demo.pki)
        sockets = [
            await async_connect(
                ws_url(demo, "/consoleStream/vm1"),
                ssl=tls,
                server_hostname="localhost",
                subprotocols=["binary"],
                max_size=None,
                compression=None,
            )
            for _ in range(50)
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


def test_stalled_websocket_holds_the_server_to_bounded_memory(server_factory):
    """A websocket client that never reads: 20 MB still flow through the
    console, the server's memory grows by far less than that."""
    total = 20 * MiB
    server = server_factory(
        DEMO_CONFIG + "\n[console]\nring_bytes = 2097152\nlog_file_bytes = 4194304\n"
    )
    create_demo(server, "vm1")
    pid = server_pid(server)
    with contextlib.closing(raw_websocket(server, "/consoleStream/vm1")):
        wait_for(lambda: stats(server, "vm1")["readers"] == 1, 10, "the socket")
        baseline = proc_status(pid, "VmRSS")
        start = stats(server, "vm1")["nextOffset"]
        type_into(server, "vm1", f"flood {total}\r")
        wait_for_progress(
            lambda: stats(server, "vm1")["nextOffset"] >= start + total,
            lambda: stats(server, "vm1")["nextOffset"],
            60,
            "20 MB through the console",
        )
        growth = proc_status(pid, "VmHWM") - baseline
        assert growth < 12 * MiB, f"the server grew by {growth / MiB:.1f} MiB"


def test_http2_refuses_websockets_clearly(demo):
    """Over HTTP/2 no websocket opens: RFC 8441 is not offered, an extended
    CONNECT and a GET with Upgrade are refused at once, and the connection
    still serves other requests."""
    client = H2Client(demo)
    try:
        assert ping_on(client) == 200  # the server's SETTINGS are in
        offered = client.conn.remote_settings.get(
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL
        )
        assert offered != 1
        connect_headers = [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":path", "/consoleStream/vm1"),
            (":authority", "localhost"),
            ("sec-websocket-version", "13"),
        ]
        upgrade_headers = [
            *h2headers("GET", "/consoleStream/vm1"),
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-key", base64.b64encode(os.urandom(16)).decode()),
            ("sec-websocket-version", "13"),
        ]
        for asked in (connect_headers, upgrade_headers):
            status, _, events = client.request(asked)
            refused = status is not None and status >= 400
            # A malformed request (Upgrade is forbidden in HTTP/2) may end
            # the whole connection with GOAWAY PROTOCOL_ERROR: also clear.
            ends = (h2.events.StreamReset, h2.events.ConnectionTerminated)
            reset = any(isinstance(e, ends) for e in events)
            assert refused or reset or client.reset, (status, events)
    finally:
        client.close()
    fresh = H2Client(demo)
    try:
        assert ping_on(fresh) == 200
    finally:
        fresh.close()


def closed_with(ws) -> tuple[int, str]:
    """Read until the server closes; its close code and reason."""
    with pytest.raises(ConnectionClosed):
        while True:
            ws.recv(timeout=15)
    close = ws.protocol.close_rcvd
    assert close is not None, "closed without a close frame"
    return close.code, close.reason


def test_ends_are_close_frames_with_the_end_reason(demo):
    """Destroying the console closes its websockets with 1000 "destroyed";
    stopping the server closes them with 1001 "stopping"."""
    create_demo(demo, "vm2")
    with ws_console(demo, "vm1") as staying, ws_console(demo, "vm2") as ws:
        WsFollower(staying)
        WsFollower(ws)
        assert demo.rpc().destroy("vm2")["status"]["code"] == 0
        assert closed_with(ws) == (1000, "destroyed")
        demo.stop()
        assert closed_with(staying) == (1001, "stopping")
    assert demo.wait(10) == 0


def test_guest_exit_closes_with_down_after_everything(demo):
    """A guest that exits: the socket gets everything, then 1000 "down"."""
    with ws_console(demo, "vm1") as ws:
        follower = WsFollower(ws)
        ws.send(b"exit\r")
        with pytest.raises(ConnectionClosed):
            while True:
                follower.data += ws.recv(timeout=15)
        assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (
            1000,
            "down",
        )
    assert bytes(follower.data) == console_bytes(demo, "vm1", follower.offset)


def test_slow_websocket_falls_behind_and_learns_what_it_lost(server_factory):
    """A websocket client that stops reading while more than is retained
    flows is ended with 1000 "behind"; resuming from its last offset tells
    it how much it lost, as for a GET follower."""
    server = server_factory(
        DEMO_CONFIG
        + "\n[console]\nring_bytes = 1048576\nlog_file_bytes = 1048576\n"
        + "log_keep_files = 1\n"
    )
    create_demo(server, "vm1")
    with ws_console(server, "vm1", max_queue=2) as ws:
        follower = WsFollower(ws)
        start = stats(server, "vm1")["nextOffset"]
        total = 12 * MiB
        type_into(server, "vm1", f"flood {total}\r")
        wait_for_progress(
            lambda: stats(server, "vm1")["nextOffset"] >= start + total,
            lambda: stats(server, "vm1")["nextOffset"],
            60,
            "the flood",
        )
        with pytest.raises(ConnectionClosed):
            while True:
                follower.data += ws.recv(timeout=15)
        close = ws.protocol.close_rcvd
        assert (close.code, close.reason) == (1000, "behind")
    end = follower.end
    with ws_console(server, "vm1", f"?offset={end}") as ws:
        resumed = WsFollower(ws)
        assert resumed.lost > 0
        assert resumed.offset == end + resumed.lost


def server_frames(tls: ssl.SSLSocket) -> list[tuple[int, bytes]]:
    """The (opcode, payload) frames the server sends, up to its close frame
    or the end of the connection (payloads under 64 KiB: a hello, a close)."""
    data = b""
    frames: list[tuple[int, bytes]] = []
    tls.settimeout(10)
    while not any(opcode == 0x8 for opcode, _ in frames):
        try:
            chunk = tls.recv(65536)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
        while len(data) >= 2:
            opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
            if length == 126:
                length, start = int.from_bytes(data[2:4], "big"), 4
            if len(data) < start + length:
                break
            frames.append((opcode, data[start : start + length]))
            data = data[start + length :]
    return frames


def test_bad_frame_closes_with_protocol_error(demo):
    """An unmasked client frame (RFC 6455 5.1) closes the socket with 1002."""
    with contextlib.closing(raw_websocket(demo, "/consoleStream/vm1")) as tls:
        tls.sendall(b"\x82\x05hello")  # binary, FIN, no mask
        frames = server_frames(tls)
    closes = [payload for opcode, payload in frames if opcode == 0x8]
    assert closes and int.from_bytes(closes[0][:2], "big") == 1002, frames
    assert b"hello" not in console_bytes(demo, "vm1")


@pytest.mark.parametrize(
    "extra",
    [
        "",  # no Connection: Upgrade, no key
        "Connection: Upgrade\r\nSec-WebSocket-Version: 99\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    ],
)
def test_malformed_handshake_is_400_and_logged_as_such(demo, extra):
    """A websocket request missing what RFC 6455 asks gets a plain 400, its
    access log line says 400, and nothing else is logged as an error."""
    tls = client_context(demo.pki).wrap_socket(
        socket.create_connection(("127.0.0.1", demo.port), timeout=10),
        server_hostname="localhost",
    )
    with contextlib.closing(tls):
        tls.sendall(
            "GET /consoleStream/vm1 HTTP/1.1\r\nHost: localhost\r\n"
            f"Upgrade: websocket\r\n{extra}\r\n".encode()
        )
        answer = read_until_closed(tls)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    wait_for(lambda: '"GET /consoleStream/vm1 HTTP/1.1" 400' in demo.log(), 10, "log")
    assert '" 101 ' not in demo.log()
    assert "Traceback" not in demo.log()
    assert [a["event"] for a in demo.audit()] == ["create"]  # no attach
