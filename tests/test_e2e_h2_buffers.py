"""What the server holds for a client that stops reading, over HTTP/2 and HTTP/1.1.

``[console] client_buffer_bytes`` (256 KiB by default) bounds the output
the server holds for one stream beyond what it retains anyway.  Over HTTP/2
the bound is per stream: its queue in Twisted's connection plus the
connection's transport buffer; over HTTP/1.1 it is the connection's
transport buffer.  The clients here advertise a 2 GiB flow-control window
(as curl does, 32 MiB) and then read nothing; the server's RSS comes from
``/proc/PID/status``.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import h2.events
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame

from tests.conftest import require_tool
from tests.h2help import (
    RssWatch,
    flood,
    frames_until_closed,
    headers,
    read_streams,
    stalled_client,
)
from tests.hardening import Bystander, H2Client, marker, tls_connect
from tests.serverproc import ServerProcess, wait_for
from tests.streamhelp import (
    DEMO_CONFIG,
    console_bytes,
    create_demo,
    curl_base,
    stats,
    type_into,
)

pytestmark = pytest.mark.e2e

MiB = 1 << 20
RETAINED = 8 * 1000 * 1000  # the flood each console starts with
# What the server may hold per stalled stream: client_buffer_bytes (256 KiB),
# plus the one 64 KiB write that crosses it, plus a 16 KiB frame split off
# it; the connection's transport buffer is bounded by the same 256 KiB.
PER_STREAM = 256 * 1024 + 64 * 1024 + 16 * 1024
# Python's allocator, TLS and h2 bookkeeping, the RSS noise of a busy server.
SLACK = 10 * MiB


@pytest.fixture(scope="module")
def flooded(tmp_path_factory, pki) -> Any:
    """A server whose ``vm1`` retains 8 MB, followed by an HTTP/1.1 bystander."""
    server = ServerProcess(pki, tmp_path_factory.mktemp("buffers"), DEMO_CONFIG)
    bystander = None
    try:
        server.start()
        create_demo(server, "vm1")
        flood(server, "vm1", RETAINED)
        bystander = Bystander(server, "vm1")
        yield server
    finally:
        if bystander is not None:
            bystander.close()
        server.stop()


def still_streaming(server: ServerProcess, bystander: H2Client) -> None:
    """A fresh marker reaches the HTTP/2 bystander (stream 1, live)."""
    text = marker()
    type_into(server, "vm1", f"echo {text}\r")
    wanted = f"\r\n{text}\r\n".encode()
    read_streams(bystander, lambda b, e: wanted in b.get(1, b"") or e, 15)


@pytest.mark.parametrize(
    "connections,streams", [(1, 40), (5, 1)], ids=["one-connection", "five"]
)
def test_stalled_h2_followers_are_bounded(flooded, connections, streams):
    """Followers from offset 0 that never read: the server grows by at most
    client_buffer_bytes (and a chunk) per stream, and gives it back when they
    go; another HTTP/2 client keeps streaming meanwhile."""
    server = flooded
    bystander = H2Client(server, timeout=15)
    readers = stats(server, "vm1")["readers"]
    stalled: list[H2Client] = []
    try:
        bystander.conn.send_headers(
            1, headers("GET", "/consoleStream/vm1"), end_stream=True
        )
        bystander.sock.sendall(bystander.conn.data_to_send())
        wait_for(
            lambda: stats(server, "vm1")["readers"] == readers + 1, 10, "the bystander"
        )
        watch = RssWatch(server)
        for _ in range(connections):
            stalled.append(
                stalled_client(server, "/consoleStream/vm1?offset=0", streams)
            )
        total = connections * streams
        wait_for(
            lambda: stats(server, "vm1")["readers"] == readers + 1 + total,
            15,
            "the stalled followers",
        )
        limit = total * PER_STREAM + connections * 256 * 1024 + SLACK
        peak = watch.settle(limit)
        assert peak <= limit, f"grew {peak / MiB:.1f} MiB, bound {limit / MiB:.1f}"
        still_streaming(server, bystander)
    finally:
        for client in stalled:
            client.close()
    wait_for(
        lambda: stats(server, "vm1")["readers"] == readers + 1, 15, "the stalled to go"
    )
    wait_for(lambda: watch.growth() < 4 * MiB, 15, "the memory to come back")
    still_streaming(server, bystander)
    bystander.close()


def test_stalled_curl_followers_are_bounded(flooded, tmp_path):
    """Five ``curl --http2 ...?offset=0`` whose output nobody reads (the
    issue's case): bounded as above, and given back when curl goes."""
    require_tool("curl", "curl")
    server = flooded
    readers = stats(server, "vm1")["readers"]
    watch = RssWatch(server)
    curls = [
        subprocess.Popen(
            [
                *curl_base(server),
                "--http2",
                "-N",
                server.url("/consoleStream/vm1?offset=0"),
            ],
            stdout=subprocess.PIPE,  # never read: curl stops reading the server
            stderr=subprocess.DEVNULL,
        )
        for _ in range(5)
    ]
    try:
        wait_for(
            lambda: stats(server, "vm1")["readers"] == readers + 5, 15, "five curls"
        )
        limit = 5 * (PER_STREAM + 256 * 1024) + SLACK
        peak = watch.settle(limit)
        assert peak <= limit, f"grew {peak / MiB:.1f} MiB, bound {limit / MiB:.1f}"
    finally:
        for curl in curls:
            curl.kill()
            curl.wait(10)
    wait_for(lambda: stats(server, "vm1")["readers"] == readers, 15, "curl to go")
    wait_for(lambda: watch.growth() < 4 * MiB, 15, "the memory to come back")


def test_stalled_h2_follower_resumes_without_loss(flooded):
    """A follower paused for its buffer resumes when its client reads again,
    and gets every retained byte, equal to consoleRead."""
    server = flooded
    end = stats(server, "vm1")["nextOffset"]
    first = stats(server, "vm1")["firstOffset"]
    client = stalled_client(server, f"/consoleStream/vm1?offset={first}", streams=2)
    try:
        RssWatch(server).settle(2 * PER_STREAM + SLACK)
        size = end - first
        bodies = read_streams(
            client, lambda b, e: all(len(b.get(s, b"")) >= size for s in (1, 3))
        )
    finally:
        client.close()
    expected = console_bytes(server, "vm1", first, end)
    assert bytes(bodies[1][:size]) == expected
    assert bytes(bodies[3][:size]) == expected


def test_h2_follower_that_falls_behind_is_ended(server_factory):
    """A stalled HTTP/2 follower that falls behind everything retained has its
    response ended when it reads again; resuming from where it stopped is
    told exactly what it lost (as over HTTP/1.1)."""
    server = server_factory(
        DEMO_CONFIG + "[console]\nring_bytes = 65536\nlog_file_bytes = 65536\n"
        "log_keep_files = 1\nclient_buffer_bytes = 65536\n"
    )
    create_demo(server, "vm1")
    start = stats(server, "vm1")["nextOffset"]
    # A small receive buffer: the kernel holds little, the server the rest.
    client = stalled_client(server, f"/consoleStream/vm1?offset={start}", rcvbuf=4096)
    try:
        wait_for(lambda: stats(server, "vm1")["readers"] == 1, 10, "the follower")
        flood(server, "vm1", RETAINED)
        bodies = read_streams(client, lambda b, e: 1 in e)
    finally:
        client.close()
    stopped = start + len(bodies.get(1, b""))
    console = stats(server, "vm1")
    assert stopped < console["firstOffset"], (stopped, console)
    assert console["bytesLostToSlowReaders"] > 0
    again = H2Client(server)
    try:
        _, _, events = again.request(
            headers("GET", f"/consoleStream/vm1?offset={stopped}&follow=0")
        )
    finally:
        again.close()
    answer = _response_headers(events)
    assert int(answer[b"x-console-offset"]) == console["firstOffset"]
    assert int(answer[b"x-console-lost"]) == console["firstOffset"] - stopped


def _response_headers(events: list[Any]) -> dict[bytes, bytes]:
    (response,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    return dict(response.headers)


def test_client_buffer_bytes_bounds_an_http11_follower(server_factory):
    """Over HTTP/1.1, client_buffer_bytes is what the server buffers for a
    client that stops reading: with 8 MiB set, about 8 MiB, never more
    (Twisted's own 64 KiB applied whatever the setting said)."""
    knob = 8 * MiB
    server = server_factory(
        DEMO_CONFIG + "[console]\nring_bytes = 4194304\nlog_file_bytes = 16777216\n"
        f"client_buffer_bytes = {knob}\n"
    )
    create_demo(server, "vm1")
    flood(server, "vm1", 12 * 1000 * 1000)
    watch = RssWatch(server)
    # A small receive buffer: the kernel holds little, the server the rest.
    sock = tls_connect(server, rcvbuf=4096)
    try:
        sock.sendall(b"GET /consoleStream/vm1?offset=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: stats(server, "vm1")["readers"] == 1, 10, "the follower")
        # Ciphertext in the transport, and at times a copy of it being joined.
        peak = watch.settle(2 * knob + SLACK)
        assert peak <= 2 * knob + SLACK, peak
    finally:
        sock.close()
    wait_for(lambda: stats(server, "vm1")["readers"] == 0, 10, "the follower to go")
    (detach,) = [
        entry
        for entry in map(
            json.loads, (server.state_dir / "audit.log").read_text().splitlines()
        )
        if entry["event"] == "detach"
    ]
    # What the follower handed on: the server's buffer (Twisted counts in it
    # what the kernel took since its last compaction) and the kernel's
    # send buffer (up to tcp_wmem's 4 MiB).  Before: 2 MiB, whatever the knob.
    assert knob // 2 <= detach["bytesSent"] <= knob + 64 * 1024 + 4 * MiB, detach


def test_goaway_reaches_a_client_whose_connection_is_full(flooded):
    """A CONTINUATION flood on a connection whose output is stalled: the
    GOAWAY still goes out after what was queued, and the connection closes."""
    server = flooded
    client = stalled_client(server, "/consoleStream/vm1?offset=0", rcvbuf=4096)
    try:
        RssWatch(server).settle(PER_STREAM + SLACK)  # its output is stalled
        block = HeadersFrame(3, b"").serialize()
        client.sock.sendall(block + ContinuationFrame(3, b"").serialize() * 100)
        frames = frames_until_closed(client)
    finally:
        client.close()
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert [g.error_code for g in goaways] == [ErrorCodes.ENHANCE_YOUR_CALM]
    assert frames[-1] is goaways[0]
