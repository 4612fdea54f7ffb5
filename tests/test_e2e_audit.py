"""The audit log of the real server: every attach, detach and state change.

``<state_dir>/audit.log`` holds one JSON record per line.  Each test reads it
back and checks the event, the certificate's identity (the client
certificate's CN, ``engine``) and the vmId, for RPCs and for streams over
HTTP/2 and HTTP/1.1.
"""

from __future__ import annotations

import random
import xmlrpc.client

import pytest

from tests.serverproc import ServerProcess, wait_for
from tests.streamhelp import DEMO_CONFIG, Reader, create_demo, curl_base, stats
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

IDENTITY = "engine"  # the CN of the client certificate every test here uses


def records(server: ServerProcess, event: str, vm_id: str, **fields) -> list[dict]:
    """The ``event`` records for ``vm_id`` whose ``fields`` have these values."""
    return [
        entry
        for entry in server.audit()
        if entry["event"] == event
        and entry.get("vmId") == vm_id
        and all(entry.get(name) == value for name, value in fields.items())
    ]


def one_record(server: ServerProcess, event: str, vm_id: str, **fields) -> dict:
    """Wait for the one ``event`` record for ``vm_id`` with these ``fields``;
    it names the client certificate's identity."""
    (entry,) = wait_for(
        lambda: records(server, event, vm_id, **fields), 10, f"the {event} record"
    )
    assert entry["identity"] == IDENTITY, entry
    assert isinstance(entry["time"], float | int), entry
    return entry


def test_create_write_and_destroy_are_audited(server_factory):
    """create, consoleWrite and destroy each leave one record: who, which vmId."""
    server = server_factory(DEMO_CONFIG)
    vm_id = f"audit-{random.randrange(10**6)}"
    create_demo(server, vm_id)
    entry = one_record(server, "create", vm_id)
    assert entry["console"]["type"] == "spawn", entry
    assert entry["console"]["command"] == "demo", entry
    data = b"echo audited\r"
    reply = server.rpc().consoleWrite(vm_id, xmlrpc.client.Binary(data))
    assert reply["status"]["code"] == 0, reply
    one_record(server, "consoleWrite", vm_id, bytes=len(data))
    assert server.rpc().destroy(vm_id)["status"]["code"] == 0
    one_record(server, "destroy", vm_id)
    # Read-only calls change nothing and leave no record.
    server.rpc().getVmStats(vm_id)
    server.rpc().consoleRead(vm_id, 0, 10)
    events = [e["event"] for e in server.audit() if e.get("vmId") == vm_id]
    assert events == ["create", "consoleWrite", "destroy"], events


def _curl(server, tmp_path, version: str, query: str, body: str | None) -> Reader:
    require_tool("curl", "curl")
    argv = [*curl_base(server), version, "-N", "--max-time", "60"]
    if body is not None:
        argv += ["--data-binary", body]
    out = tmp_path / f"curl-{random.randrange(10**9)}.out"
    return Reader([*argv, server.url(f"/consoleStream/vm1{query}")], out)


@pytest.mark.parametrize("version", ["--http2", "--http1.1"])
def test_stream_attach_and_detach_are_audited(server_factory, tmp_path, version):
    """A follower, a writer and a duplex session each leave an attach and a
    detach record, with the identity, vmId, mode and what went through."""
    server = server_factory(DEMO_CONFIG)
    create_demo(server, "vm1")
    start = stats(server, "vm1")["nextOffset"]

    follower = _curl(server, tmp_path, version, "?offset=0&follow=0", None)
    assert follower.process.wait(60) == 0
    one_record(server, "attach", "vm1", mode="follow", offset=0)
    one_record(server, "detach", "vm1", mode="follow", endOffset=start, bytesSent=start)
    assert len(follower.data()) == start

    body = "echo sent\r"
    writer = _curl(server, tmp_path, version, "", body)
    assert writer.process.wait(60) == 0
    one_record(server, "attach", "vm1", mode="send")
    one_record(server, "detach", "vm1", mode="send", bytesWritten=len(body))

    body = "echo both\r"
    duplex = _curl(server, tmp_path, version, "?duplex=1", body)
    try:
        wait_for(lambda: b"\r\nboth\r\n" in duplex.data(), 15, "the duplex echo")
        attach = one_record(server, "attach", "vm1", mode="duplex")
        assert records(server, "detach", "vm1", mode="duplex") == []  # still on
    finally:
        duplex.stop()
    detach = one_record(server, "detach", "vm1", mode="duplex")
    assert detach["bytesWritten"] == len(body)
    assert detach["offset"] == attach["offset"]
    assert detach["endOffset"] == detach["offset"] + detach["bytesSent"]
    assert detach["bytesSent"] >= len(duplex.data()) > 0
