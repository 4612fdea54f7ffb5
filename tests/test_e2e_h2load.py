"""Load over HTTP/2 with h2load (nghttp2-client): many streams per connection.

h2load cannot present a client certificate, so it reaches the server through
``tests/tlsbridge.py`` (h2c to the bridge, one mTLS connection with ALPN h2
per h2load connection); see that module for why.  Each run: 4 connections,
50 concurrent streams on each, 2,000 requests (200 for a whole 1 MB
console); no request may fail, every status is 2xx, the server's RSS stays
within a bound, and its log holds no traceback.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.h2help import PING, RssWatch, flood
from tests.serverproc import ServerProcess, wait_for
from tests.streamhelp import DEMO_CONFIG, create_demo
from tests.tlsbridge import TLSBridge

pytestmark = pytest.mark.e2e

MiB = 1 << 20
CONNECTIONS, STREAMS, REQUESTS = 4, 50, 2000
# What the server may hold per stream at once: its answer, or at most
# client_buffer_bytes and a 64 KiB write and a 16 KiB frame past it; 200
# streams are open at once.  The rest is TLS and h2 state for 4 connections
# and the RSS noise of a busy server.
PER_STREAM = 256 * 1024 + 64 * 1024 + 16 * 1024
SLACK = 10 * MiB
SUMMARY = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
    r"(\d+) failed, (\d+) errored, (\d+) timeout"
)
CODES = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


@pytest.fixture(scope="module")
def bridged(tmp_path_factory, pki) -> Iterator[tuple[ServerProcess, int, Path]]:
    """A server with a console that retains 1 MB, and a bridge to it."""
    require_tool("h2load", "nghttp2-client")
    workdir = tmp_path_factory.mktemp("h2load")
    server = ServerProcess(pki, workdir, DEMO_CONFIG)
    bridge = None
    try:
        server.start()
        create_demo(server, "vm1")
        flood(server, "vm1", 1000 * 1000)
        bridge = TLSBridge(server)
        port = bridge.start()
        yield server, port, workdir
    finally:
        if bridge is not None:
            bridge.stop()
        server.stop()


def h2load(
    server: ServerProcess, port: int, path: str, n: int, *extra: str
) -> tuple[str, int]:
    """Run h2load; its output, and the server's highest RSS growth meanwhile."""
    watch = RssWatch(server)
    argv = ["h2load", "-n", str(n), "-c", str(CONNECTIONS), "-m", str(STREAMS)]
    with subprocess.Popen(
        [*argv, *extra, f"http://127.0.0.1:{port}{path}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as load:

        def finished() -> bool:
            watch.samples.append(watch.growth())
            return load.poll() is not None

        try:
            wait_for(finished, 300, "h2load to finish")
        finally:
            load.kill()
        output = load.stdout.read() if load.stdout else ""
    assert load.returncode == 0, output
    return output, max(watch.samples)


def assert_all_succeeded(output: str, requests: int) -> None:
    summary = SUMMARY.search(output)
    codes = CODES.search(output)
    assert summary and codes, output
    total, started, done, succeeded, failed, errored, timeout = map(
        int, summary.groups()
    )
    assert (total, started, done, succeeded) == (requests,) * 4, output
    assert (failed, errored, timeout) == (0, 0, 0), output
    assert int(codes.group(1)) == requests, output


@pytest.mark.parametrize(
    "path,requests,answer",
    [
        ("/consoleStream/vm1?tail=16384&follow=0", REQUESTS, 16384),
        ("/consoleStream/vm1?offset=0&follow=0", 200, PER_STREAM),  # 1 MB each
    ],
    ids=["tail", "retained"],
)
def test_h2load_followers(bridged, path, requests, answer):
    """follow=0 GETs, 50 at a time on each of 4 connections: all 200, memory
    bounded, no traceback."""
    server, port, _ = bridged
    log_start = len(server.log())
    output, grew = h2load(server, port, path, requests)
    assert_all_succeeded(output, requests)
    assert grew < CONNECTIONS * STREAMS * answer + SLACK, grew
    assert "Traceback" not in server.log()[log_start:]


def test_h2load_rpc(bridged):
    """2,000 XML-RPC pings on /RPC2, 50 at a time on each of 4 connections:
    all 200, memory bounded, no traceback."""
    server, port, workdir = bridged
    body = workdir / "ping.xml"
    body.write_bytes(PING)
    log_start = len(server.log())
    output, grew = h2load(
        server, port, "/RPC2", REQUESTS, "-d", str(body), "-H", "content-type: text/xml"
    )
    assert_all_succeeded(output, REQUESTS)
    assert grew < CONNECTIONS * STREAMS * 4096 + SLACK, grew  # answers of 361 bytes
    assert "Traceback" not in server.log()[log_start:]
