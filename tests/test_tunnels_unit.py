"""Tunnels without sockets: the query, the roles, and a serial tunnel over an
in-memory transport on a Clock (the connection taken from HTTP, no idle
timeout, the server's stop and a destroy)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import resource

from vdsmconsole.core.interfaces import DESTROYED, SERVER_STOPPING, SourceState
from vdsmconsole.server.audit import AuditLog
from vdsmconsole.server.authz import Authorizer
from vdsmconsole.server.config import Config
from vdsmconsole.server.http.resources import Root
from vdsmconsole.server.http.site import ConsoleSite
from vdsmconsole.server.service import site_limits
from vdsmconsole.server.tunnels.query import (
    Refusal,
    TunnelQuery,
    lower_role,
    parse_tunnel_query,
)
from vdsmconsole.server.tunnels.resource import install_tunnels
from vdsmconsole.server.tunnels.tunnel import cut_tunnels
from vdsmconsole.status import Code, StatusError, no_vm_message
from vdsmconsole.testing import FakeSource, make_console

TOKEN = "A" * 43


def test_query_takes_a_protocol_and_maybe_a_token():
    """protocol is required and known; a token has the token's shape."""
    assert parse_tunnel_query({b"protocol": [b"vnc"]}) == TunnelQuery("vnc")
    assert parse_tunnel_query(
        {b"protocol": [b"serial"], b"token": [TOKEN.encode()]}
    ) == TunnelQuery("serial", TOKEN)


@pytest.mark.parametrize(
    "args",
    [
        {},
        {b"protocol": [b"ssh"]},
        {b"protocol": [b"vnc", b"vnc"]},
        {b"protocol": [b"vnc"], b"token": [b"short"]},
        {b"protocol": [b"vnc"], b"token": [b"\xff" * 43]},
        {b"protocol": [b"vnc"], b"offset": [b"0"]},
    ],
)
def test_bad_queries_are_400(args):
    """Missing, unknown or repeated protocol, a malformed token, an unknown
    parameter: 400, and the message never echoes the token."""
    with pytest.raises(Refusal) as caught:
        parse_tunnel_query(args)
    assert caught.value.code == 400
    assert "short" not in caught.value.message


def test_lower_role():
    """A token never raises a role: the lower of the two wins."""
    assert lower_role("admin", "viewer") == "viewer"
    assert lower_role("viewer", "operator") == "viewer"
    assert lower_role("operator", "admin") == "operator"


# -- a serial tunnel over a StringTransport ------------------------------------


class NoRPC(resource.Resource):
    isLeaf = True


def connect(site: ConsoleSite) -> tuple[Any, StringTransport]:
    """The site's protocol over an in-memory transport, as accepted."""
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    protocol = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def status_line(transport: StringTransport) -> bytes:
    return transport.value().split(b"\r\n", 1)[0]


class FakeRegistry:
    def __init__(self, console: Any) -> None:
        self.console = console
        self.destroyed: list[Any] = []

    def get(self, vm_id: str) -> Any:
        if vm_id != "vm1":
            raise StatusError(Code.NO_VM, no_vm_message(vm_id))
        return self.console

    def endpoint(self, vm_id: str, protocol: str) -> Any:
        self.get(vm_id)
        raise StatusError(Code.NO_CONSOLE, f"VM {vm_id} has no {protocol}")


class FakeContext:
    def __init__(self, console: Any, clock: Clock) -> None:
        self.registry = FakeRegistry(console)
        self.audit = AuditLog(None)
        self.authz = Authorizer()  # no mapping: everyone is admin
        self.reactor = clock
        self.tokens = None


def tunnel_site(clock: Clock) -> tuple[ConsoleSite, FakeSource, Any]:
    source = FakeSource(clock)
    console = make_console(source)
    root = Root(NoRPC())
    site = ConsoleSite(root, clock, site_limits(Config()))
    install_tunnels(site, root, FakeContext(console, clock))  # type: ignore[arg-type]
    return site, source, console


