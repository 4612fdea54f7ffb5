"""A graphics tunnel: the viewer's connection and the endpoint's, relayed
with backpressure both ways.  A ``viewer``'s VNC tunnel is view-only: its
RFB messages pass through ``protocols/rfbclient.py``, which drops key,
pointer and clipboard messages (SPICE and RDP are relayed as they are).
The viewer is a ``side.ViewerSide``: a CONNECT's raw TLS connection
(``takeover.ViewerLink``) or a browser's websocket on the web listener
(``websockets/graphics.SocketLink``); this one relay serves both.

Each side's transport is the other side's consumer: a viewer that stops
reading fills its send buffer (``[console] client_buffer_bytes``), which
pauses reading the endpoint; an endpoint that stops reading fills its own
(``ENDPOINT_BUFFER``, 128 KiB), which pauses reading the viewer.  So a tunnel
holds at most those buffers and one read, whatever either side sends.
The endpoint is read up to 128 KiB at a time as well (Twisted reads
``bufferSize`` at once, 64 KiB by default): a graphics server's bulk output
then costs half the reads, websocket messages and writes.  Not more: a read
as large as the viewer's whole buffer (256 KiB) pauses the endpoint after
every read, and a CONNECT tunnel's bulk was slower for it
(docs/benchmarks.rst).  The endpoint
connection is opened for the tunnel and closed with it; either side closing
closes the other once what is in flight has been written (TLS has no
half-close to pass on).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vdsmconsole.graphics import GraphicsEndpoint
from vdsmconsole.identity import log_safe
from vdsmconsole.protocols.rfbclient import ClientMessageFilter
from vdsmconsole.server.authz import ROLES, Permission
from vdsmconsole.server.tunnels.connector import connect_endpoint, failure_reason
from vdsmconsole.server.tunnels.tunnel import CLOSE_GRACE, Tunnel, abort_if_open
from vdsmconsole.server.tunnels.vncauth import VncAuthStep
from vdsmconsole.transports import EAGER_MAX, write_at_once

log = Logger(namespace="vdsmconsole.tunnels")

# The endpoint connection's read size and send-buffer bound (Twisted's
# bufferSize): half a viewer's ([console] client_buffer_bytes default).
ENDPOINT_BUFFER = 128 * 1024
# How long a refusal the viewer has yet to hear keeps its tunnel open.
VIEWER_WAIT = 10.0


@implementer(IPushProducer)
class Reading:
    """Pauses and resumes reading one side for the other side's transport."""

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self.pauseProducing = pause
        self.resumeProducing = resume

    def stopProducing(self) -> None:
        """The consumer's connection is gone: its own loss ends the tunnel."""


