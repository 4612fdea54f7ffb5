"""The client's tunnels against a stand-in CONNECT server on loopback TLS
(tests/tunnelfake.py): the library on the test's reactor, and the
``tunnel`` command as a user runs it, with plain sockets as the viewer.

The server's own tunnels are tested against these clients in the
end-to-end tests of the real server (test_e2e_viewers.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.clienthelp import DEMO_CONFIG, create, credentials
from tests.clihelp import client_args, demo_server, run_client
from tests.serverproc import wait_for
from tests.tunnelfake import CHUNK, FLOOD, FakeTunnelServer
from tests.tunnelhelp import TunnelCommand, recv_exactly
from vdsmconsole.client import (
    ConsoleClient,
    ConsoleUnavailable,
    HTTPError,
    NoSuchConsole,
    TLSError,
)
from vdsmconsole.testing import wait_until

pytestmark = pytest.mark.e2e

RSS_BOUND = 16 * 1024 * 1024


@pytest.fixture
def fake(pki) -> Iterator[FakeTunnelServer]:
    server = FakeTunnelServer(pki)
    yield server
    server.stop()


@pytest_twisted.async_yield_fixture
async def client(fake, pki):
    c = ConsoleClient("127.0.0.1", fake.port, credentials(pki), reactor, timeout=10)
    yield c
    await c.close()


# -- the library ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_tunnel_carries_bytes_both_ways_unchanged(client, fake):
    """tunnel() fires once the server said 200; bytes go both ways as they are,
    those that came with the answer first."""
    got = bytearray()
    tunnel = await client.tunnel("hello", "vnc", on_data=got.extend)
    payload = bytes(range(256)) * 64 + b"HTTP/1.1 200\r\n\r\n"
    tunnel.write(payload)
    await wait_until(lambda: len(got) >= 5 + len(payload), "the echo")
    assert bytes(got) == b"hello" + payload
    assert fake.tunnels() == ["CONNECT /consoleTunnel/hello?protocol=vnc HTTP/1.1"]
    tunnel.close()
    await tunnel.done


@pytest_twisted.ensureDeferred
async def test_a_token_goes_in_the_query(client, fake):
    """token= is sent as the tunnel's token parameter."""
    tunnel = await client.tunnel("echo", "serial", token="T" * 43)
    tunnel.close()
    assert fake.tunnels() == [
        f"CONNECT /consoleTunnel/echo?protocol=serial&token={'T' * 43} HTTP/1.1"
    ]


@pytest_twisted.ensureDeferred
async def test_refusals_raise_the_usual_errors_with_the_servers_line(client):
    """404 is NoSuchConsole and 502 ConsoleUnavailable, each with the first
    line the server sent (with or without a Content-Length)."""
    with pytest.raises(NoSuchConsole) as missing:
        await client.tunnel("missing1", "vnc")
    assert str(missing.value) == "no such VM missing1"
    with pytest.raises(ConsoleUnavailable) as down:
        await client.tunnel("down", "vnc")
    assert str(down.value) == "vnc endpoint of down at /nowhere refused the connection"


@pytest_twisted.ensureDeferred
async def test_a_refused_certificate_is_a_tls_error(fake, odd_certs, pki):
    """The server refusing our certificate is the client's usual TLSError."""
    cert, key = odd_certs["other_ca"]
    creds = credentials(pki)
    creds = type(creds)(creds.ca, cert, key)
    client = ConsoleClient("127.0.0.1", fake.port, creds, reactor, timeout=10)
    try:
        with pytest.raises(TLSError):
            await client.tunnel("echo", "vnc")
    finally:
        await client.close()


# -- the command ---------------------------------------------------------------


@pytest.fixture
def command(fake, pki, tmp_path):
    started: list[TunnelCommand] = []

    def start(vm_id: str) -> TunnelCommand:
        tunnel = TunnelCommand(fake.port, pki.root, tmp_path, vm_id)
        started.append(tunnel)
        return tunnel

    yield start
    for tunnel in started:
        tunnel.stop()


