"""How a console stream ends, against the real server (see endings.py).

wget and curl (HTTP/1.1 and HTTP/2) exit 0 when the console is destroyed or
its guest is gone for good, with an ``X-Console-End`` trailer saying which,
and non-zero when the server stops, so that a script retries.  While the
server stops, raw HTTP/1.1 and hand-written HTTP/2 frames see new requests
refused and followers cut, never ended.
"""

from __future__ import annotations

import signal
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import hpack
import pytest
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
)

from tests.consolehelp import attach_paused_guest, send, wait_state
from tests.consolehelp import config as qemu_config
from tests.endinghelp import SLOW_STOP, finish_call, headers_of, held_call
from tests.hardening import read_until_closed, tls_connect
from tests.qemuguest import require_qemu
from tests.serverproc import PING_BODY, ServerProcess, refuses_connections, wait_for
from tests.streamhelp import (
    DEMO_CONFIG,
    PROMPT,
    Reader,
    console_bytes,
    create_demo,
    curl_base,
    stats,
    tls_socket,
    type_into,
    wget_argv,
)
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

FOLLOWERS = ["wget", "curl-http1.1", "curl-http2"]


def follower_argv(server: ServerProcess, tool: str, query: str, head: Path) -> list:
    """A follower of vm1 with ``tool``; curl dumps headers and trailers to ``head``."""
    path = f"/consoleStream/vm1{query}"
    if tool == "wget":
        return wget_argv(server, path)
    require_tool("curl", "curl")
    version = "--" + tool.split("-")[1]
    return [*curl_base(server), "-N", version, "-D", str(head), server.url(path)]


def end_trailer(head: Path) -> str | None:
    """The X-Console-End that curl dumped (headers and trailers alike)."""
    for line in head.read_text().splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "x-console-end":
            return value.strip()
    return None


def follow(readers, server: ServerProcess, tool: str, directory: Path, query: str):
    directory.mkdir(exist_ok=True)
    head = directory / f"{tool}.head"
    head.write_text("")
    follower = readers(
        follower_argv(server, tool, query, head), directory / f"{tool}.out"
    )
    return follower, head


def finished(follower: Reader, timeout: float = 15) -> int:
    code = follower.process.wait(timeout)
    follower.process.stderr.close()  # type: ignore[union-attr]
    return code


@pytest.mark.parametrize("tool", FOLLOWERS)
def test_destroy_ends_a_follower_cleanly(server_factory, readers, tmp_path, tool):
    """destroy: wget and curl exit 0, with the trailer X-Console-End: destroyed."""
    server = server_factory(DEMO_CONFIG)
    create_demo(server, "vm1")
    follower, head = follow(readers, server, tool, tmp_path, "?offset=0")
    wait_for(lambda: PROMPT in follower.data(), 15, "the retained output")
    assert server.rpc().destroy("vm1")["status"]["code"] == 0
    assert finished(follower) == 0
    if tool != "wget":
        assert end_trailer(head) == "destroyed"


@pytest.mark.parametrize("tool", FOLLOWERS)
def test_guest_gone_for_good_ends_followers_cleanly(
    server_factory, readers, tmp_path, tool
):
    """The guest exits (down for good): a follower gets its last words, then
    ends (exit 0, X-Console-End: down); a follower that comes later gets what
    is retained and ends at once."""
    server = server_factory(DEMO_CONFIG)
    create_demo(server, "vm1")
    follower, head = follow(readers, server, tool, tmp_path / "1", "")
    wait_for(lambda: stats(server, "vm1")["readers"] == 1, 15, "the follower")
    type_into(server, "vm1", "exit\r")
    wait_for(lambda: stats(server, "vm1")["state"] == "down", 15, "down")
    assert finished(follower) == 0
    assert b"logout" in follower.data()
    late, late_head = follow(readers, server, tool, tmp_path / "2", "?offset=0")
    assert finished(late) == 0
    assert late.data() == console_bytes(server, "vm1")
    if tool != "wget":
        assert end_trailer(head) == end_trailer(late_head) == "down"
    assert stats(server, "vm1")["readers"] == 0


@pytest.mark.qemu
def test_pty_guest_gone_ends_wget(
    server_factory,
    readers,
    tmp_path,
    guests,  # noqa: F811 - the fixture
):
    """qemu exits (its pty console is down, never reopened): wget following
    it gets the shell's last words and exits 0; so does one started later."""
    require_qemu()
    server = server_factory(qemu_config())
    reader = attach_paused_guest(server, guests.start("pty", paused=True), "vm1")
    follower, _ = follow(readers, server, "wget", tmp_path / "1", "")
    wait_for(lambda: stats(server, "vm1")["readers"] == 1, 15, "wget")
    send(server, "vm1", "exit\n")
    wait_state(server, "vm1", "down")
    assert finished(follower, 30) == 0
    assert b"shell exited" in follower.data()
    late, _ = follow(readers, server, "wget", tmp_path / "2", "?offset=0")
    assert finished(late) == 0
    assert late.data() == reader.poll()


@pytest.mark.parametrize("tool", FOLLOWERS)
def test_server_stop_cuts_a_follower(server_factory, readers, tmp_path, tool):
    """SIGTERM: wget and curl exit non-zero (no clean end, no trailer): retry."""
    server = server_factory(DEMO_CONFIG)
    create_demo(server, "vm1")
    follower, head = follow(readers, server, tool, tmp_path, "?offset=0")
    wait_for(lambda: PROMPT in follower.data(), 15, "the retained output")
    server.signal(signal.SIGTERM)
    assert server.wait(15) == 0
    assert finished(follower) != 0
    assert end_trailer(head) is None
    assert "Traceback" not in server.log()


