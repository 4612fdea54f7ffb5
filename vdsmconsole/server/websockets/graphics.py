"""Graphics over a websocket: ``/websockify?token=T`` with a VNC, SPICE or
RDP token, the browser's end of the tunnels' own relay.

``SocketLink`` is a ``tunnels.side.ViewerSide`` whose bytes travel as binary
websocket messages, so ``tunnels/relay.py`` does here what it does for a
CONNECT tunnel: the endpoint connection (``tunnels/connector.py``), the
server's own VNC authentication (the browser is offered security type
None: no VNC password reaches it), a viewer token's view-only filter (key,
pointer and clipboard messages dropped; an unknown message type closes the
session with one log line), backpressure both ways, and the audit's
``tunnel-open``/``tunnel-close`` (``via: websocket``).

The websocket is accepted only once the endpoint has answered: until then
HTTP can still say what went wrong (502 the endpoint refused or failed, 503
the server is stopping), and the browser's request waits unanswered (what
it sends meanwhile is held by the HTTP channel, which stops reading).

Backpressure: the relay registers its endpoint-reading producer with the
browser's TLS transport, which pauses it while the browser reads nothing
(so the endpoint is not read either); the relay pauses reading the browser
(the TLS transport) while the endpoint's send buffer is full.  Either way a
session holds its buffers, one read and one message (at most ``[web]
max_message_bytes``), whatever either side sends.  A browser that reads
nothing stops answering pings and is closed after ``ping_timeout``; so is
one behind an endpoint that reads nothing for that long (its pongs are not
read either).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web import server

from vdsmconsole.identity import PeerIdentity
from vdsmconsole.server.context import ServerContext
from vdsmconsole.server.http.resources import answer, end_with
from vdsmconsole.server.tokens.store import TokenGrant
from vdsmconsole.server.tunnels.relay import RelayTunnel
from vdsmconsole.server.tunnels.side import ViewerBase
from vdsmconsole.server.tunnels.tunnel import TunnelGrant
from vdsmconsole.server.websockets.admit import socket_limits
from vdsmconsole.server.websockets.wire import (
    SUBPROTOCOL,
    SocketLimits,
    SocketProtocol,
    upgrade,
)
from vdsmconsole.status import StatusError

__all__ = ["SocketLink", "graphics_socket"]

NORMAL = 1000


class _Messages:
    """The websocket's handler (``wire.SocketHandler``): to the link."""

    headers: dict[str, str] = {}  # of the 101 answer: none extra

    def __init__(self, link: SocketLink) -> None:
        self.link = link

    def opened(self, socket: SocketProtocol) -> None:
        self.link.opened(socket)

    def received(self, data: bytes) -> None:
        self.link.message(data)

    def closed(self) -> None:
        self.link.closed()


class SocketLink(ViewerBase):
    """A relay's viewer side on a websocket: binary messages both ways."""

    def __init__(self, request: Any, limits: SocketLimits) -> None:
        super().__init__()
        self.request = request
        self.limits = limits
        self.socket: SocketProtocol | None = None
        self.accepted = False
        self.unsent: list[bytes] = []  # writes before the websocket opened
        request.notifyFinish().addBoth(self._connectionLost)

    @property
    def transport(self) -> Any:
        return self.request.channel.transport if self.request.channel else None

    # -- ViewerSide: the start -------------------------------------------------

    def accept(self) -> None:
        """The endpoint answered: the websocket handshake (101) now."""
        if self.gone or self.accepted:
            return
        self.accepted = True
        upgrade(self.request, _Messages(self), self.limits)

    def refuse(self, code: int, message: str) -> None:
        if not self.gone and not self.accepted:
            end_with(self.request, code, message)

    def start(self, sink: Callable[[bytes], None]) -> None:
        self._handEarly(sink)

    # -- from the websocket (_Messages) -----------------------------------------

    def opened(self, socket: SocketProtocol) -> None:
        self.socket = socket
        unsent, self.unsent = self.unsent, []
        for data in unsent:
            socket.send_bytes(data)

    def message(self, data: bytes) -> None:
        self._received(data)

    def closed(self) -> None:
        self.socket = None
        self._connectionLost(None)

    # -- ViewerSide: bytes and backpressure ------------------------------------

    def write(self, data: bytes) -> None:
        if self.gone or not data:
            return
        self.sent += len(data)
        if self.socket is None:
            self.unsent.append(data)
        else:
            self.socket.send_bytes(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if not self.gone and self.transport is not None:
            self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        # Harmless without one; with one left registered TLS would not shut
        # down on loseConnection (it waits for the producer to go).
        if self.transport is not None:
            self.transport.unregisterProducer()

    # -- ViewerSide: the end ---------------------------------------------------

    def close(self) -> None:
        """A close frame after what is queued (the browser answers, then the
        connection closes); before the websocket, the connection closes."""
        if self.gone:
            return
        self.unregisterProducer()
        if self.socket is not None:
            self.socket.close(NORMAL, "")
        elif self.request.channel is not None:
            self.request.channel.loseConnection()

    def abort(self) -> None:
        if not self.gone and self.transport is not None:
            self.transport.abortConnection()

    def _connectionLost(self, result: object) -> None:
        self.unsent = []
        self._lostNow()


def graphics_socket(
    context: ServerContext, request: Any, grant: TokenGrant, identity: PeerIdentity
) -> Any:
    """Relay the token's graphics endpoint to the browser's websocket, or
    answer why not (404: the VM or its endpoint is gone)."""
    offered = request.getHeader(b"sec-websocket-protocol")
    if offered is not None and SUBPROTOCOL.encode() not in _names(offered):
        # Said now, before an endpoint connection is opened for nothing.
        return answer(request, 400, f"subprotocol {SUBPROTOCOL!r} required")
    try:
        endpoint = context.registry.endpoint(grant.vm_id, grant.protocol)
    except StatusError as e:
        return answer(request, 404, e.message)
    tunnel = TunnelGrant(
        identity, grant.vm_id, grant.protocol, grant.role, True, "websocket"
    )
    link = SocketLink(request, socket_limits(context))
    relay = RelayTunnel(link, tunnel, context.audit, request.channel.site)
    relay.begin(endpoint, context.reactor)
    return server.NOT_DONE_YET


def _names(header: bytes) -> list[bytes]:
    return [name.strip() for name in header.split(b",")]
