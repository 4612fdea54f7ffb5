"""EagerServer: small writes go to the kernel at once, large ones are gathered."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor

from vdsmconsole.transports import EAGER_MAX, EagerServer


@pytest.fixture
def pair() -> Iterator[tuple[EagerServer, socket.socket, MemoryReactor]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    reactor = MemoryReactor()
    transport = EagerServer(ours, Protocol(), ("127.0.0.1", 1), None, 1, reactor)
    yield transport, theirs, reactor
    ours.close()
    theirs.close()


def received(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 20)
    except BlockingIOError:
        return b""


def test_a_small_write_is_sent_without_waiting_for_the_reactor(pair) -> None:
    transport, theirs, reactor = pair
    transport.write(b"keystroke")
    assert received(theirs) == b"keystroke"
    assert transport not in reactor.getWriters()  # nothing left to poll for


def test_a_large_write_waits_for_the_next_poll(pair) -> None:
    transport, theirs, reactor = pair
    transport.write(b"x" * (EAGER_MAX + 1))
    assert received(theirs) == b""
    assert transport in reactor.getWriters()
    transport.doWrite()
    assert len(received(theirs)) == EAGER_MAX + 1


def test_nothing_overtakes_what_is_queued(pair) -> None:
    transport, theirs, _ = pair
    transport.write(b"a" * (EAGER_MAX + 1))
    transport.write(b"b")  # must not go before the queued bytes
    assert received(theirs) == b""
    transport.doWrite()
    assert received(theirs) == b"a" * (EAGER_MAX + 1) + b"b"


def test_a_viewers_small_write_reaches_the_endpoint_at_once() -> None:
    """A tunnel's small write to its endpoint (a plain Twisted TCP transport)
    is sent without waiting for the reactor; a large one at the next poll."""
    from twisted.internet import tcp

    from vdsmconsole.server.tunnels.relay import RelayTunnel

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    reactor = MemoryReactor()
    try:
        relay = RelayTunnel.__new__(RelayTunnel)  # only its endpoint side
        relay.done, relay.toEndpoint = False, 0
        relay.endpointTransport = tcp.Server(
            ours, Protocol(), ("127.0.0.1", 1), None, 1, reactor
        )
        relay._writeEndpoint(b"k")
        assert received(theirs) == b"k"
        assert relay.endpointTransport not in reactor.getWriters()
        relay._writeEndpoint(b"x" * (EAGER_MAX + 1))
        assert received(theirs) == b""
        assert relay.toEndpoint == EAGER_MAX + 2
    finally:
        ours.close()
        theirs.close()


def test_the_web_listeners_connections_write_small_pieces_at_once() -> None:
    """The [web] listener accepts EagerServer connections, as the mTLS port."""
    from types import SimpleNamespace

    from twisted.internet import tcp

    from vdsmconsole.server.web.listener import listen_web

    ports: list[tcp.Port] = []

    def listenTCP(port: int, factory: object, interface: str) -> tcp.Port:
        ports.append(tcp.Port(port, factory, interface=interface, reactor=reactor))
        return ports[-1]

    reactor = MemoryReactor()
    config = SimpleNamespace(web_bind="127.0.0.1", bind="", web_port=0)
    context = SimpleNamespace(
        config=config, reactor=SimpleNamespace(listenTCP=listenTCP)
    )
    listening = listen_web(context, None, None, None)  # type: ignore[arg-type]
    assert listening is ports[0]
    assert listening.transport is EagerServer
