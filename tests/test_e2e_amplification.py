"""Requests that ask for much, hide their path, or bend HTTP/1.1, on the real server.

Issue 11: a ``list`` naming one vmId 35,000 times was answered with 47 MB; a
percent-encoded stream path routed to the stream but skipped its early
dispatch (a POST's body was swallowed, never answered); HTTP/1.1 without
``Host`` was served; ``Expect: 100-continue`` on an oversized body got
``100 Continue`` before its 413.  One server for the module, with a bystander
following ``vm1`` throughout; after every test it must still be served.
"""

from __future__ import annotations

import json
import ssl
import xmlrpc.client
from typing import Any

import pytest

from tests.hardening import (
    H2Client,
    demo_server,
    http_exchange,
    marker,
    read_until_closed,
    status_of,
    still_serving_after,
    tls_connect,
)
from tests.serverproc import ServerProcess, wait_for
from tests.streamhelp import DEMO_CONFIG, console_bytes

pytestmark = pytest.mark.e2e

MAX_BODY = 2 * 1024 * 1024  # room for 35,000 vmIds in one call
CONFIG = DEMO_CONFIG + f"\n[server]\nrpc_max_body = {MAX_BODY}\n"
MISS_PARAM = 11
MAX_LIST_IDS = 4096  # the documented bound (rpc.MAX_LIST_IDS)


@pytest.fixture(scope="module")
def served(tmp_path_factory, pki):
    with demo_server(pki, tmp_path_factory.mktemp("amplify"), CONFIG) as running:
        yield running


@pytest.fixture
def server(served) -> Any:
    """The module's server; afterwards it must still serve everyone else."""
    with still_serving_after(served) as server:
        yield server


def raw_rpc(server: ServerProcess, method: str, *params: Any) -> bytes:
    """The raw HTTP answer to one XML-RPC call (the whole response, bytes)."""
    body = xmlrpc.client.dumps(params, method).encode()
    return http_exchange(
        server,
        b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )


def rpc_result(answer: bytes) -> dict:
    assert status_of(answer) == 200, answer[:300]
    (result,), _ = xmlrpc.client.loads(answer.split(b"\r\n\r\n", 1)[1])
    return result


# -- list: duplicates and bounds -------------------------------------------------


def test_list_with_35000_duplicates_is_refused_small(server):
    """list(True, [vmId] * 35000): MissParam in a small answer, not 47 MB."""
    answer = raw_rpc(server, "list", True, ["vm1"] * 35000)
    result = rpc_result(answer)
    assert result["status"]["code"] == MISS_PARAM, result["status"]
    assert str(MAX_LIST_IDS) in result["status"]["message"]
    assert len(answer) < 2000


def test_list_collapses_duplicates_up_to_the_bound(server):
    """MAX_LIST_IDS names of one vmId: one entry; the answer is the registry's size."""
    one = rpc_result(raw_rpc(server, "list", True, ["vm1"]))
    answer = raw_rpc(server, "list", True, ["vm1"] * MAX_LIST_IDS)
    many = rpc_result(answer)
    assert many["status"]["code"] == 0
    assert [e["vmId"] for e in many["vmList"]] == ["vm1"]
    everything = raw_rpc(server, "list", True)
    assert len(answer) <= len(everything)
    assert many["vmList"] == one["vmList"]


def test_list_keeps_the_order_asked_for_without_repeats(server):
    """Duplicates collapse to the first mention; unknown vmIds are left out."""
    result = rpc_result(
        raw_rpc(server, "list", False, ["sink", "vm1", "sink", "nosuch", "vm1"])
    )
    assert [e["vmId"] for e in result["vmList"]] == ["sink", "vm1"]


def test_list_over_the_bound_is_missparam_even_when_distinct(server):
    """MAX_LIST_IDS + 1 names, all distinct and unknown: MissParam."""
    names = [f"vm-{i}" for i in range(MAX_LIST_IDS + 1)]
    assert rpc_result(raw_rpc(server, "list", False, names))["status"]["code"] == 11


# -- a percent-encoded stream path -----------------------------------------------


ENCODED_PATHS = [
    "/%63onsoleStream/vm1",
    "/consoleStream/%76m1",
    "/%63onsoleStream/%76m1",
]


