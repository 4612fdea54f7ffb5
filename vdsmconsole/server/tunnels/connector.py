"""A connection to a graphics endpoint: TCP (host and port) or a unix socket.

One per tunnel, opened when the tunnel is admitted and closed with it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol

from vdsmconsole.graphics import GraphicsEndpoint

CONNECT_TIMEOUT = 10.0  # seconds: then the tunnel is 502


def connect_endpoint(
    reactor: Any, endpoint: GraphicsEndpoint, protocol: Protocol
) -> defer.Deferred[Protocol]:
    """Connect ``protocol`` to ``endpoint``; fires with it once connected."""
    if endpoint.path:
        client: Any = UNIXClientEndpoint(reactor, endpoint.path, CONNECT_TIMEOUT)
    else:
        client = HostnameEndpoint(
            reactor, endpoint.host, endpoint.port, CONNECT_TIMEOUT
        )
    factory = Factory.forProtocol(lambda: protocol)
    factory.noisy = False  # no "Starting factory" lines: one line per tunnel
    connected: defer.Deferred[Protocol] = client.connect(factory)
    return connected


def failure_reason(failure: Any) -> str:
    """One line for a failed connect (no traceback)."""
    error = getattr(failure, "value", failure)
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
