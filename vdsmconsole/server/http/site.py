"""The request class and the site: the HTTP side of the port.

``ConsoleRequest`` knows its peer, caps RPC bodies, counts as in flight, and
lets a streaming resource take its body as it arrives; ``ConsoleSite`` holds
the requests in flight and keeps console streams from being idle-timed out.
Routing is in ``resources.py``; limits and deadlines in ``channel.py``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.web import http, resource, server
from twisted.web._http2 import H2Stream

from vdsmconsole.identity import ANONYMOUS, PeerIdentity
from vdsmconsole.server.http.accesslog import access_log_line
from vdsmconsole.server.http.channel import (
    _console_http_protocol,
    chunk_continues,
    connection_of,
    deadlines_of,
)
from vdsmconsole.server.http.endings import refuse_while_stopping
from vdsmconsole.server.http.h2channel import when_set_up
from vdsmconsole.server.http.routes import is_stream_target
from vdsmconsole.server.tls.connection import peer_identity_of


class BodyConsumer(Protocol):
    """Takes a request body as it arrives (``streams.input.BodyWriter``)."""

    def bodyChunk(self, data: bytes, continues: bool = False) -> None:
        """A piece of the body; ``continues``: the rest of its chunk is to come."""

    def bodyEnded(self) -> None:
        """The body is complete."""


class ConsoleRequest(server.Request):
    """A request that knows its peer, caps RPC bodies and counts as in flight.

    ``parseCookies`` is the one hook both HTTP/1.1 and HTTP/2 call once all
    headers are in and before any body arrives; it is where a request starts
    to count as in flight (for graceful shutdown) and where a streaming
    resource can take over the body (see streams.py).
    """

    site: ConsoleSite
    # An HTTPChannel (HTTP/1.1) or an H2Stream (HTTP/2): their shared surface
    # is not one declared interface, so it is typed loosely here.
    channel: Any
    bodyConsumer: BodyConsumer | None = None  # set by a stream that takes the body
    # Method and path as known when the headers are in (before process()).
    earlyMethod: bytes = b""
    earlyPath: bytes = b""
    # Its headers came once the server was stopping: it is refused (503).
    cameWhileStopping = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._body_bytes = 0
        self._body_too_large = False
        self._identity: PeerIdentity | None = None
        self._early = False
        self._body_done = False
        self._closing = False

    @property
    def peerIdentity(self) -> PeerIdentity:
        if self._identity is None:
            conn = getattr(self.channel, "_conn", self.channel)  # H2Stream -> conn
            self._identity = peer_identity_of(getattr(conn, "transport", None))
        return self._identity or ANONYMOUS

    def parseCookies(self) -> None:
        super().parseCookies()
        channel = self.channel
        # HTTP/1.1 channels keep these private; HTTP/2 streams public.
        self.earlyMethod = getattr(channel, "_command", None) or channel.command
        # An HTTP/2 CONNECT has no :path: b"", never None (routes.py splits it).
        self.earlyPath = getattr(channel, "_path", None) or channel.path or b""
        site = channel.site
        self.cameWhileStopping = site.stopping
        deadlines = deadlines_of(channel)
        if deadlines is not None:
            deadlines.headersDone()
        site.requestStarted(self)
        hook = site.headersReceivedHook
        if hook is not None:
            when_set_up(channel, hook, self)

    def dispatchEarly(self) -> None:
        """Render now, with the body still to come (a streaming POST).

        The body then goes to ``bodyConsumer`` chunk by chunk as it arrives,
        and the channel's usual end-of-request call means "the body ended".
        """
        self._early = True
        if self.content is None:  # HTTP/1.1 makes it only after this hook
            self.content = io.BytesIO()
        version = getattr(self.channel, "_version", None) or b"HTTP/2"
        server.Request.requestReceived(self, self.earlyMethod, self.earlyPath, version)

    def handleContentChunk(self, data: bytes) -> None:
        if self._early:
            if self.bodyConsumer is not None:
                self.bodyConsumer.bodyChunk(data, chunk_continues(self.channel))
            return  # an early answer was given: the rest of the body is moot
        self._body_bytes += len(data)
        if self._body_bytes > self.channel.site.maxBodyBytes:
            # Keep reading (so the connection stays in sync) but store nothing.
            self._body_too_large = True
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._early:
            # The resource rendered when the headers came; this is the body's end.
            self._body_done = True
            if self.bodyConsumer is not None:
                self.bodyConsumer.bodyEnded()
            return
        super().requestReceived(command, path, version)

    def write(self, data: bytes) -> None:
        if self.startedWriting or not data:
            super().write(data)
            return
        hold = getattr(self.channel, "holdHead", None)  # HTTP/1.1 only
        if hold is None:
            super().write(data)
            return
        # The first write: the head and these bytes in one transport write
        # (an RPC answer is then one TLS record and one send, not two).
        hold()
        try:
            super().write(data)
        finally:
            self.channel.flushHead()

    @property
    def isHTTP2(self) -> bool:
        return isinstance(self.channel, H2Stream)

    def finish(self) -> None:
        if self._early and not self._body_done and not self.isHTTP2:
            # HTTP/1.1 cannot end a response while the client is still sending
            # a body we no longer read: the channel would take the rest of the
            # body for a new request.  Complete the response, then close.
            if self._closing or self._disconnected:
                return
            self._closing = True
            if not self.startedWriting:
                if not self.responseHeaders.hasHeader(b"content-length"):
                    self.setHeader(b"content-length", b"0")
                self.setHeader(b"connection", b"close")
                self.write(b"")
            if self.chunked:
                self.channel.write(b"0\r\n\r\n")
            self.channel.site.log(self)
            self.channel.loseConnection()  # unregisters the producer: TLS closes
            return
        super().finish()

    def process(self) -> None:
        if self.channel.site.stopping and refuse_while_stopping(self):
            return
        if self._body_too_large:
            self.setResponseCode(http.REQUEST_ENTITY_TOO_LARGE)
            self.setHeader(b"content-type", b"text/plain; charset=utf-8")
            self.setHeader(b"connection", b"close")
            self.write(b"request body too large\n")
            self.finish()
            return
        super().process()


@dataclass(frozen=True)
class SiteLimits:
    """What the site and its connections read from the configuration."""

    max_body_bytes: int  # of an RPC request ([server] rpc_max_body)
    handshake_timeout: float  # seconds ([server] handshake_timeout)
    header_timeout: float  # seconds ([server] header_timeout)
    client_buffer_bytes: int  # unsent output held per client ([console])


class ConsoleSite(server.Site):
    """The one site on the port; it knows which requests are in flight."""

    displayTracebacks = False
    requestFactory = ConsoleRequest
    protocol = _console_http_protocol

    def __init__(
        self, root: resource.Resource, reactor: Any, limits: SiteLimits
    ) -> None:
        super().__init__(root, logFormatter=access_log_line, reactor=reactor)
        # Bodies are XML-RPC, JSON or guest input, never HTML forms: skip
        # Twisted's form parsing (its Content-Type parse through the email
        # package was a sixth of a ping's CPU).  A query comes from the URL only.
        self._parsePOSTFormSubmission = False
        self.maxBodyBytes = limits.max_body_bytes
        self.handshakeTimeout = limits.handshake_timeout
        self.headerTimeout = limits.header_timeout
        self.clientBufferBytes = limits.client_buffer_bytes
        self.headersReceivedHook: Callable[[ConsoleRequest], None] | None = None
        self.inFlight: set[ConsoleRequest] = set()
        self.stopping = False  # see endings.begin_shutdown
        # Connections taken over from HTTP (CONNECT tunnels): cut on stop.
        self.tunnels: set[Any] = set()
        # connection -> [console streams open on it, its idle timeout before]
        self._idleHeld: dict[Any, list[Any]] = {}

    def requestStarted(self, request: ConsoleRequest) -> None:
        self.inFlight.add(request)
        request.notifyFinish().addBoth(self._requestDone, request)
        if is_stream_target(request.earlyPath):
            self._holdIdleTimeout(request)

    def _requestDone(self, result: object, request: ConsoleRequest) -> None:
        self.inFlight.discard(request)

    def _holdIdleTimeout(self, request: ConsoleRequest) -> None:
        """No idle timeout for a connection while a console stream is open on it.

        Twisted's idle timeout cuts a connection that sends nothing for a
        while; an HTTP/1.1 POST still in its body, or any HTTP/2 stream,
        counts as idle however much output flows to the client.  A follower of
        a quiet console or a duplex session whose user types nothing is not.
        """
        conn = connection_of(request.channel)
        held = self._idleHeld.get(conn)
        if held is None:
            held = self._idleHeld[conn] = [0, conn.setTimeout(None)]
        held[0] += 1
        request.notifyFinish().addBoth(self._releaseIdleTimeout, conn)

    def _releaseIdleTimeout(self, result: object, conn: Any) -> None:
        held = self._idleHeld[conn]
        held[0] -= 1
        if held[0]:
            return
        del self._idleHeld[conn]
        transport = getattr(conn, "transport", None)
        if (
            held[1] is not None
            and transport is not None
            and not transport.disconnecting
            and getattr(transport, "connected", True)
        ):
            conn.setTimeout(held[1])
