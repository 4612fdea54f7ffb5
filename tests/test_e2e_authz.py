"""Roles from the configuration, enforced on the real port: RPC and streams."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.serverproc import client_context, wait_for
from tests.streamhelp import DEMO_CONFIG, create_demo

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
    audit = server.state_dir / "audit.log"
    return [
        entry
        for entry in map(json.loads, audit.read_text().splitlines())
        if entry["event"] == "denied"
    ]


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