@pytest.mark.parametrize("path", ENCODED_PATHS)
def test_encoded_stream_post_is_answered_over_http1(server, path):
    """POST to an encoded stream path: the body reaches the guest, 200 {"written"}."""
    text = marker()
    body = f"echo {text}\r".encode()
    answer = http_exchange(
        server,
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        + b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert status_of(answer) == 200, answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"written": len(body)}
    wait_for(
        lambda: f"\r\n{text}\r\n".encode() in console_bytes(server, "vm1"),
        15,
        "the guest to echo the marker",
    )


@pytest.mark.parametrize("path", ENCODED_PATHS)
def test_encoded_stream_post_is_answered_over_http2(server, path):
    """The same over HTTP/2: the stream is dispatched early and answered."""
    text = marker()
    body = f"echo {text}\r".encode()
    client = H2Client(server)
    try:
        status, data, _ = client.request(
            [
                (":method", "POST"),
                (":path", path),
                (":scheme", "https"),
                (":authority", "localhost"),
            ],
            body,
        )
    finally:
        client.close()
    assert status == 200
    assert json.loads(data) == {"written": len(body)}
    wait_for(
        lambda: f"\r\n{text}\r\n".encode() in console_bytes(server, "vm1"),
        15,
        "the guest to echo the marker",
    )


def test_encoded_path_to_an_unknown_console_is_404_at_once(server):
    """An encoded stream POST for an unknown vmId: 404 before the body is sent."""
    sock = tls_connect(server)
    try:
        sock.sendall(
            b"POST /%63onsoleStream/nosuch HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        answer = read_until_closed(sock, stop=b"not found")
    finally:
        sock.close()
    assert status_of(answer) == 404, answer[:300]


# -- HTTP/1.1 rules: Host and Expect ---------------------------------------------


PING = xmlrpc.client.dumps((), "ping").encode()


@pytest.mark.parametrize(
    "host_lines",
    [b"", b"Host: a\r\nHost: b\r\n"],
    ids=["no-host", "two-hosts"],
)
@pytest.mark.parametrize("path", [b"/RPC2", b"/consoleStream/vm1"])
def test_http11_without_exactly_one_host_is_400(server, host_lines, path):
    """HTTP/1.1 with no Host, or two: 400 and closed (RFC 9112 section 3.2)."""
    answer = http_exchange(
        server,
        b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
        % (path, host_lines, len(PING), PING),
    )
    assert status_of(answer) == 400, answer[:300]
    assert answer.endswith(
        b"\r\n\r\nan HTTP/1.1 request needs exactly one Host header\n"
    )
    assert answer.count(b"\r\n\r\n") == 1, answer  # refused, not also served


def test_http10_without_host_is_served(server):
    """HTTP/1.0 has no Host rule: a ping is answered."""
    answer = http_exchange(
        server,
        b"POST /RPC2 HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(PING), PING),
    )
    assert answer.split(b" ", 2)[1] == b"200", answer[:300]
    (result,), _ = xmlrpc.client.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert result["status"]["code"] == 0


def first_answer(sock: ssl.SSLSocket) -> bytes:
    """What the server sends first, within a few seconds (b"" if nothing)."""
    sock.settimeout(5)
    try:
        return sock.recv(65536)
    except TimeoutError:
        return b""


def test_expect_continue_on_an_oversized_body_is_413_at_once(server):
    """Expect: 100-continue with Content-Length over rpc_max_body: 413, no 100."""
    sock = tls_connect(server)
    try:
        sock.sendall(
            b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1)
        )
        answer = first_answer(sock)
        answer += read_until_closed(sock)
    finally:
        sock.close()
    assert status_of(answer) == 413, answer[:300]
    assert b"100 Continue" not in answer


def test_expect_continue_within_the_cap_still_continues(server):
    """Expect: 100-continue on a body within the cap: 100 Continue, then the answer."""
    sock = tls_connect(server)
    try:
        sock.sendall(
            b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(PING)
        )
        assert first_answer(sock).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(PING)
        answer = read_until_closed(sock)
    finally:
        sock.close()
    assert status_of(answer) == 200, answer[:300]


def test_expect_continue_on_a_refused_stream_post_gets_no_100(server):
    """A stream POST answered at once (404): no 100 Continue, before or after."""
    sock = tls_connect(server)
    try:
        sock.sendall(
            b"POST /consoleStream/nosuch HTTP/1.1\r\nHost: x\r\n"
            b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        answer = read_until_closed(sock)
    finally:
        sock.close()
    assert status_of(answer) == 404, answer[:300]
    assert b"100 Continue" not in answer