# -- while the server stops ------------------------------------------------------


def stop_and_wait_for_the_port(server: ServerProcess) -> None:
    server.signal(signal.SIGTERM)
    wait_for(lambda: refuses_connections(server.port), 10, "the port to close")


def chunks_complete(body: bytes) -> bool:
    """Whether a chunked body got as far as its last (zero-size) chunk."""
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return False
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return True
        body = rest[size + 2 :]


def test_http11_requests_while_stopping(server_factory):
    """Stopping, over HTTP/1.1: a call in flight is answered (and closes its
    connection); a new request on an open connection is 503 with Connection:
    close and X-Console-End: stopping; a follower is cut before its last chunk."""
    server = server_factory(DEMO_CONFIG + SLOW_STOP)
    create_demo(server, "vm1")
    call = held_call(server)
    idle = tls_socket(server)
    ping = b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
    idle.sendall(ping % len(PING_BODY) + PING_BODY)
    assert b" 200 " in read_until_closed(idle, stop=b"</methodResponse>")
    follower = tls_socket(server)
    follower.sendall(b"GET /consoleStream/vm1?offset=0 HTTP/1.1\r\nHost: x\r\n\r\n")
    streamed = read_until_closed(follower, stop=PROMPT)
    assert streamed.startswith(b"HTTP/1.1 200 ")

    stop_and_wait_for_the_port(server)
    idle.sendall(b"GET /consoleStream/vm1 HTTP/1.1\r\nHost: x\r\n\r\n")
    code, fields = headers_of(read_until_closed(idle))  # and closed
    assert code == 503
    assert fields["connection"] == "close"
    assert fields["x-console-end"] == "stopping"
    assert fields["retry-after"] == "5"

    code, fields = headers_of(finish_call(call))
    assert code == 200 and fields["connection"] == "close"
    streamed += read_until_closed(follower)
    body = streamed.split(b"\r\n\r\n", 1)[1]
    assert PROMPT in body and not chunks_complete(body)
    assert server.wait(15) == 0
    assert "Traceback" not in server.log()


class RawH2:
    """HTTP/2 by hand: the h2 library writes our frames; the server's are
    parsed one by one (hyperframe, hpack), so that frames after a GOAWAY,
    which the h2 library refuses to take, are seen too."""

    def __init__(self, server: ServerProcess) -> None:
        self.sock = tls_connect(server, alpn=["h2"])
        config = h2.config.H2Configuration(client_side=True)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.buffer = b""
        self.decoder = hpack.Decoder()

    def get(self, path: str) -> int:
        stream = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", path),
        ]
        self.conn.send_headers(stream, headers, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        return stream

    def _fill(self, size: int) -> bool:
        while len(self.buffer) < size:
            more = self.sock.recv(65536)
            if not more:
                return False
            self.buffer += more
        return True

    def frame(self) -> Frame | None:
        """The next frame from the server (None when it closed)."""
        if not self._fill(9):
            return None
        frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
        if not self._fill(9 + length):
            return None
        frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
        self.buffer = self.buffer[9 + length :]
        if isinstance(frame, HeadersFrame):  # decoded in order: hpack's table
            frame.fields = dict(self.decoder.decode(frame.data))
        return frame

    def until(self, wanted) -> list[Frame]:
        """Frames up to and including the first that ``wanted`` accepts."""
        seen: list[Frame] = []
        while True:
            frame = self.frame()
            assert frame is not None, f"closed before the frame wanted: {seen}"
            seen.append(frame)
            if wanted(frame):
                return seen


def ends(frame: Frame, stream: int) -> bool:
    """Whether ``frame`` ends or resets ``stream``."""
    if frame.stream_id != stream:
        return False
    return isinstance(frame, RstStreamFrame) or "END_STREAM" in frame.flags


def test_http2_requests_while_stopping(server_factory):
    """Stopping, over HTTP/2: GOAWAY (NO_ERROR) while a follower's stream goes
    on; a stream opened anyway is 503 with x-console-end: stopping; the
    follower's stream is then reset (CANCEL), never ended."""
    server = server_factory(DEMO_CONFIG + SLOW_STOP)
    create_demo(server, "vm1")
    call = held_call(server)
    client = RawH2(server)
    follower = client.get("/consoleStream/vm1?offset=0")
    (head,) = [
        f
        for f in client.until(lambda f: isinstance(f, HeadersFrame))
        if isinstance(f, HeadersFrame)
    ]
    assert head.fields[":status"] == "200"

    stop_and_wait_for_the_port(server)
    before = client.until(lambda f: isinstance(f, GoAwayFrame))
    goaway = before[-1]
    assert goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
    assert goaway.last_stream_id >= follower
    assert not any(ends(f, follower) for f in before)

    late = client.get("/consoleStream/vm1")  # a client that ignores the GOAWAY
    answer = client.until(lambda f: ends(f, late))
    (head,) = [f for f in answer if isinstance(f, HeadersFrame) and f.stream_id == late]
    assert head.fields[":status"] == "503"
    assert head.fields["x-console-end"] == "stopping"
    assert not any(ends(f, follower) for f in answer)

    assert b" 200 " in finish_call(call)
    cut = client.until(lambda f: ends(f, follower))[-1]
    assert isinstance(cut, RstStreamFrame)
    assert cut.error_code == h2.errors.ErrorCodes.CANCEL
    while (frame := client.frame()) is not None:
        assert not isinstance(frame, DataFrame | HeadersFrame), frame
    assert server.wait(15) == 0
    assert "Traceback" not in server.log()
