"""Roles from the configuration, enforced on the real port: RPC and streams."""

from __future__ import annotations

import http.client
import random

import pytest

from tests.serverproc import client_context, wait_for
from tests.streamhelp import DEMO_CONFIG, Reader, create_demo, curl_base, stats
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

DENIED = 101


def _request(server, method: str, path: str, body: bytes | None = None) -> int:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=client_context(server.pki), timeout=10
    )
    conn.request(method, path + ("?follow=0" if method == "GET" else ""), body=body)
    response = conn.getresponse()
    response.read()
    return response.status


def _code(reply: dict) -> int:
    return reply["status"]["code"]


def _server_with_role(server_factory, role: str):
    """A server where the engine certificate has ``role``; a console made as admin."""
    admin = server_factory(DEMO_CONFIG, name="setup")
    create_demo(admin, "vm1")
    admin.stop()
    config = DEMO_CONFIG + f'\n[authorization]\n"engine" = "{role}"\n'
    server = server_factory(config, name="setup")  # same state: vm1 is restored
    wait_for(lambda: server.rpc().list()["vmList"], 15, "vm1 to be restored")
    return server


def _denials(server) -> list[dict]:
    return [entry for entry in server.audit() if entry["event"] == "denied"]


def test_viewer_reads_but_cannot_type_or_change(server_factory):
    """A viewer follows and reads; input and create/destroy are denied and audited."""
    server = _server_with_role(server_factory, "viewer")
    rpc = server.rpc()
    assert _code(rpc.ping()) == 0
    assert _code(rpc.consoleRead("vm1", 0, 100)) == 0
    assert _request(server, "GET", "/consoleStream/vm1") == 200
    assert _code(rpc.consoleWrite("vm1", "echo no\r")) == DENIED
    assert _code(rpc.destroy("vm1")) == DENIED
    assert (
        _code(
            rpc.create({"vmId": "x", "console": {"type": "spawn", "command": "demo"}})
        )
        == DENIED
    )
    assert _request(server, "POST", "/consoleStream/vm1", b"echo no\r") == 403
    assert [entry["identity"] for entry in _denials(server)] == ["engine"] * 4
    assert len(rpc.list()["vmList"]) == 1  # nothing changed


def test_operator_types_but_cannot_create_or_destroy(server_factory):
    """An operator sends input to consoles but cannot create or destroy them."""
    server = _server_with_role(server_factory, "operator")
    rpc = server.rpc()
    assert _code(rpc.consoleWrite("vm1", "echo yes\r")) == 0
    assert _request(server, "POST", "/consoleStream/vm1", b"echo yes\r") == 200
    assert _code(rpc.destroy("vm1")) == DENIED


def test_unmapped_certificate_may_do_nothing(server_factory):
    """With a mapping, a certificate it does not name gets nothing at all."""
    server = _server_with_role(server_factory, "admin")
    server.stop()
    config = DEMO_CONFIG + '\n[authorization]\n"someone-else" = "admin"\n'
    server = server_factory(config, name="setup")
    rpc = server.rpc()
    assert _code(rpc.ping()) == DENIED
    assert _request(server, "GET", "/consoleStream/vm1") == 403


# -- stream input by role, over HTTP/2 and HTTP/1.1 ---------------------------------

PROTOCOLS = {"--http2": "HTTP/2", "--http1.1": "HTTP/1.1"}


def _curl_post(server, tmp_path, version: str, query: str, text: str) -> Reader:
    """curl POSTs ``echo text`` to vm1's stream and prints the answer's head."""
    require_tool("curl", "curl")
    argv = [*curl_base(server), version, "-i", "-N", "--max-time", "60"]
    argv += ["--data-binary", f"echo {text}\r"]
    name = f"{version.strip('-')}{query.replace('?', '-').replace('=', '')}.out"
    return Reader([*argv, server.url(f"/consoleStream/vm1{query}")], tmp_path / name)


def _status_line(reader: Reader) -> str:
    """The protocol and status curl -i printed, as "HTTP/2 403"."""
    words = reader.data().split(b"\r\n", 1)[0].split()
    return b" ".join(words[:2]).decode(errors="replace")


@pytest.mark.parametrize("version", PROTOCOLS)
def test_viewer_stream_input_is_refused_on_both_protocols(
    server_factory, tmp_path, version
):
    """A viewer's POST and POST ?duplex=1 are 403 over HTTP/2 and HTTP/1.1."""
    server = _server_with_role(server_factory, "viewer")
    for query in ("", "?duplex=1"):
        text = f"viewer-{random.randrange(10**9)}"
        reader = _curl_post(server, tmp_path, version, query, text)
        try:
            reader.process.wait(60)
        finally:
            reader.stop()
        assert _status_line(reader) == f"{PROTOCOLS[version]} 403", (
            query,
            reader.data()[:300],
        )
    assert [(e["identity"], e["vmId"], e["method"]) for e in _denials(server)] == [
        ("engine", "vm1", "POST")
    ] * 2
    assert stats(server, "vm1")["writers"] == 0


@pytest.mark.parametrize("version", PROTOCOLS)
def test_operator_stream_input_is_served_on_both_protocols(
    server_factory, tmp_path, version
):
    """An operator's POST and POST ?duplex=1 reach the guest over HTTP/2 and
    HTTP/1.1: 200, and the guest echoes what was typed."""
    server = _server_with_role(server_factory, "operator")
    text = f"operator-{random.randrange(10**9)}"
    post = _curl_post(server, tmp_path, version, "", text)
    try:
        post.process.wait(60)
    finally:
        post.stop()
    assert _status_line(post) == f"{PROTOCOLS[version]} 200", post.data()
    assert post.data().endswith(b'{"written": %d}\n' % len(f"echo {text}\r"))
    text = f"duplex-{random.randrange(10**9)}"
    duplex = _curl_post(server, tmp_path, version, "?duplex=1", text)
    try:
        # The echo comes back on the same request: the input reached the guest.
        wait_for(
            lambda: f"\r\n{text}\r\n".encode() in duplex.data(),
            15,
            "the duplex echo",
        )
    finally:
        duplex.stop()
    assert _status_line(duplex) == f"{PROTOCOLS[version]} 200"
    assert _denials(server) == []
