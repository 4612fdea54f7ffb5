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
from tests.serverproc import ServerProcess
from tests.streamhelp import DEMO_CONFIG, create_demo
from tests.tlsbridge import TLSBridge

pytestmark = pytest.mark.e2e

MiB = 1 << 20
CONNECTIONS, STREAMS, REQUESTS = 4, 50, 2000
# 200 streams at once, each answer at most 16 KiB plus headers, and each
# stream's queue bounded by client_buffer_bytes anyway; h2load reads at once.
# The rest is TLS and h2 state for 4 connections and the RSS noise.
RSS_BOUND = 20 * MiB
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


def h2load(port: int, path: str, requests: int, *extra: str) -> str:
    out = subprocess.run(
        [
            "h2load",
            "-n",
            str(requests),
            "-c",
            str(CONNECTIONS),
            "-m",
            str(STREAMS),
            *extra,
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


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
    "path,requests",
    [
        ("/consoleStream/vm1?tail=16384&follow=0", REQUESTS),
        ("/consoleStream/vm1?offset=0&follow=0", 200),  # 1 MB each
    ],
    ids=["tail", "retained"],
)
def test_h2load_followers(bridged, path, requests):
    """follow=0 GETs, 50 at a time on each of 4 connections: all 200, memory
    bounded, no traceback."""
    server, port, _ = bridged
    log_start = len(server.log())
    watch = RssWatch(server)
    output = h2load(port, path, requests)
    assert_all_succeeded(output, requests)
    assert watch.growth() < RSS_BOUND
    assert "Traceback" not in server.log()[log_start:]


def test_h2load_rpc(bridged):
    """2,000 XML-RPC pings on /RPC2, 50 at a time on each of 4 connections:
    all 200, memory bounded, no traceback."""
    server, port, workdir = bridged
    body = workdir / "ping.xml"
    body.write_bytes(PING)
    log_start = len(server.log())
    watch = RssWatch(server)
    output = h2load(
        port, "/RPC2", REQUESTS, "-d", str(body), "-H", "content-type: text/xml"
    )
    assert_all_succeeded(output, REQUESTS)
    assert watch.growth() < RSS_BOUND
    assert "Traceback" not in server.log()[log_start:]