def test_each_local_connection_is_its_own_tunnel_until_a_signal(command, fake):
    """The command prints one line a viewer can use; two local connections are
    two tunnels, each carrying its own bytes; SIGINT ends it with 130."""
    tunnel = command("echo")
    port = wait_for(tunnel.listening, 30, "the listening line")
    assert tunnel.hint() == f"vncviewer 127.0.0.1::{port}"
    first = socket.create_connection(("127.0.0.1", port), timeout=10)
    second = socket.create_connection(("127.0.0.1", port), timeout=10)
    with first, second:
        first.sendall(b"one")
        second.sendall(b"two")
        assert recv_exactly(first, 3) == b"one"
        assert recv_exactly(second, 3) == b"two"
        assert len(fake.tunnels()) == 2
    assert tunnel.interrupt() == 128 + signal.SIGINT
    assert tunnel.err.read_text() == ""


def test_an_unknown_vm_ends_the_command_before_it_listens(command):
    """An unknown vmId: one line and exit 1, no port opened."""
    tunnel = command("missing2")
    assert tunnel.process.wait(30) == 1
    assert tunnel.out.read_text() == ""
    assert tunnel.err.read_text() == (
        "vdsmconsole-client: missing2: Virtual machine does not exist: missing2 "
        "(status 1)\n"
    )


def test_a_refused_tunnel_is_one_line_and_the_port_stays(command):
    """A tunnel the server refuses closes that local connection with one line
    on stderr; the command keeps listening."""
    tunnel = command("down")
    port = wait_for(tunnel.listening, 30, "the listening line")
    for attempt in (1, 2):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as viewer:
            assert viewer.recv(1) == b""
        wait_for(
            lambda n=attempt: tunnel.err.read_text().count("\n") == n,
            10,
            "the error line",
        )
    line = tunnel.err.read_text().splitlines()[0]
    assert re.fullmatch(
        r"vdsmconsole-client: tunnel for 127\.0\.0\.1:\d+: vnc endpoint of down "
        r"at /nowhere refused the connection",
        line,
    )
    assert tunnel.process.poll() is None


