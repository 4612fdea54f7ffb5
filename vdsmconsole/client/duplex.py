"""One ``POST /consoleStream/<vmId>?duplex=1`` over HTTP/1.1: input out,
output in, in one request.

Twisted's ``Agent`` (and so treq) hands out a response only once the request
body is complete, and a duplex request's body ends when the user is done
typing, so the client library speaks this one request itself: the request
head, then each ``write()`` as an HTTP chunk at once; the response head is
parsed when it comes and its chunked body is decoded by Twisted's own
decoder.  TLS, certificates and name checks are those of the rest of the
client (``MutualTLSPolicy``), without ALPN, so the server picks HTTP/1.1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web import http

from vdsmconsole.client.responsehead import MAX_HEAD, BadHead, HeadReader, ResponseHead
from vdsmconsole.spec import STREAM_PATH
from vdsmconsole.streamend import END_HEADER, StreamEnd, end_of, parse_end

__all__ = ["MAX_HEAD", "DuplexStream", "open_duplex"]


class DuplexStream:
    """A duplex console stream: ``write()`` types, ``on_data`` gets output.

    Like ``client.Stream``: ``start_offset``, ``lost`` and ``offset`` count
    the output; ``done`` fires with the stream when the response ends (the
    console was destroyed, or ``close()``; ``end`` says why, as for
    ``client.Stream``) or fails with the error that cut it.  ``finish()``
    ends the input; the output goes on until the server ends it or
    ``close()``.
    """

    def __init__(self, vm_id: str, protocol: _DuplexProtocol) -> None:
        self.vm_id = vm_id
        self.start_offset = 0
        self.lost = 0
        self.received = 0
        self.closed = False
        self.finished = False
        self.end: StreamEnd | None = None
        self.done: defer.Deferred[DuplexStream] = defer.Deferred()
        self._protocol = protocol

    @property
    def offset(self) -> int:
        return self.start_offset + self.received

    def write(self, data: bytes) -> None:
        """Send ``data`` to the guest now, as one chunk (kept whole)."""
        if not isinstance(data, bytes):
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if self.finished:
            raise ValueError("write() after finish()")
        if data and not self.closed:
            self._protocol.send(b"%x\r\n%s\r\n" % (len(data), data))

    def finish(self) -> None:
        """No more input (the output keeps coming)."""
        if not self.finished:
            self.finished = True
            self._protocol.send(b"0\r\n\r\n")

    def close(self) -> None:
        """Leave: drop the connection; ``done`` fires with the stream."""
        if not self.closed:
            self.closed = True
            self._protocol.hangUp()


class _DuplexProtocol(Protocol):
    def __init__(
        self,
        head: bytes,
        vm_id: str,
        on_data: Callable[[bytes], object],
        describe: Callable[[int, bytes, StreamEnd | None], Exception],
        lost: Callable[[Failure], Exception],
    ) -> None:
        self.head = head
        self.on_data = on_data
        self.describe = describe
        self.lost = lost
        self.stream = DuplexStream(vm_id, self)
        self.started: defer.Deferred[DuplexStream] = defer.Deferred()
        self._reader = HeadReader()
        self._buffer = b""  # a refusal's text, as it comes
        self._decoder: Any = None
        # code, length, X-Console-End
        self._refusal: tuple[int, int | None, StreamEnd | None] | None = None
        self._ended = False

    # -- the stream's side

    def send(self, data: bytes) -> None:
        transport: Any = self.transport
        if transport is not None and not self._ended:
            transport.write(data)

    def hangUp(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()

    # -- the connection's side

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self.head)

    def dataReceived(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                self._decoder.dataReceived(data)
            except http._MalformedChunkedDataError:
                self._end(Failure(ValueError("malformed chunked response")))
            return
        if self._refusal is not None:
            if not self._ended:  # described already: the rest is dropped
                self._buffer += data
                self._checkRefusal()
            return
        try:
            received = self._reader.receive(data)
        except BadHead as e:
            self._end(Failure(e))
            return
        if received is not None:
            self._headReceived(*received)

    def _headReceived(self, head: ResponseHead, rest: bytes) -> None:
        if head.code != 200:
            end = parse_end(head.header(END_HEADER))
            self._refusal = (head.code, head.content_length, end)
            self._buffer = rest
            self._checkRefusal()
            return
        stream = self.stream
        try:
            stream.start_offset = int(head.header(b"x-console-offset", b"0"))
            stream.lost = int(head.header(b"x-console-lost", b"0"))
        except ValueError:
            self._end(Failure(ValueError("bad X-Console-* header")))
            return
        self._decoder = http._ChunkedTransferDecoder(self._output, self._bodyEnded)
        self.started.callback(stream)
        if rest:
            self.dataReceived(rest)

    def _checkRefusal(self) -> None:
        assert self._refusal is not None
        code, length, end = self._refusal
        if length is not None and len(self._buffer) >= length:
            self._fail(self.describe(code, self._buffer[:length], end))
            self.hangUp()
        elif len(self._buffer) > MAX_HEAD:
            # No length and no end: what came is enough to say why (as tunnel.py).
            self._fail(self.describe(code, self._buffer[:MAX_HEAD], end))
            self.hangUp()

    def _output(self, data: bytes) -> None:
        if not self.stream.closed:
            self.stream.received += len(data)
            self.on_data(data)

    def _bodyEnded(self, extra: bytes) -> None:
        self.stream.end = end_of(self._decoder._trailerHeaders)
        self._end(None)
        self.hangUp()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._refusal is not None and not self.started.called:
            code, _, end = self._refusal
            self._fail(self.describe(code, self._buffer, end))
        elif self.stream.closed:
            self._end(None)
        else:
            self._end(reason)

    def _fail(self, error: Exception) -> None:
        self._ended = True
        if not self.started.called:
            self.started.errback(error)

    def _end(self, reason: Failure | None) -> None:
        """The response is over: cleanly (``None``) or by ``reason``."""
        if self._ended:
            return
        self._ended = True
        if not self.started.called:
            # Before the response: the caller describes the failure (a refused
            # certificate, a reset) as for any request.
            self.started.errback(reason or Failure(ValueError("no response")))
            self.hangUp()
            return
        done = self.stream.done
        if reason is None:
            done.callback(self.stream)
        else:
            done.errback(self.lost(reason))
        self.hangUp()


def open_duplex(
    reactor: Any,
    host: str,
    port: int,
    creator: Any,
    vm_id: str,
    query: bytes,
    on_data: Callable[[bytes], object],
    *,
    describe: Callable[[int, bytes, StreamEnd | None], Exception],
    lost: Callable[[Failure], Exception],
    timeout: float | None,
) -> defer.Deferred[DuplexStream]:
    """Connect and start the duplex request; fires once the response's head
    is in (with the stream), or with the error that refused it."""
    netloc = f"[{host}]" if ":" in host else host
    head = (
        b"POST %s%s%s HTTP/1.1\r\nHost: %s:%d\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n"
        % (
            STREAM_PATH.encode("ascii"),
            vm_id.encode("ascii"),
            query,
            netloc.encode("idna"),
            port,
        )
    )
    protocol = _DuplexProtocol(head, vm_id, on_data, describe, lost)
    tcp: Any = HostnameEndpoint(reactor, host, port, timeout=timeout or 30)
    factory = Factory()
    factory.buildProtocol = lambda addr: protocol  # type: ignore[method-assign]
    endpoint: Any = wrapClientTLS(creator, tcp)
    connected: defer.Deferred[Any] = endpoint.connect(factory)
    return connected.addCallback(lambda _: protocol.started)
