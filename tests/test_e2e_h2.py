"""HTTP/2 as a hostile client speaks it: early answers, resets, floods of frames.

One server for the module (as in test_e2e_badinput): a demo guest ``vm1``
that an HTTP/1.1 bystander follows throughout, and an ``[authorization]``
table that makes ``engine`` an admin and ``viewer-1`` a viewer.  After every
test the bystander still receives fresh output, a fresh ping works and the
server log holds no traceback.  Requests go out as frames written with the
``h2`` library and, where curl can say it, with ``curl --http2``.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import h2.errors
import h2.events
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    GoAwayFrame,
    HeadersFrame,
    PriorityFrame,
    RstStreamFrame,
)

from tests.h2help import (
    PING,
    frames_until_closed,
    guest_pid,
    headers,
    issue_client_cert,
    ping_on,
    process_gone,
    read_streams,
)
from tests.hardening import H2Client, demo_server, marker, still_serving_after
from tests.serverproc import ServerProcess, wait_for
from tests.streamhelp import DEMO_CONFIG, console_bytes, create_demo, curl_base, stats
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

CONFIG = DEMO_CONFIG + '\n[authorization]\n"engine" = "admin"\n"viewer-*" = "viewer"\n'
CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


@pytest.fixture(scope="module")
def served(tmp_path_factory, pki):
    """The module's server; its stop (SIGTERM) must leave no error in the log."""
    with demo_server(pki, tmp_path_factory.mktemp("h2"), CONFIG) as running:
        yield running
    log = running[0].log()
    assert "Unhandled" not in log and "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def viewer(served, pki, tmp_path_factory) -> tuple[Path, Path]:
    return issue_client_cert(pki, tmp_path_factory.mktemp("viewer"), "viewer-1")


@pytest.fixture
def server(served) -> Any:
    """The module's server; afterwards it must still serve everyone else."""
    with still_serving_after(served, "Unhandled") as server:
        yield server


# -- a stream POST answered at once ----------------------------------------------

# (who, path, status, the answer's text)
EARLY = [
    pytest.param("viewer", "/consoleStream/vm1", 403, b"may not do that", id="403"),
    pytest.param(
        "engine",
        "/consoleStream/nope",
        404,
        b"Virtual machine does not exist",
        id="404",
    ),
    pytest.param(
        "engine", "/consoleStream/vm1?bogus=1", 400, b"unknown parameter", id="400"
    ),
    pytest.param(
        "engine",
        "/consoleStream/vm1?duplex=1&offset=99999999999",
        416,
        b"is beyond the end",
        id="416",
    ),
]


