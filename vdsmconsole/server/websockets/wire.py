"""An HTTP/1.1 request's connection handed over to a websocket protocol.

The resource that takes a websocket decides everything HTTP can still say
(403, 404, 400, 416 as plain answers) before ``upgrade`` is called; from
then on the connection belongs to autobahn's ``WebSocketServerProtocol``,
which enforces the limits (RFC 6455 close codes: 1009 for a message over
``max_message_bytes``, 1007 for a text message that is not UTF-8, 1002 for
a bad frame), pings every ``ping_interval`` seconds and closes a peer that
has not answered within ``ping_timeout``.

The hand-off, in place of autobahn's own ``WebSocketResource`` (which sets
the channel's transport to None and leaves the request in flight forever):
the HTTP channel stops being the transport's producer and its idle timeout
stops, its ``dataReceived`` feeds the websocket, and when the connection
goes the websocket learns first and then the channel, so that the request
ends as any other (the site's requests in flight, the audit's ``detach``).

Over HTTP/2 there is no Upgrade (RFC 8441's extended CONNECT is not
offered: the server's SETTINGS do not enable it), so a websocket request
there is answered 400 by the resource; browsers open websockets over
HTTP/1.1 when the server does not offer RFC 8441.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="vdsmconsole.websockets")

SUBPROTOCOL = "binary"  # websockify's and noVNC's name for raw bytes


@dataclass(frozen=True)
class SocketLimits:
    """The limits of every websocket ([web] section of the configuration)."""

    max_message_bytes: int = 1024 * 1024
    ping_interval: float = 30.0
    ping_timeout: float = 30.0
    open_timeout: float = 10.0
    close_timeout: float = 5.0


class SocketHandler(Protocol):
    """What a websocket carries (``console.ConsoleSocket``)."""

    headers: dict[str, str]  # extra headers of the 101 response

    def opened(self, socket: SocketProtocol) -> None:
        """The handshake is done: messages may flow."""

    def received(self, data: bytes) -> None:
        """A whole message from the peer (binary, or text as its UTF-8)."""

    def closed(self) -> None:
        """The websocket is gone (closed or cut)."""


def is_websocket(request: Any) -> bool:
    """Whether a request asks for a websocket (RFC 6455's Upgrade)."""
    upgrade = request.getHeader(b"upgrade") or b""
    return upgrade.strip().lower() == b"websocket"


class SocketProtocol(WebSocketServerProtocol):
    """One websocket: subprotocol choice, then messages to its handler."""

    handler: SocketHandler
    # Writes the request's access log line with the status it got.
    access_log: Callable[[int], None] = staticmethod(lambda code: None)

    def onConnect(self, request: Any) -> tuple[str | None, dict[str, str]]:
        offered = list(request.protocols or ())
        if offered and SUBPROTOCOL not in offered:
            # A browser fails a socket whose answer picks none it offered.
            raise ConnectionDeny(400, f"subprotocol {SUBPROTOCOL!r} required")
        return (SUBPROTOCOL if offered else None), self.handler.headers

    def onOpen(self) -> None:
        self.access_log(101)
        self.handler.opened(self)

    def failHandshake(
        self, reason: str, code: int = 400, responseHeaders: Any = None
    ) -> None:
        self.access_log(code)  # a malformed handshake: one line, no traceback
        super().failHandshake(reason, code, responseHeaders)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.handler.received(bytes(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.handler.closed()

    def send_bytes(self, data: bytes) -> None:
        self.sendMessage(data, isBinary=True)

    def send_text(self, text: str) -> None:
        self.sendMessage(text.encode("utf-8"), isBinary=False)

    def close(self, code: int, reason: str) -> None:
        """Close with an RFC 6455 code and a short reason (a StreamEnd's name).

        autobahn's ``sendClose`` takes only 1000 and 3000-4999 from
        applications; 1001 (going away: the server stops) is the right code
        for a stop, so the frame is sent with ``sendCloseFrame``.
        """
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code, reason.encode("utf-8"), isReply=False)
        elif self.state == self.STATE_CONNECTING:
            self.dropConnection(abort=True)


def socket_factory(limits: SocketLimits) -> WebSocketServerFactory:
    factory = WebSocketServerFactory()
    factory.protocol = SocketProtocol
    factory.setProtocolOptions(
        maxMessagePayloadSize=limits.max_message_bytes,
        maxFramePayloadSize=limits.max_message_bytes,
        autoPingInterval=limits.ping_interval,
        autoPingTimeout=limits.ping_timeout,
        openHandshakeTimeout=limits.open_timeout,
        closeHandshakeTimeout=limits.close_timeout,
        # A failure says its close code (1009, 1007, 1002) before the drop.
        failByDrop=False,
        # Origin is checked by the resource (403 with an audit line).
        allowedOrigins=["*"],
    )
    # autobahn's own "Server" header names its version: keep ours quiet.
    factory.server = "vdsmconsole"
    return factory


def upgrade(request: Any, handler: SocketHandler, limits: SocketLimits) -> None:
    """Hand the request's HTTP/1.1 connection over to a websocket."""
    channel = request.channel
    transport = channel.transport
    protocol: Any = socket_factory(limits).buildProtocol(transport.getPeer())
    protocol.handler = handler

    def access_log(code: int) -> None:
        # The request never finishes as HTTP: its line is written here.
        request.setResponseCode(code)
        channel.site.log(request)

    protocol.access_log = access_log
    channel.setTimeout(None)  # pings keep a websocket alive, not HTTP's timeout
    transport.unregisterProducer()  # the channel was the transport's producer
    channel_lost = channel.connectionLost

    def connection_lost(reason: Failure) -> None:
        try:
            protocol.connectionLost(reason)
        finally:
            channel_lost(reason)  # the request ends: in-flight, audit detach

    channel.dataReceived = protocol.dataReceived
    channel.connectionLost = connection_lost
    protocol.makeConnection(transport)
    # autobahn reads the handshake itself: hand it the request head again.
    head = [b"GET " + request.uri + b" HTTP/1.1\r\n"]
    for name, values in request.requestHeaders.getAllRawHeaders():
        head += [name + b": " + value + b"\r\n" for value in values]
    protocol.dataReceived(b"".join(head) + b"\r\n")
    # Bytes a client sent right behind its request head, if any.
    pending = b"".join(getattr(channel, "_dataBuffer", ()))
    if pending:
        channel._dataBuffer = []
        protocol.dataReceived(pending)