class EndpointProtocol(Protocol):
    def __init__(self, tunnel: RelayTunnel) -> None:
        self.tunnel = tunnel

    def dataReceived(self, data: bytes) -> None:
        self.tunnel.fromEndpoint(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.tunnel.endpointLost()


class RelayTunnel(Tunnel):
    """Viewer <-> a VNC, SPICE or RDP endpoint."""

    endpoint: GraphicsEndpoint
    reactor: Any

    def begin(self, endpoint: GraphicsEndpoint, reactor: Any) -> None:
        """Connect to the endpoint; 200 once connected, 502 if it fails."""
        self.endpoint = endpoint
        self.reactor = reactor
        self.protocol = EndpointProtocol(self)
        self.endpointTransport: Any = None
        self.toEndpoint = 0
        self.auth: VncAuthStep | None = None
        self.viewOnly = Permission.WRITE not in ROLES[self.grant.role]
        self.viewFilter: ClientMessageFilter | None = None
        self.connecting: Deferred[Any] | None = connect_endpoint(
            reactor, endpoint, self.protocol
        )
        self.link.whenLost(self._viewerLeftEarly)
        self.connecting.addCallbacks(self._connected, self._failed)

    def _viewerLeftEarly(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()

    def _failed(self, failure: Failure) -> None:
        self.connecting = None
        if failure.check(CancelledError):
            return  # the viewer left first
        grant = self.grant
        why = failure_reason(failure)
        log.warn(
            "tunnel for {who} to VM {vm} {protocol} at {address}: the endpoint "
            "failed: {why}",
            who=grant.identity,
            vm=grant.vm_id,
            protocol=grant.protocol,
            address=log_safe(self.endpoint.address),
            why=log_safe(why),
        )
        what = f"the {grant.protocol} endpoint of VM {grant.vm_id}"
        self.link.refuse(502, f"{what} refused or failed")

    def _connected(self, protocol: Protocol) -> None:
        self.connecting = None
        transport: Any = protocol.transport
        transport.bufferSize = ENDPOINT_BUFFER
        self.endpointTransport = transport
        if self.link.gone or self.site.stopping:
            transport.loseConnection()
            self.link.refuse(503, "the server is stopping")  # if still there
            return
        self.link.accept()
        self.opened(endpoint=self.endpoint.address)
        # The endpoint's send buffer pauses reading the viewer...
        transport.registerProducer(
            Reading(
                lambda: self.link.pauseReading("endpoint"),
                lambda: self.link.resumeReading("endpoint"),
            ),
            True,
        )
        # ...and the viewer's pauses reading the endpoint.
        self.link.registerProducer(
            Reading(transport.pauseProducing, transport.resumeProducing),
            True,
        )
        password = self.endpoint.password
        if self.endpoint.type == "vnc" and (password or self.viewOnly):
            # A viewer's VNC is view-only: the handshake is run here (with
            # the password if there is one) to know where its messages start.
            self.auth = VncAuthStep(
                password,
                self.link.write,
                self._writeEndpoint,
                self._authDone,
                self._authFailed,
            )
            self.auth.start()
        self.link.start(self.fromViewer)

    # -- the bytes -------------------------------------------------------------

    def fromViewer(self, data: bytes) -> None:
        if self.done:
            return
        if self.auth is not None:
            self.auth.from_viewer(data)
        elif self.viewFilter is not None:
            self._filtered(data)
        else:
            self._writeEndpoint(data)

    def _filtered(self, data: bytes) -> None:
        """A viewer's RFB messages: its input (keys, pointer, clipboard) dropped."""
        assert self.viewFilter is not None
        out, unknown = self.viewFilter.feed(data)
        self._writeEndpoint(out)
        if unknown:
            self.close(f"view-only VNC: {unknown[0].reason}")

    def fromEndpoint(self, data: bytes) -> None:
        if self.done:
            return
        if self.auth is not None:
            self.auth.from_endpoint(data)
        else:
            self.link.write(data)

    def _writeEndpoint(self, data: bytes) -> None:
        if not self.done and data:
            self.toEndpoint += len(data)
            transport = self.endpointTransport
            if len(data) <= EAGER_MAX:
                # A keystroke or a pointer move goes to the kernel now, not
                # at the reactor's next round (transports.py).
                data = write_at_once(transport, data)
                if not data:
                    return
            transport.write(data)

    def _authDone(self, to_viewer: bytes, to_endpoint: bytes) -> None:
        self.auth = None
        self.link.write(to_viewer)
        if self.viewOnly:
            self.viewFilter = ClientMessageFilter(view_only=True)
            self._filtered(to_endpoint)
        else:
            self._writeEndpoint(to_endpoint)

    # -- the end ---------------------------------------------------------------

    def endpointLost(self) -> None:
        auth = self.auth
        if auth is not None:
            auth.endpoint_closed()  # the viewer hears why, then the close
            if not auth.finished and not self.done:
                # The VNC server refused and left before the viewer sent its
                # version: RFB lets the viewer hear why only after that, so
                # the close waits for it (``_authFailed`` closes), a viewer
                # that never answers for at most VIEWER_WAIT seconds.
                self.reactor.callLater(VIEWER_WAIT, self.close, "the endpoint closed")
                return
        self.close("the endpoint closed")

    def _authFailed(self, why: str) -> None:
        """One log line; the viewer has its RFB answer, then both close."""
        log.warn(
            "tunnel for {who} to VM {vm}: {why}",
            who=self.grant.identity,
            vm=self.grant.vm_id,
            why=log_safe(why),
        )
        self.close(why)

    def closeFields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"endpoint": self.endpoint.address}
        if self.viewFilter is not None:
            fields["inputMessagesDropped"] = self.viewFilter.dropped
        return fields

    def release(self) -> None:
        transport = self.endpointTransport
        if transport is None:
            return
        transport.unregisterProducer()
        transport.loseConnection()  # after what the viewer sent is written
        self.reactor.callLater(CLOSE_GRACE, abort_if_open, transport)