def test_a_busy_listen_port_is_one_line_and_exit_2(fake, pki, tmp_path):
    """--listen on a port another program holds: one line, exit 2."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        taken = other.getsockname()[1]
        tunnel = TunnelCommand(
            fake.port, pki.root, tmp_path, "echo", "vnc", "--listen", str(taken)
        )
        try:
            assert tunnel.process.wait(30) == 2
        finally:
            tunnel.stop()
    assert tunnel.err.read_text() == (
        f"vdsmconsole-client: cannot listen on 127.0.0.1:{taken}: "
        "Address already in use\n"
    )


def wait_stalled(progress, quiet: float = 2.0, timeout: float = 120.0) -> int:
    """Until ``progress()`` stays the same for ``quiet`` seconds; its value."""
    state = {"value": progress(), "since": time.monotonic()}

    def stalled() -> bool:
        now, value = time.monotonic(), progress()
        if value != state["value"]:
            state["value"], state["since"] = value, now
            return False
        return now - state["since"] >= quiet

    wait_for(stalled, timeout, "the transfer to stall")
    return state["value"]


def test_a_viewer_that_stops_reading_stops_the_flood(command, fake):
    """Backpressure towards the server: while the local viewer reads nothing,
    the server's flood stalls and the client's memory stays bounded; then
    every byte arrives, in order."""
    tunnel = command("flood")
    port = wait_for(tunnel.listening, 30, "the listening line")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as viewer:
        wait_for(lambda: fake.sent > 0, 30, "the flood to start")
        base = tunnel.rss()
        stalled_at = wait_stalled(lambda: fake.sent)
        assert stalled_at < FLOOD / 2, "the client read the flood regardless"
        assert tunnel.rss() - base < RSS_BOUND
        block = bytes(range(256)) * (CHUNK // 256)
        expected = hashlib.sha256(block * (FLOOD // CHUNK)).hexdigest()
        digest, count = hashlib.sha256(), 0
        while chunk := viewer.recv(1 << 20):
            digest.update(chunk)
            count += len(chunk)
    assert (count, digest.hexdigest()) == (FLOOD, expected)


def test_a_server_that_stops_reading_stops_the_viewer(command, fake):
    """Backpressure towards the viewer: while the server reads nothing, the
    client stops reading the viewer (its sends block) with memory bounded;
    then every byte arrives, in order, and the viewer leaving closes the
    tunnel."""
    tunnel = command("sink")
    port = wait_for(tunnel.listening, 30, "the listening line")
    block = os.urandom(CHUNK)
    sent = {"bytes": 0}
    viewer = socket.create_connection(("127.0.0.1", port), timeout=60)

    def write() -> None:
        with viewer:
            while sent["bytes"] < FLOOD:
                viewer.sendall(block)
                sent["bytes"] += len(block)
            viewer.shutdown(socket.SHUT_WR)
            viewer.recv(1)  # until the client closes

    writer = threading.Thread(target=write, daemon=True)
    wait_for(lambda: fake.tunnels(), 30, "the tunnel")
    base = tunnel.rss()
    writer.start()
    try:
        stalled_at = wait_stalled(lambda: sent["bytes"])
        assert stalled_at < FLOOD / 2, "the client read the viewer regardless"
        assert tunnel.rss() - base < RSS_BOUND
    finally:
        fake.release.set()
    writer.join(120)
    wait_for(lambda: fake.ended == 1, 60, "the tunnel to close")
    assert fake.received == FLOOD
    assert (
        fake.digest.hexdigest() == hashlib.sha256(block * (FLOOD // CHUNK)).hexdigest()
    )


# -- against the real server ---------------------------------------------------


@pytest_twisted.async_yield_fixture
async def real(server_factory, pki):
    """The real server with a demo guest ``vm1``, and a client of it."""
    server = server_factory(DEMO_CONFIG)
    c = ConsoleClient("127.0.0.1", server.port, credentials(pki), reactor, timeout=10)
    await create(c, "vm1")
    yield c
    await c.close()


@pytest_twisted.ensureDeferred
async def test_a_serial_tunnel_to_the_real_server_types_and_reads(real):
    """Through the real server's serial tunnel the guest gets what we type
    and we get its output, with no HTTP framing."""
    got = bytearray()
    tunnel = await real.tunnel("vm1", "serial", on_data=got.extend)
    tunnel.write(b"echo through-the-tunnel\r")
    await wait_until(lambda: b"through-the-tunnel\r\n" in got, "the echo", timeout=10)
    assert b"\r\n0\r\n" not in got  # no chunk framing
    tunnel.close()
    await tunnel.done


@pytest_twisted.ensureDeferred
async def test_the_real_servers_refusals_are_the_usual_errors(real):
    """Unknown vmId and no such console on the VM: NoSuchConsole with the
    server's line; an unknown protocol: HTTPError 400."""
    with pytest.raises(NoSuchConsole) as unknown:
        await real.tunnel("nosuch", "vnc")
    assert "nosuch" in str(unknown.value)
    with pytest.raises(NoSuchConsole) as no_vnc:
        await real.tunnel("vm1", "vnc")
    assert "vm1" in str(no_vnc.value) and "vnc" in str(no_vnc.value)
    with pytest.raises(HTTPError) as bad:
        await real.tunnel("vm1", "telnet")
    assert bad.value.code == 400


def test_remote_console_prints_the_url_and_token_of_the_real_server(
    server_factory, pki
):
    """remote-console prints url, token and expires (a token the tunnel then
    takes); --json prints the answer as is; an unknown VM is one line and
    the RPC's status."""
    server = demo_server(server_factory, "vm1")
    args = ["remote-console", "vm1", "--protocol", "serial", "--ttl", "60"]
    done = run_client(client_args(server, pki, *args, "--single-use"))
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert list(lines) == ["url", "token", "expires"]
    assert lines["url"] == (
        f"https://127.0.0.1:{server.port}/consoleTunnel/vm1?protocol=serial"
        f"&token={lines['token']}"
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+\)", lines["expires"])
    shown = run_client(client_args(server, pki, "--json", *args))
    assert shown.returncode == 0, shown.stderr
    answer = json.loads(shown.stdout)
    assert answer["console"]["protocol"] == "serial"
    assert answer["status"]["code"] == 0
    missing = run_client(
        client_args(server, pki, "remote-console", "nosuch", "--protocol", "vnc")
    )
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "nosuch" in missing.stderr


@pytest_twisted.ensureDeferred
async def test_a_single_use_token_opens_one_tunnel(real):
    """A token from remote_console() opens a tunnel once (single use); the
    second time the server refuses it."""
    answer = await real.remote_console("vm1", "serial", ttl=60, single_use=True)
    token = answer["console"]["token"]
    tunnel = await real.tunnel("vm1", "serial", token=token)
    tunnel.close()
    with pytest.raises(HTTPError):
        await real.tunnel("vm1", "serial", token=token)
