"""Console streams against the real server, with wget, curl and raw clients."""

from __future__ import annotations

import http.client
import json
import random
import shlex
import socket
import ssl
import xmlrpc.client

import pytest

from tests.hardening import read_until_closed
from tests.serverproc import client_context, wait_for, wait_for_progress
from tests.streamhelp import (
    DEMO_CONFIG,
    Reader,
    at_prompt,
    console_bytes,
    create_demo,
    curl_base,
    flood_output,
    rss_bytes,
    sha256,
    stats,
    tls_socket,
    type_into,
    wget_follow,
)
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

BURST = 20 * 1000 * 1000
BIG_LOG = """
[console]
ring_bytes = 4194304
log_file_bytes = 16777216
log_keep_files = 3
"""


@pytest.fixture
def demo_server(server_factory):
    server = server_factory(DEMO_CONFIG + BIG_LOG)
    create_demo(server, "vm1")
    return server


def marker() -> str:
    return f"marker-{random.randrange(10**9)}"


def test_wget_follows_a_console(demo_server, readers, tmp_path):
    """wget follows a console: a marker typed into the guest shows while wget runs."""
    follower = wget_follow(
        demo_server, "/consoleStream/vm1", readers, tmp_path / "wget.out"
    )
    wait_for(lambda: stats(demo_server, "vm1")["readers"] == 1, 10, "wget to attach")
    text = marker()
    type_into(demo_server, "vm1", f"echo {text}\r")
    wait_for(lambda: f"\r\n{text}\r\n".encode() in follower.data(), 10, "the marker")
    assert follower.running(), "wget stopped following"


@pytest.mark.parametrize("version", ["--http2", "--http1.1"])
def test_curl_follows_a_console(demo_server, readers, tmp_path, version):
    """curl -N follows a console over HTTP/2 and HTTP/1.1 alike."""
    require_tool("curl", "curl")
    follower = readers(
        [*curl_base(demo_server), "-N", version, demo_server.url("/consoleStream/vm1")],
        tmp_path / "curl.out",
    )
    wait_for(lambda: stats(demo_server, "vm1")["readers"] == 1, 10, "curl to attach")
    text = marker()
    type_into(demo_server, "vm1", f"echo {text}\r")
    wait_for(lambda: f"\r\n{text}\r\n".encode() in follower.data(), 10, "the marker")
    assert follower.running()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _open_chunked_post(server, path: str, first: bytes = b"", timeout: float = 10):
    """A raw TLS socket with a chunked POST's headers (and ``first``) sent."""
    sock = tls_socket(server, timeout=timeout)
    sock.sendall(
        b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        % path.encode()
        + first
    )
    return sock


def _read_http_head(sock: ssl.SSLSocket) -> tuple[bytes, bytes]:
    data = read_until_closed(sock, stop=b"\r\n\r\n")
    assert b"\r\n\r\n" in data, f"connection closed after {data!r}"
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def test_chunked_post_reaches_guest_before_request_ends(demo_server, readers, tmp_path):
    """The first chunk of a POST reaches the guest while the request is still open."""
    require_tool("curl", "curl")
    follower = readers(
        [*curl_base(demo_server), "-N", demo_server.url("/consoleStream/vm1")],
        tmp_path / "follow.out",
    )
    wait_for(lambda: stats(demo_server, "vm1")["readers"] == 1, 10, "the follower")
    sock = _open_chunked_post(demo_server, "/consoleStream/vm1")
    first = marker()
    sock.sendall(_chunk(f"echo {first}\r".encode()))
    wait_for(lambda: f"\r\n{first}\r\n".encode() in follower.data(), 10, "the echo")
    assert stats(demo_server, "vm1")["writers"] == 1  # the POST is still open
    second = marker()
    sock.sendall(_chunk(f"echo {second}\r".encode()) + b"0\r\n\r\n")
    head, body = _read_http_head(sock)
    assert head.startswith(b"HTTP/1.1 200")
    while b"}" not in body:
        body += sock.recv(4096)
    written = json.loads(body[body.index(b"{") :].split(b"\r\n")[0])["written"]
    assert written == len(f"echo {first}\r") + len(f"echo {second}\r")
    wait_for(lambda: f"\r\n{second}\r\n".encode() in follower.data(), 10, "2nd echo")