CONNECT = b"CONNECT /consoleTunnel/vm1?protocol=serial HTTP/1.1\r\nHost: x\r\n\r\n"


def test_bytes_after_connect_are_the_tunnels_not_http():
    """What follows the CONNECT's headers, in the same read or later, goes
    to the guest as it is, even when it looks like HTTP."""
    clock = Clock()
    site, source, _ = tunnel_site(clock)
    protocol, transport = connect(site)
    protocol.dataReceived(CONNECT + b"GET / HTTP/1.1\r\n")
    assert transport.value() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    protocol.dataReceived(b"Host: x\r\n\r\n")
    assert b"".join(source.written) == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    assert len(site.tunnels) == 1


def test_serial_tunnel_output_is_raw_and_never_idle_timed_out():
    """The console's output reaches the tunnel with no framing, and a quiet
    tunnel outlives Twisted's 60 s idle timeout by far."""
    clock = Clock()
    site, source, _ = tunnel_site(clock)
    protocol, transport = connect(site)
    protocol.dataReceived(CONNECT)
    transport.clear()
    source.emit(b"login: ")
    assert transport.value() == b"login: "
    clock.advance(3600)
    assert not transport.disconnecting


def test_stop_cuts_and_destroy_closes_a_serial_tunnel():
    """The server's stop cuts a tunnel (abort); a destroyed console closes it."""
    clock = Clock()
    site, _, console = tunnel_site(clock)
    protocol, transport = connect(site)
    protocol.dataReceived(CONNECT)
    cut_tunnels(site)
    assert transport.disconnecting and not site.tunnels
    site, _, console = tunnel_site(clock)
    protocol, transport = connect(site)
    protocol.dataReceived(CONNECT)
    console.stop(DESTROYED)
    assert transport.disconnecting and not site.tunnels


def test_console_stopping_with_the_server_cuts_the_tunnel():
    """A console stopped by the server's stop cuts its serial tunnels."""
    clock = Clock()
    site, _, console = tunnel_site(clock)
    protocol, transport = connect(site)
    protocol.dataReceived(CONNECT)
    console.stop(SERVER_STOPPING)
    assert transport.disconnecting and not site.tunnels


@pytest.mark.parametrize(
    ("head", "code"),
    [
        (CONNECT.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\n"), b"400"),
        (
            CONNECT.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n"),
            b"400",
        ),
        (CONNECT.replace(b"vm1", b"vm2"), b"404"),
        (CONNECT.replace(b"serial", b"rdp"), b"404"),
        (CONNECT.replace(b"?protocol=serial", b""), b"400"),
    ],
)
def test_refusals_close_the_connection(head, code):
    """A refused CONNECT is answered and closed: nothing after it is parsed."""
    clock = Clock()
    site, source, _ = tunnel_site(clock)
    protocol, transport = connect(site)
    protocol.dataReceived(head + b"hello")
    assert status_line(transport).split(b" ")[1] == code
    assert transport.disconnecting
    assert source.written == [] and not site.tunnels


def test_serial_tunnel_to_a_down_console_is_503():
    """A serial console whose guest is down is 503, as a duplex POST is."""
    clock = Clock()
    site, source, _ = tunnel_site(clock)
    source.set_state(SourceState.DOWN, "gone")
    protocol, transport = connect(site)
    protocol.dataReceived(CONNECT)
    assert status_line(transport) == b"HTTP/1.1 503 Service Unavailable"
    assert transport.disconnecting and not site.tunnels


def test_guest_not_taking_input_stops_reading_the_viewer_from_the_start():
    """Input that came with the CONNECT, to a guest that takes none: the
    viewer is not read on until the guest drains (nothing queued meanwhile)."""
    clock = Clock()
    site, source, _ = tunnel_site(clock)
    source.input_full()
    protocol, transport = connect(site)
    protocol.dataReceived(CONNECT + b"early")
    assert transport.producerState == "paused"
    assert source.written == []
    source.input_drained()
    assert source.written == [b"early"]
    assert transport.producerState == "producing"
