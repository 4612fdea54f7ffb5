"""system.multicall against the real server: a burst of pty creates in one
request, alive at once and back after the server is killed; over HTTP/2 and
HTTP/1.1 (curl) as over Python's MultiCall."""

from __future__ import annotations

import os
import signal
import xmlrpc.client
from collections.abc import Iterator
from typing import Any

import pytest

from tests.serverproc import curl_rpc, wait_for
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

BURST = 20


@pytest.fixture
def ptys() -> Iterator[list[tuple[int, str]]]:
    """Ptys whose masters this test holds (an allowed owner), as a guest's."""
    pairs = [os.openpty() for _ in range(BURST)]
    yield [(master, os.ttyname(slave)) for master, slave in pairs]
    for pair in pairs:
        for fd in pair:
            os.close(fd)


def read_all(proxy: Any, vm_id: str) -> bytes:
    return proxy.consoleRead(vm_id, 0, 4096)["data"].data


def test_a_burst_of_pty_creates_in_one_request(server_factory, ptys):
    """Every console answers Done and reads its own guest; the registry holds
    them all after a SIGKILL (the journal was written before the answer)."""
    server = server_factory()
    proxy = server.rpc()
    burst = xmlrpc.client.MultiCall(proxy)
    for i, (_, path) in enumerate(ptys):
        burst.create({"vmId": f"vm{i}", "console": {"type": "pty", "path": path}})
    answers = list(burst())
    assert [a["status"]["code"] for a in answers] == [0] * BURST
    assert [a["vmList"][0]["vmId"] for a in answers] == [f"vm{i}" for i in range(BURST)]
    for i in (0, BURST - 1):
        os.write(ptys[i][0], f"guest {i}\r\n".encode())
        wait_for(
            lambda i=i: f"guest {i}".encode() in read_all(proxy, f"vm{i}"),
            10,
            f"vm{i}'s output",
        )
    assert b"guest" not in read_all(proxy, "vm1")

    server.signal(signal.SIGKILL)
    server.wait(10)
    again = server_factory()  # same state directory
    listed = again.rpc().list()["vmList"]
    assert sorted(vm["vmId"] for vm in listed) == sorted(f"vm{i}" for i in range(BURST))


@pytest.mark.parametrize("version,expected", [("--http2", "2"), ("--http1.1", "1.1")])
def test_curl_sends_a_multicall(server, version, expected):
    """A multicall body over HTTP/2 and HTTP/1.1: each call answered in order."""
    curl = require_tool("curl", "curl")
    calls = [
        {"methodName": "ping", "params": []},
        {"methodName": "getVmStats", "params": ["no-such-vm"]},
        {"methodName": "noSuchMethod", "params": []},
    ]
    body = xmlrpc.client.dumps((calls,), "system.multicall").encode()
    answer, used = curl_rpc(curl, server, version, body)
    assert used == expected
    pinged, stats, unknown = xmlrpc.client.loads(answer)[0][0]
    assert pinged[0]["status"]["code"] == 0
    assert stats[0]["status"]["code"] == 1
    assert unknown["faultCode"] == 8001


@pytest.mark.parametrize("version,expected", [("--http2", "2"), ("--http1.1", "1.1")])
def test_a_burst_near_the_body_limit_over_both_http_versions(server, version, expected):
    """500 creates in one 400 KB request, as curl sends it: every one Done,
    every VM listed (HTTP/2 takes such a body across many flow-control windows)."""
    curl = require_tool("curl", "curl")
    vnc = {"type": "vnc", "host": "127.0.0.1", "port": 5900}
    calls = [
        {"methodName": "create", "params": [{"vmId": f"vm-{i:04d}", "graphics": [vnc]}]}
        for i in range(500)
    ]
    body = xmlrpc.client.dumps((calls,), "system.multicall").encode()
    assert len(body) > 300_000
    answer, used = curl_rpc(curl, server, version, body)
    assert used == expected
    answers = xmlrpc.client.loads(answer)[0][0]
    assert [a[0]["status"]["code"] for a in answers] == [0] * 500
    assert len(server.rpc().list()["vmList"]) == 500