def test_curl_upload_from_a_pipe(demo_server, readers, tmp_path):
    """curl -T - from a pipe types into the guest, as an engine would."""
    require_tool("curl", "curl")
    follower = readers(
        [*curl_base(demo_server), "-N", demo_server.url("/consoleStream/vm1")],
        tmp_path / "follow.out",
    )
    wait_for(lambda: stats(demo_server, "vm1")["readers"] == 1, 10, "the follower")
    text = marker()
    command = " ".join(shlex.quote(a) for a in curl_base(demo_server))
    sender = readers(
        f"printf 'echo {text}\\r' | {command} -T - "
        + demo_server.url("/consoleStream/vm1"),
        tmp_path / "send.out",
        shell=True,
    )
    wait_for(lambda: not sender.running(), 15, "curl -T - to finish")
    assert sender.process.returncode == 0
    assert json.loads(sender.data()) == {"written": len(text) + 6}
    wait_for(lambda: f"\r\n{text}\r\n".encode() in follower.data(), 10, "the echo")


def test_duplex_over_http11(demo_server):
    """One HTTP/1.1 request both types a command and streams back its output."""
    sock = _open_chunked_post(demo_server, "/consoleStream/vm1?duplex=1")
    head, received = _read_http_head(sock)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Transfer-Encoding: chunked" in head
    text = marker()
    sock.sendall(_chunk(f"echo {text}\r".encode()))

    def seen() -> bool:
        nonlocal received
        received += sock.recv(65536)
        return f"\r\n{text}\r\n".encode() in received

    wait_for(seen, 10, "the command's output on the same request")
    assert stats(demo_server, "vm1")["writers"] == 1
    assert stats(demo_server, "vm1")["readers"] == 1
    sock.close()
    wait_for(lambda: stats(demo_server, "vm1")["readers"] == 0, 10, "the detach")


def _curl_checksum(server, start: int, nbytes: int, extra: str = "") -> str:
    command = " ".join(shlex.quote(a) for a in curl_base(server))
    url = server.url(f"/consoleStream/vm1?offset={start}")
    return f"{command} -N {extra} '{url}' | head -c {nbytes} | sha256sum"


def _checksum(follower: Reader) -> str | None:
    """The pipeline's sha256sum once it is written.  Not the pipeline's exit:
    curl follows on until the guest writes again after head has its bytes."""
    line = follower.data()
    return line.split()[0].decode() if line.endswith(b"\n") else None


def _flood_and_wait(server, start: int) -> int:
    type_into(server, "vm1", f"flood {BURST}\r")
    # How fast 20 MB go through a pty is the machine's load (a few MB/s on a
    # busy 2-core machine): wait while the console grows, not by the clock.
    wait_for_progress(
        lambda: (
            stats(server, "vm1")["nextOffset"] >= start + BURST
            and at_prompt(server, "vm1")
        ),
        lambda: stats(server, "vm1")["nextOffset"],
        60,
        "the flood to finish",
    )
    return stats(server, "vm1")["nextOffset"]