@pytest.mark.parametrize("who,path,status,text", EARLY)
def test_early_answer_over_h2_frames(server, viewer, who, path, status, text):
    """A stream POST answered before its body ends: the whole answer arrives,
    more body is harmless, and the connection serves its next stream."""
    client = H2Client(server, cert=viewer if who == "viewer" else None)
    try:
        conn = client.conn
        conn.send_headers(1, headers("POST", path))
        conn.send_data(1, b"echo early\r")  # the body goes on after this
        client.sock.sendall(conn.data_to_send())
        got, body, events = client.response(1)
        assert got == status, events
        assert text in body and body.endswith(b"\n"), body
        (response,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        assert int(dict(response.headers)[b"content-length"]) == len(body)
        assert any(isinstance(e, h2.events.StreamEnded) for e in events), events
        # The client sends more of the body it was told it need not send.
        conn.send_data(1, b"more body\r", end_stream=True)
        client.sock.sendall(conn.data_to_send())
        assert ping_on(client) == 200
    finally:
        client.close()


@pytest.mark.parametrize("who,path,status,text", EARLY)
def test_early_answer_over_curl(server, viewer, who, path, status, text, tmp_path):
    """The same with curl --http2; its next request reuses the connection."""
    require_tool("curl", "curl")
    base = curl_base(server)
    if who == "viewer":
        base[base.index("--cert") + 1] = str(viewer[0])
        base[base.index("--key") + 1] = str(viewer[1])
    (tmp_path / "ping.xml").write_bytes(PING)
    out = subprocess.run(
        [
            *base,
            "--http2",
            "-o",
            str(tmp_path / "first"),
            "-w",
            "%{http_code} %{http_version} %{num_connects}\n",
            "--data-binary",
            "echo early\r",
            server.url(path),
            "--next",
            *base[1:],  # the same options, without the program name
            "--http2",
            "-o",
            str(tmp_path / "second"),
            "-w",
            "%{http_code} %{http_version} %{num_connects}\n",
            "-H",
            "Content-Type: text/xml",
            "--data-binary",
            f"@{tmp_path / 'ping.xml'}",
            server.url("/RPC2"),
        ],
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().split("\n")[:2] == [f"{status} 2 1", "200 2 0"]
    answer = (tmp_path / "first").read_bytes()
    assert text in answer and answer.endswith(b"\n")
    assert b"<int>0</int>" in (tmp_path / "second").read_bytes()


def _duplex_console(server: ServerProcess, vm_id: str) -> tuple[int, int, bytes]:
    """A spawned demo console: its guest's pid, end offset and retained bytes."""
    create_demo(server, vm_id)
    end = stats(server, vm_id)["nextOffset"]
    return guest_pid(server, vm_id), end, console_bytes(server, vm_id, 0, end)


def _destroyed_cleanly(server: ServerProcess, vm_id: str, pid: int) -> None:
    wait_for(
        lambda: (
            stats(server, vm_id)["readers"] == 0
            and stats(server, vm_id)["writers"] == 0
        ),
        10,
        "the duplex reader and writer to go",
    )
    assert server.rpc().destroy(vm_id)["status"]["code"] == 0
    wait_for(lambda: process_gone(pid), 10, "the spawned guest to go")


def test_duplex_over_retained_bytes_over_h2_frames(server):
    """A duplex from offset=0 streams what is retained at once, takes input,
    shares its connection, and leaves nothing behind when reset."""
    pid, end, retained = _duplex_console(server, "dup-h2")
    client = H2Client(server)
    try:
        conn = client.conn
        conn.send_headers(1, headers("POST", "/consoleStream/dup-h2?duplex=1&offset=0"))
        client.sock.sendall(conn.data_to_send())
        bodies = read_streams(client, lambda b, e: len(b.get(1, b"")) >= end or e)
        assert bytes(bodies[1][:end]) == retained
        assert ping_on(client) == 200  # a second stream while the duplex runs
        text = marker()
        conn.send_data(1, f"echo {text}\r".encode())
        client.sock.sendall(conn.data_to_send())
        wanted = f"\r\n{text}\r\n".encode()
        read_streams(client, lambda b, e: wanted in b.get(1, b"") or e)
        conn.reset_stream(1)
        client.sock.sendall(conn.data_to_send())
        assert ping_on(client) == 200
    finally:
        client.close()
    _destroyed_cleanly(server, "dup-h2", pid)


def test_duplex_over_retained_bytes_over_curl(server, tmp_path):
    """The same with curl --http2 -T -: retained bytes, an echo, a clean end."""
    require_tool("curl", "curl")
    pid, end, retained = _duplex_console(server, "dup-curl")
    out = tmp_path / "out"
    with open(out, "wb") as sink:
        curl = subprocess.Popen(
            [
                *curl_base(server),
                "--http2",
                "-N",
                "-T",
                "-",
                server.url("/consoleStream/dup-curl?duplex=1&offset=0"),
            ],
            stdin=subprocess.PIPE,
            stdout=sink,
            stderr=subprocess.PIPE,
        )
    try:
        # curl fills its upload buffer from stdin before it goes on (fread):
        # the input is a whole body, after which the output keeps flowing.
        text = marker()
        assert curl.stdin is not None
        curl.stdin.write(f"echo {text}\r".encode())
        curl.stdin.close()
        wanted = f"\r\n{text}\r\n".encode()
        wait_for(lambda: wanted in out.read_bytes(), 15, "the echo")
        assert out.read_bytes()[:end] == retained
    finally:
        curl.kill()
        curl.wait(10)
    _destroyed_cleanly(server, "dup-curl", pid)


# -- frames that used to end in an exception -----------------------------------


def _rapid_reset() -> bytes:
    """HEADERS with END_STREAM, then RST_STREAM, 1,500 times (CVE-2023-44487)."""
    client_frames = b""
    block = hpack.Encoder().encode(headers("GET", "/consoleStream/vm1?follow=0"))
    for n in range(1500):
        stream = 2 * n + 1
        frame = HeadersFrame(stream, block, flags=["END_HEADERS", "END_STREAM"])
        reset = RstStreamFrame(stream, error_code=8)  # CANCEL
        client_frames += frame.serialize() + reset.serialize()
    return client_frames


def _priority_chain() -> bytes:
    """1,001 PRIORITY frames, each on a new stream, depending on the last."""
    return b"".join(
        PriorityFrame(2 * n + 3, depends_on=2 * n + 1, stream_weight=15).serialize()
        for n in range(1001)
    )


def _continuation_flood() -> bytes:
    """A header block in HEADERS and 5,000 CONTINUATION frames, never ended."""
    frames = HeadersFrame(1, b"").serialize()
    piece = ContinuationFrame(1, b"\x40\x01a\x01b").serialize()
    return frames + piece * 5000


@pytest.mark.parametrize(
    "flood",
    [_rapid_reset, _priority_chain, _continuation_flood],
    ids=["rapid-reset", "priority-chain", "continuation-flood"],
)
def test_frame_flood_is_one_goaway_and_a_close(server, flood):
    """A flood of frames: exactly one GOAWAY ENHANCE_YOUR_CALM, then closed."""
    client = H2Client(server, timeout=20)
    try:
        client.sock.sendall(flood())
        started = time.monotonic()
        frames = frames_until_closed(client)  # times out if left open
        goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
        assert [g.error_code for g in goaways] == [CALM], frames[-5:]
        assert frames[-1] is goaways[0]  # nothing after it
        assert time.monotonic() - started < 15
    finally:
        client.close()


def test_late_reset_of_a_finished_stream_is_ignored(server):
    """RST_STREAM for a stream whose response has ended: the connection goes on."""
    client = H2Client(server)
    try:
        status, _, _ = client.request(headers("GET", "/consoleStream/vm1?follow=0"))
        assert status == 200
        client.sock.sendall(RstStreamFrame(1, error_code=8).serialize())
        assert ping_on(client) == 200
        assert client.request(headers("GET", "/RPC2"))[0] == 405
    finally:
        client.close()


def test_reset_in_the_same_read_as_its_headers(server):
    """HEADERS and RST_STREAM of one stream in one read: nothing renders for
    it, and the next stream on the connection is served."""
    client = H2Client(server)
    try:
        conn = client.conn
        conn.send_headers(1, headers("POST", "/consoleStream/nope"))
        conn.reset_stream(1)
        conn.send_headers(3, headers("POST", "/RPC2"))
        conn.send_data(3, PING, end_stream=True)
        client.sock.sendall(conn.data_to_send())
        status, _, events = client.response(3)
        assert status == 200
        assert not [e for e in events if getattr(e, "stream_id", 0) == 1]
    finally:
        client.close()
