"""Routing, the request class, the access log: the HTTP side of the port.

``/RPC2`` and ``/`` take XML-RPC POSTs; ``/consoleStream/<vmId>`` takes the
streams.  Anything else is 404; a known path with the wrong method is 405 with
``Allow``.  Clients never see a traceback.

Limits and deadlines of a connection (see docs/reliability.rst):

- ``[server] handshake_timeout``: a connection whose TLS handshake is not
  done by then is closed (one log line, by the TLS layer);
- ``[server] header_timeout``: a request whose headers are not all in by then
  is answered 408 and closed (HTTP/1.1), or closed (the first request of an
  HTTP/2 connection; later HTTP/2 requests come in whole frames, bounded by
  h2's limits);
- HTTP/1.1 headers: at most ``maxHeaders`` (500) lines and
  ``totalHeadersSize`` (16 KiB) in all, else 431; a request line longer than
  ``MAX_LENGTH`` (16 KiB) is 414.  HTTP/2: h2's 64 KiB header list (GOAWAY
  ENHANCE_YOUR_CALM beyond), 16 KiB frames, 64 CONTINUATION frames;
- Twisted's idle timeout (60 s without a byte from the client) does not cut a
  console stream: a follower of a quiet console or a duplex session whose
  user types nothing is not idle.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web._http2 import H2Stream
from zope.interface import implementer

from vdsmconsole.accesslog import access_log_line
from vdsmconsole.endings import refuse_while_stopping
from vdsmconsole.h2channel import bound_send_buffer, start_http2, when_set_up
from vdsmconsole.httprules import header_refusal
from vdsmconsole.routes import is_stream_target, stream_vm_id
from vdsmconsole.tls import ANONYMOUS, PeerIdentity, peer_address, peer_identity_of

if TYPE_CHECKING:
    from vdsmconsole.server import ServerContext


class PlainError(resource.Resource):
    """A short text/plain error page; no HTML, no traceback."""

    isLeaf = True

    def __init__(
        self, code: int, message: str, headers: dict[bytes, bytes] | None = None
    ) -> None:
        super().__init__()
        self.code = code
        self.message = message
        self.headers = headers or {}

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        for name, value in self.headers.items():
            request.setHeader(name, value)
        return self.message.encode("utf-8") + b"\n"


NOT_FOUND = PlainError(404, "not found")
log = Logger(namespace="vdsmconsole.site")


def allowed_methods(res: resource.Resource) -> list[bytes]:
    names = [m[7:] for m in dir(res) if m.startswith("render_") and m[7:].isupper()]
    if "GET" not in names and "HEAD" in names:
        names.remove("HEAD")  # Resource's default HEAD only fakes a GET
    return sorted(n.encode("ascii") for n in names)


class MethodsMixin:
    """405 with Allow for every method a known path does not take.

    Twisted answers 501 for methods outside GET/HEAD/POST; our contract says
    405 with Allow for any wrong method on a known path.
    """

    def render(self, request: Any) -> Any:
        allowed = allowed_methods(self)  # type: ignore[arg-type]
        if request.method not in allowed:
            return PlainError(
                405,
                "method not allowed",
                {b"allow": b", ".join(allowed)},
            ).render(request)
        return getattr(self, "render_" + request.method.decode("ascii"))(request)


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
    bodyConsumer: Any = None  # a streams.BodyConsumer once a stream took the body
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
        self.earlyPath = getattr(channel, "_path", None) or channel.path
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


# -- deadlines and limits of a connection -------------------------------------


class HandshakeTimeout(Exception):
    """The TLS handshake did not complete in time (the TLS layer logs this)."""


class ConnectionDeadlines:
    """The deadlines of one connection: its TLS handshake, then request headers.

    Plain bookkeeping over an injected clock (``IReactorTime``): the
    connection says what happened (``handshakeDone``, ``requestStarted``,
    ``headersDone``) and ``expired("handshake" | "headers")`` is called when a
    deadline passes first.  The header deadline of the first request runs from
    the connection's start, so a client that completes TLS and then says
    nothing is closed too; for later requests it runs from their first byte.
    """

    def __init__(
        self,
        clock: Any,
        handshake_timeout: float,
        header_timeout: float,
        expired: Callable[[str], None],
    ) -> None:
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.header_timeout = header_timeout
        self._expired = expired
        self._handshake: Any = None  # IDelayedCall
        self._headers: Any = None
        self.handshakeComplete = False

    def start(self, tls: bool) -> None:
        if tls:
            self._handshake = self.clock.callLater(
                self.handshake_timeout, self._fire, "handshake"
            )
        else:
            self.handshakeComplete = True
        self.requestStarted()

    def handshakeDone(self) -> None:
        self.handshakeComplete = True
        self._handshake = _cancel(self._handshake)

    def requestStarted(self) -> None:
        if self._headers is None:
            self._headers = self.clock.callLater(
                self.header_timeout, self._fire, "headers"
            )

    def headersDone(self) -> None:
        self._headers = _cancel(self._headers)

    def stop(self) -> None:
        self._handshake = _cancel(self._handshake)
        self._headers = _cancel(self._headers)

    def _fire(self, which: str) -> None:
        if which == "handshake":
            self._handshake = None
        else:
            self._headers = None
        if not self.handshakeComplete:
            which = "handshake"  # headers cannot come before the handshake
        self.stop()
        self._expired(which)


def _cancel(call: Any) -> Any:
    """Cancel a delayed call if it is pending; returns None to store."""
    if call is not None and call.active():
        call.cancel()
    return None


def connection_of(channel: Any) -> Any:
    """The connection a request belongs to: its HTTPChannel or H2Connection."""
    return getattr(channel, "_conn", channel)  # H2Stream -> H2Connection


def deadlines_of(channel: Any) -> ConnectionDeadlines | None:
    """The deadlines of the connection a request channel belongs to, if any."""
    conn = connection_of(channel)
    found = getattr(conn, "deadlines", None)  # HTTP/1.1: the channel has them
    if found is None:
        # HTTP/2: the protocol the TLS layer drives has them.
        protocol = getattr(getattr(conn, "transport", None), "wrappedProtocol", None)
        found = getattr(protocol, "deadlines", None)
    return found


# Reason phrases Twisted's table lacks or words in an older way.
REASONS = {
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


def chunk_continues(channel: Any) -> bool:
    """Whether the body bytes just handed on are part of a chunk whose rest is
    still to come: an HTTP/1.1 chunk split across TCP segments, or a part of a
    body sent with Content-Length (one chunk, then).

    Twisted's decoders hand bytes on as they arrive and say this only in their
    state, set before they call back.  HTTP/2 hands on whole DATA frames.
    """
    decoder = getattr(channel, "_transferDecoder", None)
    if isinstance(decoder, http._ChunkedTransferDecoder):
        return decoder.state == "BODY"
    if isinstance(decoder, http._IdentityTransferDecoder):
        return bool(decoder.contentLength)
    return False


class ConsoleChannel(http.HTTPChannel):
    """HTTP/1.1 with clean refusals of oversized headers and header deadlines.

    Twisted answers too many or too large headers with a bare 400, and a line
    longer than ``MAX_LENGTH`` (16 KiB) by closing the connection without an
    answer (and, over TLS, only when the idle timeout fires, since its
    producer is still registered).  Here both are 431 (a request line: 414)
    with a body and ``Connection: close``, checked before Twisted's own
    checks, with the same limits.
    """

    deadlines: ConnectionDeadlines | None = None
    _headerLines = 0
    _headerBytes = 0
    _refused = False

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: the rest is moot
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._headerLines == 0 and not line:
            super().lineReceived(line)  # a stray CRLF between requests
            return
        if not line:  # the end of the headers
            self._headerLines = self._headerBytes = 0
            super().lineReceived(line)
            return
        if self.deadlines is not None:
            self.deadlines.requestStarted()
        self._headerLines += 1
        self._headerBytes += len(line)
        if (
            self._headerBytes > self.totalHeadersSize
            or self._headerLines > self.maxHeaders + 1  # + the request line
        ):
            self.refuse(431, "request header fields too large")
            return
        super().lineReceived(line)

    def allHeadersReceived(self) -> None:
        # Before Twisted's own handling: that is where a stream POST renders
        # and where "100 Continue" goes out.
        this: Any = self  # Twisted types its request-line fields loosely
        cap = None if is_stream_target(this._path) else this.site.maxBodyBytes
        headers = self.requests[-1].requestHeaders
        refusal = header_refusal(this._version, headers, self.length, cap)
        if refusal is not None:
            self.refuse(*refusal)
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if not self._refused:  # a request refused at its headers is not served
            super().allContentReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:
        """A malformed request: 400 and close, as Twisted does; but when the
        response is already under way (a duplex stream whose body turned
        malformed) a status line now would land in the middle of its body, so
        the connection is only closed: the client sees the stream cut short."""
        if any(getattr(r, "startedWriting", False) for r in self.requests):
            log.info("closing a stream whose request body is malformed")
            self.loseConnection()
            return
        super()._respondToBadRequestAndDisconnect()

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._headerLines == 0:
            self.refuse(414, "request line too long")
        else:
            self.refuse(431, "request header field too large")

    def refuse(self, code: int, message: str) -> None:
        """Answer ``code`` before the request is complete, then close."""
        if self._refused:
            return
        self._refused = True
        transport: Any = self.transport
        log.info(
            "refused a request from {peer}: {code} {message}",
            peer=peer_address(transport),
            code=code,
            message=message,
        )
        body = message.encode("utf-8") + b"\n"
        transport.write(
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s"
            % (code, REASONS.get(code) or http.RESPONSES[code], len(body), body)
        )
        self.loseConnection()  # unregisters the channel as producer first


@implementer(IHandshakeListener)
class ConsoleHTTPProtocol(http._GenericHTTPChannelProtocol):  # type: ignore[misc]
    """The protocol the TLS layer drives: HTTP/1.1 or HTTP/2, with deadlines.

    Twisted's own generic HTTP protocol (private, but the one place that sees
    both the TLS handshake and which HTTP version the client picked), told of
    the handshake through ``IHandshakeListener``.
    """

    deadlines: ConnectionDeadlines | None = None
    dataSeen = False  # a byte of a request came (connlimits.py closes silence)

    def makeConnection(self, transport: Any) -> None:
        site = self._site
        if site is not None:
            self.deadlines = ConnectionDeadlines(
                site.reactor,
                site.handshakeTimeout,
                site.headerTimeout,
                self._expired,
            )
            channel: Any = self._channel
            channel.deadlines = self.deadlines
            bound_send_buffer(transport, site.context.config.client_buffer_bytes)
        super().makeConnection(transport)
        if self.deadlines is not None:
            self.deadlines.start(tls=isinstance(transport, TLSMemoryBIOProtocol))

    def dataReceived(self, data: bytes) -> None:
        self.dataSeen = True
        start_http2(self)  # ours where ALPN picked h2, in place of Twisted's
        super().dataReceived(data)

    def handshakeCompleted(self) -> None:
        if self.deadlines is not None:
            self.deadlines.handshakeDone()

    def connectionLost(self, reason: Failure) -> None:
        if self.deadlines is not None:
            self.deadlines.stop()
        super().connectionLost(reason)

    def _expired(self, which: str) -> None:
        transport: Any = self._channel.transport
        if transport is None or getattr(transport, "disconnecting", False):
            return
        if which == "handshake":
            seconds = self.deadlines.handshake_timeout if self.deadlines else 0
            why = f"no TLS handshake within {seconds:g} s"
            if isinstance(transport, TLSMemoryBIOProtocol):
                # The TLS layer logs the failed handshake with this reason.
                transport.failVerification(Failure(HandshakeTimeout(why)))
            else:
                log.info("closing a connection: {why}", why=why)
                transport.abortConnection()
            return
        seconds = self.deadlines.header_timeout if self.deadlines else 0
        why = f"request headers not complete within {seconds:g} s"
        channel = self._channel
        if isinstance(channel, ConsoleChannel):
            channel.refuse(408, why)
            return
        # HTTP/2: frames arrive whole or not at all; nothing to answer to.
        log.info(
            "closing an HTTP/2 connection from {peer}: {why}",
            peer=peer_address(transport),
            why=why,
        )
        transport.abortConnection()


def _console_http_protocol(factory: Any) -> ConsoleHTTPProtocol:
    """What ``Site.buildProtocol`` makes for each connection."""
    return ConsoleHTTPProtocol(ConsoleChannel())


class Root(resource.Resource):
    def __init__(
        self,
        rpc: resource.Resource,
        streams: Callable[[bytes], resource.Resource] | None = None,
    ) -> None:
        super().__init__()
        self._rpc = rpc
        self.streams = streams

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        rest = request.postpath
        if path in (b"", b"RPC2") and not rest:
            return self._rpc
        vm_id = stream_vm_id([path, *rest])
        if vm_id is not None and self.streams is not None:
            return self.streams(vm_id)
        return NOT_FOUND


class ConsoleSite(server.Site):
    """The one site on the port; it knows which requests are in flight."""

    displayTracebacks = False
    requestFactory = ConsoleRequest
    protocol = _console_http_protocol  # type: ignore[assignment]

    def __init__(self, root: resource.Resource, context: ServerContext) -> None:
        super().__init__(root, logFormatter=access_log_line, reactor=context.reactor)
        self.context = context
        config = context.config
        self.maxBodyBytes = config.rpc_max_body
        self.handshakeTimeout = config.handshake_timeout
        self.headerTimeout = config.header_timeout
        self.headersReceivedHook: Callable[[ConsoleRequest], None] | None = None
        self.inFlight: set[ConsoleRequest] = set()
        self.stopping = False  # see endings.begin_shutdown
        self.started = time.monotonic()
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