def test_fifty_followers_get_identical_bytes(demo_server, readers, tmp_path):
    """50 followers of one console get byte-identical output of a 20 MB burst."""
    require_tool("curl", "curl")
    start = stats(demo_server, "vm1")["nextOffset"]
    followers = [
        readers(
            _curl_checksum(demo_server, start, BURST), tmp_path / f"f{i}", shell=True
        )
        for i in range(50)
    ]
    wait_for_progress(
        lambda: stats(demo_server, "vm1")["readers"] == 50,
        lambda: stats(demo_server, "vm1")["readers"],
        30,
        "50 followers",
    )
    _flood_and_wait(demo_server, start)
    wrote = flood_output(f"flood {BURST}", BURST)[:BURST]  # what the guest wrote
    assert console_bytes(demo_server, "vm1", start, start + BURST) == wrote

    def checksums() -> list[str]:
        return [c for c in map(_checksum, followers) if c is not None]

    wait_for_progress(
        lambda: len(checksums()) == 50, lambda: len(checksums()), 120, "checksums"
    )
    assert set(checksums()) == {sha256(wrote)}


def test_stalled_client_does_not_hold_back_a_fast_one(demo_server, readers, tmp_path):
    """A client that never reads neither slows a fast one nor grows the server."""
    require_tool("curl", "curl")
    start = stats(demo_server, "vm1")["nextOffset"]
    stalled = tls_socket(demo_server)
    stalled.sendall(
        b"GET /consoleStream/vm1?offset=%d HTTP/1.1\r\nHost: x\r\n\r\n" % start
    )
    fast = readers(
        _curl_checksum(demo_server, start, BURST), tmp_path / "fast", shell=True
    )
    wait_for(lambda: stats(demo_server, "vm1")["readers"] == 2, 10, "both clients")
    pid = demo_server.process.pid
    before = rss_bytes(pid)
    end = _flood_and_wait(demo_server, start)
    checksum = wait_for(lambda: _checksum(fast), 120, "the fast client's checksum")
    wrote = flood_output(f"flood {BURST}", BURST)[:BURST]  # what the guest wrote
    assert console_bytes(demo_server, "vm1", start, start + BURST) == wrote
    assert checksum == sha256(wrote)
    # The stalled client is still attached, and the server did not buffer the
    # burst for it: its memory grew by far less than the 20 MB it missed.
    fast.stop()
    wait_for(lambda: stats(demo_server, "vm1")["readers"] == 1, 10, "curl to go")
    growth = rss_bytes(pid) - before
    assert growth < 12 * 1024 * 1024, f"server grew {growth} bytes"
    assert end - start >= BURST
    stalled.close()


def test_resume_after_disconnect_loses_nothing(demo_server):
    """Disconnect mid-stream, resume with offset=<next>: nothing lost or repeated."""
    start = stats(demo_server, "vm1")["nextOffset"]
    conn = http.client.HTTPSConnection(
        "127.0.0.1",
        demo_server.port,
        context=client_context(demo_server.pki),
        timeout=30,
    )
    conn.request("GET", f"/consoleStream/vm1?offset={start}")
    response = conn.getresponse()
    assert int(response.getheader("X-Console-Offset")) == start
    type_into(demo_server, "vm1", "flood 3000000\r")
    first = response.read(1_000_000)
    conn.close()  # mid-stream
    nxt = start + len(first)
    wait_for(lambda: at_prompt(demo_server, "vm1"), 60, "the flood to finish")
    conn = http.client.HTTPSConnection(
        "127.0.0.1",
        demo_server.port,
        context=client_context(demo_server.pki),
        timeout=30,
    )
    conn.request("GET", f"/consoleStream/vm1?offset={nxt}&follow=0")
    response = conn.getresponse()
    assert response.getheader("X-Console-Lost") is None
    rest = response.read()
    # Exactly what the guest wrote from the start offset on, and what it keeps.
    assert first + rest == flood_output("flood 3000000", 3_000_000)
    assert first + rest == console_bytes(demo_server, "vm1", start)


def _status(
    server, method: str, path: str, body: bytes | None = None
) -> http.client.HTTPResponse:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=client_context(server.pki), timeout=10
    )
    conn.request(method, path, body=body)
    response = conn.getresponse()
    response.read()
    return response


