"""HTTP/1.1 and HTTP/2 protocol adapters: header limits and deadlines.

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

from typing import Any

from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web import http
from zope.interface import implementer

from vdsmconsole.identity import peer_address
from vdsmconsole.server.http.deadlines import ConnectionDeadlines, HandshakeTimeout
from vdsmconsole.server.http.h2channel import bound_send_buffer, start_http2
from vdsmconsole.server.http.httprules import header_refusal
from vdsmconsole.server.http.routes import is_stream_target

log = Logger(namespace="vdsmconsole.site")


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


class _Gather:
    """Stands in for the transport while a response head is held."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    def writeSequence(self, iovec: Any) -> None:
        self.parts.extend(iovec)


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

    # The head of a response whose first body bytes follow in the same call
    # (ConsoleRequest.write): held so that both go out as one transport
    # write, one TLS record and one send rather than two each.
    _heldHead: list[bytes] | None = None

    def holdHead(self) -> None:
        self._heldHead = []

    def flushHead(self) -> None:
        """Write a held head that no body followed (HEAD, 204, 304)."""
        held, self._heldHead = self._heldHead, None
        if held:
            transport: Any = self.transport
            transport.writeSequence(held)

    def writeHeaders(self, *args: Any, **kwargs: Any) -> None:
        if self._heldHead is None:
            super().writeHeaders(*args, **kwargs)
            return
        transport = self.transport
        self.transport = _Gather(self._heldHead)  # type: ignore[assignment]
        try:
            super().writeHeaders(*args, **kwargs)
        finally:
            self.transport = transport

    def write(self, data: bytes) -> None:
        if self._heldHead:
            self.writeSequence([data])
            return
        super().write(data)

    def writeSequence(self, iovec: Any) -> None:
        held, self._heldHead = self._heldHead, None
        super().writeSequence([*held, *iovec] if held else iovec)

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
class ConsoleHTTPProtocol(http._GenericHTTPChannelProtocol):
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
            bound_send_buffer(transport, site.clientBufferBytes)
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
