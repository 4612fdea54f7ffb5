"""The server's TLS write path (``BatchedTLSProtocol``): one application write
reaches the transport as one write of ordinary TLS records, in memory
(``twisted.test.iosim``) between the server's TLS and Twisted's own client."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from tests.tlshelp import Pki, now_clock
from vdsmconsole import pki as pkimod
from vdsmconsole.server.tls.connection import RECORD, AuditedTLSFactory
from vdsmconsole.server.tls.reload import ServerTLS


class Sender(Protocol):
    """Writes what it is given, once the connection is made (or at once)."""

    writes: list[bytes] = []

    def connectionMade(self) -> None:
        for data in self.writes:
            self.transport.write(data)


class Received(Protocol):
    def __init__(self) -> None:
        self.data = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.data += data


def _records(wire: bytes) -> list[int]:
    """The lengths of the TLS records in ``wire`` (5-byte headers)."""
    out, i = [], 0
    while i + 5 <= len(wire):
        length = int.from_bytes(wire[i + 3 : i + 5], "big")
        out.append(length)
        i += 5 + length
    assert i == len(wire), "the writes were not whole records"
    return out


def _pair(tmp_path: Path, writes: list[bytes]) -> tuple[Received, list[bytes], Any]:
    """Server (writing ``writes`` on connect) and a Twisted TLS client, in
    memory; the client's received bytes and the server's transport writes."""
    own = Pki(tmp_path / "pki")
    clock = now_clock()
    client_cert = pkimod.issue(own.ca, "bench-client")
    sender = type("S", (Sender,), {"writes": writes})
    server_factory = AuditedTLSFactory(
        ServerTLS(own.files(), clock), False, Factory.forProtocol(sender), clock=clock
    )
    server = server_factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40001))
    received = Received()
    client_options = ssl.optionsForClientTLS(
        "localhost",
        trustRoot=ssl.Certificate.loadPEM(own.paths.ca_cert.read_bytes()),
        clientCertificate=ssl.PrivateCertificate.loadPEM(
            client_cert.cert_pem() + client_cert.key_pem()
        ),
    )
    client_factory = TLSMemoryBIOFactory(
        client_options, True, Factory.forProtocol(lambda: received), clock=clock
    )
    client = client_factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1))
    server_transport = iosim.FakeTransport(
        server, True, peerAddress=IPv4Address("TCP", "192.0.2.7", 40001)
    )
    wire: list[bytes] = []
    plain_write = server_transport.write

    def write(data: bytes) -> None:
        wire.append(bytes(data))
        plain_write(data)

    server_transport.write = write  # type: ignore[method-assign]
    pump = iosim.connect(
        server, server_transport, client, iosim.makeFakeClient(client), clock=clock
    )
    return received, wire, (pump, clock, server)


def _run(pump: Any, clock: Any, rounds: int = 50) -> None:
    for _ in range(rounds):
        pump.flush()
        clock.advance(0)


def test_a_large_write_is_one_transport_write_of_16k_records(tmp_path: Path) -> None:
    """A 1 MiB write after the handshake: one transport write, 16 KiB records."""
    payload = os.urandom(1024 * 1024)
    received, wire, (pump, clock, server) = _pair(tmp_path, [])
    _run(pump, clock)
    assert server._handshakeDone
    before = len(wire)
    server.write(payload)
    assert len(wire) - before == 1
    lengths = _records(wire[-1])
    assert len(lengths) == len(payload) // RECORD
    assert max(lengths) <= RECORD + 256
    _run(pump, clock)
    assert hashlib.sha256(received.data).digest() == hashlib.sha256(payload).digest()


def test_writes_before_the_handshake_arrive_whole_and_in_order(tmp_path: Path) -> None:
    """Writes made before the handshake is done are held, then sent in order."""
    pieces = [os.urandom(n) for n in (1, 70_000, 5, 16384, 300_000)]
    received, _wire, (pump, clock, _server) = _pair(tmp_path, pieces)
    _run(pump, clock)
    assert bytes(received.data) == b"".join(pieces)


def test_many_small_writes_arrive_in_order(tmp_path: Path) -> None:
    """Small writes each become their own record and arrive in order."""
    received, wire, (pump, clock, server) = _pair(tmp_path, [])
    _run(pump, clock)
    before = len(wire)
    for i in range(200):
        server.write(b"%05d" % i)
    assert len(wire) - before == 200
    _run(pump, clock)
    assert bytes(received.data) == b"".join(b"%05d" % i for i in range(200))