@pytest.mark.parametrize(
    "path",
    [
        "/consoleStream/nosuchvm",
        "/consoleStream/..%2f..%2fetc",
        "/consoleStream/%2e%2e",
        "/consoleStream/" + "a" * 65,
        "/consoleStream/bad%00id",
        "/consoleStream/-leadingdash",
    ],
)
def test_unknown_or_malformed_vm_is_404(demo_server, path):
    """Unknown or malformed vmIds are 404 for GET and POST alike."""
    assert _status(demo_server, "GET", path).status == 404
    assert _status(demo_server, "POST", path, b"x").status == 404


@pytest.mark.parametrize(
    "query",
    ["offset=-1", "offset=abc", "tail=-5", "tail=", "offset=1&tail=1", "follow=2"],
)
def test_bad_query_is_400(demo_server, query):
    """offset/tail must be non-negative integers; other mistakes are 400 too."""
    assert _status(demo_server, "GET", f"/consoleStream/vm1?{query}").status == 400


def test_offset_beyond_end_is_416_and_old_offset_reports_loss(server_factory):
    """Beyond the end is 416; an offset older than retained says what was lost."""
    server = server_factory(
        DEMO_CONFIG
        + "[console]\nring_bytes = 4096\nlog_file_bytes = 4096\nlog_keep_files = 1\n"
    )
    create_demo(server, "vm1")
    type_into(server, "vm1", "flood 50000\r")
    # Until the flood is over, the end moves and the 4 KiB log rotates under
    # every figure read below.
    wait_for(
        lambda: stats(server, "vm1")["nextOffset"] > 50000 and at_prompt(server, "vm1"),
        30,
        "the flood to finish",
    )
    end = stats(server, "vm1")["nextOffset"]
    assert _status(server, "GET", f"/consoleStream/vm1?offset={end + 1}").status == 416
    response = _status(server, "GET", "/consoleStream/vm1?offset=0&follow=0")
    first = stats(server, "vm1")["firstOffset"]
    assert response.status == 200
    assert int(response.getheader("X-Console-Offset")) == first
    assert int(response.getheader("X-Console-Lost")) == first


def test_malformed_chunked_body_is_400_and_closed(demo_server):
    """A chunked body that lies about its sizes gets 400 and the connection closes."""
    sock = _open_chunked_post(demo_server, "/consoleStream/vm1", b"zz\r\nhello\r\n")
    head, _ = _read_http_head(sock)
    assert head.startswith(b"HTTP/1.1 400")
    sock.settimeout(10)
    read_until_closed(sock)
    assert demo_server.rpc().ping()["status"]["code"] == 0


def test_post_to_a_down_console_is_503(demo_server):
    """Input for a console whose guest is gone is 503 with Retry-After."""
    type_into(demo_server, "vm1", "exit\r")
    wait_for(lambda: stats(demo_server, "vm1")["state"] == "down", 15, "down")
    response = _status(demo_server, "POST", "/consoleStream/vm1", b"echo x\r")
    assert response.status == 503
    assert response.getheader("Retry-After")
    # Output retained before it went down is still served.
    response = _status(demo_server, "GET", "/consoleStream/vm1?offset=0&follow=0")
    assert response.status == 200
    assert demo_server.rpc().ping()["status"]["code"] == 0


def test_input_backpressure_stops_reading_the_client(server_factory):
    """A guest that takes no input makes the server stop reading the body."""
    server = server_factory(DEMO_CONFIG)
    create_demo(server, "mute", command="mute")
    sock = _open_chunked_post(server, "/consoleStream/mute", timeout=5)
    before = rss_bytes(server.process.pid)
    block = _chunk(b"x" * 65536)
    sent = 0
    with pytest.raises((socket.timeout, TimeoutError)):
        for _ in range(64 * 16):  # up to 64 MB
            sock.sendall(block)
            sent += len(block)
    # The pty and the sockets hold a few hundred KB; nothing near 64 MB.
    assert sent < 8 * 1024 * 1024, sent
    assert rss_bytes(server.process.pid) - before < 8 * 1024 * 1024
    assert server.rpc().ping()["status"]["code"] == 0


