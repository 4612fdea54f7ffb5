"""Helpers for the console token tests: a server context in memory (a Clock,
a real registry with graphics-only VMs and a tcp console), and a stand-in for
the request surface the token code reads (peer, Host header, local address).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from vdsmconsole.graphics import parse_graphics
from vdsmconsole.identity import PeerIdentity
from vdsmconsole.server.authz import Authorizer
from vdsmconsole.server.config import Config
from vdsmconsole.server.context import ServerContext
from vdsmconsole.server.service import build_context
from vdsmconsole.spec import ConsoleSpec

NOW = 1_700_000_000.0
PORT = 54321
ROLES = {"viewer1": "viewer", "operator1": "operator", "admin1": "admin"}


@dataclass
class FakeRequest:
    """What the token code asks of a request: its peer, Host and local address."""

    identity: PeerIdentity
    host_header: bytes | None = b"console.example.com:54321"
    local: str = "192.0.2.10"
    headers: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def peerIdentity(self) -> PeerIdentity:
        return self.identity

    def getHeader(self, name: bytes) -> bytes | None:
        return self.host_header if name.lower() == b"host" else None

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", self.local, PORT)


def request_as(name: str, host: bytes | None = b"console.example.com:54321"):
    return FakeRequest(PeerIdentity(cn=name), host)


def make_context(tmp_path: Path) -> tuple[ServerContext, MemoryReactorClock]:
    """A context with roles by CN and three VMs: ``serial`` (a tcp console),
    ``gfx`` (vnc on TCP, spice on a unix socket, no serial), ``both``."""
    reactor = MemoryReactorClock()
    reactor.advance(NOW)
    context = build_context(Config(state_dir=tmp_path / "state"), reactor)
    context.authz = Authorizer.from_mapping(ROLES)
    context.port = PORT
    registry = context.registry
    tcp = ConsoleSpec(type="tcp", host="127.0.0.1", port=4555)
    registry.create("serial", tcp)
    registry.create(
        "gfx",
        None,
        graphics=parse_graphics(
            [
                {"type": "vnc", "host": "10.0.0.5", "port": 5901, "password": "pw"},
                {"type": "spice", "path": "/run/vm/gfx.spice"},
            ]
        ),
    )
    registry.create(
        "both", tcp, graphics=parse_graphics([{"type": "rdp", "path": "/run/rdp"}])
    )
    context.tokens.load()
    return context, reactor


def result_of(d: Any) -> Any:
    """The result of a Deferred that has already fired; raise its failure."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]