def test_console_write_to_a_stuck_guest_is_refused_not_queued(server_factory):
    """consoleWrite to a guest that takes no input answers 102 once it is full."""
    server = server_factory(DEMO_CONFIG)
    create_demo(server, "mute", command="mute")
    proxy = server.rpc()
    before = rss_bytes(server.process.pid)
    block = xmlrpc.client.Binary(b"x" * 512 * 1024)
    codes = [proxy.consoleWrite("mute", block)["status"]["code"] for _ in range(100)]
    assert 102 in codes
    # Only what the pty and one transport buffer hold was accepted, not 50 MB.
    assert codes.count(0) < 8, codes
    assert rss_bytes(server.process.pid) - before < 16 * 1024 * 1024
    assert proxy.ping()["status"]["code"] == 0


# A guest that gives back its input as it is (the pty is raw: no echo).
CAT_COMMANDS = '[spawn.commands]\ncat = ["/bin/cat"]\n'


def test_writers_interleave_whole_chunks(server_factory):
    """A chunk split across TCP segments reaches the guest whole: another
    client's chunk arriving between its halves goes before it or after it,
    never into it."""
    server = server_factory(DEMO_CONFIG.replace("[spawn.commands]", CAT_COMMANDS))
    create_demo(server, "cat", command="cat")
    start = stats(server, "cat")["nextOffset"]
    first, second = b"A" * 10, b"A" * 10
    # Client A: the headers and half of a 20-byte chunk, in one TLS record, so
    # that by the time A counts as a writer the server has read the half too.
    slow = _open_chunked_post(server, "/consoleStream/cat", b"14\r\n" + first)
    try:
        wait_for(lambda: stats(server, "cat")["writers"] == 1, 10, "writer A")
        # Client B: a whole chunk, typed while A's chunk is half there.
        fast = _open_chunked_post(server, "/consoleStream/cat", _chunk(b"B" * 8))
        fast.sendall(b"0\r\n\r\n")
        assert _read_http_head(fast)[0].startswith(b"HTTP/1.1 200")
        fast.close()
        wait_for(
            lambda: b"B" * 8 in console_bytes(server, "cat", start), 10, "B's chunk"
        )
        slow.sendall(second + b"\r\n0\r\n\r\n")
        assert _read_http_head(slow)[0].startswith(b"HTTP/1.1 200")
    finally:
        slow.close()
    wait_for(lambda: len(console_bytes(server, "cat", start)) >= 28, 10, "A's chunk")
    assert console_bytes(server, "cat", start) == b"B" * 8 + first + second


@pytest.mark.parametrize("how", ["close", "reset"])
def test_writer_leaving_mid_chunk_delivers_none_of_it(server_factory, how):
    """A client that leaves in the middle of a chunk: the guest receives none
    of that chunk, and the next client's input arrives clean after it."""
    server = server_factory(DEMO_CONFIG.replace("[spawn.commands]", CAT_COMMANDS))
    create_demo(server, "cat", command="cat")
    start = stats(server, "cat")["nextOffset"]
    # A 256-byte chunk of which 40 bytes arrive, with the headers, in one record.
    sock = _open_chunked_post(server, "/consoleStream/cat", b"100\r\n" + b"P" * 40)
    wait_for(lambda: stats(server, "cat")["writers"] == 1, 10, "the writer")
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
    sock.close()
    wait_for(lambda: stats(server, "cat")["writers"] == 0, 10, "the writer to go")
    after = _open_chunked_post(
        server, "/consoleStream/cat", _chunk(b"next") + b"0\r\n\r\n"
    )
    try:
        assert _read_http_head(after)[0].startswith(b"HTTP/1.1 200")
    finally:
        after.close()
    # The cat guest gives back exactly what it received.
    wait_for(lambda: b"next" in console_bytes(server, "cat", start), 10, "the echo")
    assert console_bytes(server, "cat", start) == b"next"
