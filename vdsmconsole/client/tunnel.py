"""``CONNECT /consoleTunnel/<vmId>?protocol=P``: a console as raw bytes.

The server answers ``200`` and from then on the connection carries the
console's own protocol (VNC, SPICE, RDP, or the serial console without HTTP
framing) both ways; any other status is a one-line plain-text refusal and
the connection closes.  Twisted's ``Agent`` has no CONNECT, so this one
request is spoken here over the client's mutual TLS (``MutualTLSPolicy``,
without ALPN, so the server picks HTTP/1.1, which CONNECT needs).

``Tunnel.splice(transport)`` joins an open tunnel to a local connection
with backpressure both ways: each transport is registered as the producer of
the other, so a local reader that stops reading stops us reading the server,
and a server that stops reading stops us reading the local side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from vdsmconsole.client.errors import (
    ClientError,
    ConsoleUnavailable,
    HTTPError,
    NoSuchConsole,
    ServerStopping,
)
from vdsmconsole.client.responsehead import MAX_HEAD, BadHead, HeadReader, ResponseHead
from vdsmconsole.spec import TUNNEL_PATH
from vdsmconsole.status import no_vm_message
from vdsmconsole.streamend import END_HEADER, StreamEnd, parse_end

__all__ = ["MAX_HEAD", "Tunnel", "open_tunnel", "refusal", "tunnel_head"]


def tunnel_head(
    host: str, port: int, vm_id: str, protocol: str, token: str | None = None
) -> bytes:
    """The CONNECT request head; every part of the target is percent-quoted."""
    if not vm_id:
        raise ValueError("a tunnel needs a vmId")
    if not protocol:
        raise ValueError("a tunnel needs a protocol")
    target = f"{TUNNEL_PATH}{quote(vm_id, safe='')}?protocol={quote(protocol, safe='')}"
    if token is not None:
        target += f"&token={quote(token, safe='')}"
    netloc = f"[{host}]" if ":" in host else host.encode("idna").decode("ascii")
    return f"CONNECT {target} HTTP/1.1\r\nHost: {netloc}:{port}\r\n\r\n".encode("ascii")


def refusal(
    code: int, text: bytes, where: str, vm_id: str, end: StreamEnd | None = None
) -> ClientError:
    """The error for a CONNECT answered ``code`` with the server's ``text``:
    its first line, in the client's usual classes (404 ``NoSuchConsole``;
    502 ``ConsoleUnavailable``: the endpoint did not answer; 503
    ``ServerStopping`` with ``X-Console-End: stopping``, else
    ``ConsoleUnavailable``: a serial console whose guest is down; any other
    ``HTTPError``)."""
    lines = text.decode("utf-8", "replace").strip().splitlines()
    line = lines[0].strip()[:200] if lines else ""
    if code == 404:
        return NoSuchConsole(code, line or no_vm_message(vm_id))
    if code == 503 and end is StreamEnd.STOPPING:
        return ServerStopping(code, line or f"the server at {where} is stopping")
    if code in (502, 503):
        return ConsoleUnavailable(code, line or f"the console of {vm_id} is down")
    return HTTPError(code, f"{where} answered {code}: {line or 'no reason given'}")


class Tunnel:
    """An open tunnel: ``write()`` sends, ``on_data`` receives, ``close()``.

    ``done`` fires (with ``None``) when the connection is gone, whichever
    side ended it.  Bytes that arrive before ``on_data`` is set, or before
    ``splice``, are kept and handed over then (only what came with the
    server's answer: the reading is paused until someone takes them).
    """

    def __init__(self, vm_id: str, protocol: str, wire: _TunnelProtocol) -> None:
        self.vm_id = vm_id
        self.protocol = protocol
        self.done: defer.Deferred[None] = defer.Deferred()
        self.closed = False
        self._wire = wire
        self._on_data: Callable[[bytes], object] | None = None
        self._pending = b""
        self._held = False  # reading paused until someone takes the bytes
        self._local: Any = None  # the transport of splice()

    @property
    def transport(self) -> Any:
        """The TLS transport to the server (a push producer and a consumer)."""
        return self._wire.transport

    @property
    def on_data(self) -> Callable[[bytes], object] | None:
        return self._on_data

    @on_data.setter
    def on_data(self, receiver: Callable[[bytes], object] | None) -> None:
        self._on_data = receiver
        if receiver is None:
            return
        if self._pending:
            pending, self._pending = self._pending, b""
            receiver(pending)
        if self._held and not self.closed:
            self._held = False
            self.transport.resumeProducing()

    def _received(self, data: bytes) -> None:
        if self._on_data is None:
            self._pending += data
        else:
            self._on_data(data)

    def write(self, data: bytes) -> None:
        """Send ``data`` through the tunnel (as is)."""
        if not isinstance(data, bytes):
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if data and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        """Close the tunnel once what was written is sent."""
        if not self.closed:
            self.closed = True
            if self._local is not None:
                # A transport with a producer registered never closes.
                self.transport.unregisterProducer()
            self.transport.loseConnection()

    def splice(self, local: Any) -> None:
        """Relay between the tunnel and ``local`` (a connected transport).

        Bytes go both ways as they come; each transport pauses the other when
        its own buffer is full (producer and consumer), and when either side
        closes, the other is closed once its pending bytes are out.
        """
        self._local = local
        local.registerProducer(self.transport, True)
        self.transport.registerProducer(local, True)
        self.on_data = local.write
        self.done.addCallback(self._unsplice)

    def _unsplice(self, _: object) -> None:
        local, self._local = self._local, None
        if local is not None:
            local.unregisterProducer()
            local.loseConnection()  # once what it still has to send is out

    def _lost(self) -> None:
        self.closed = True
        if not self.done.called:
            self.done.callback(None)


class _TunnelProtocol(Protocol):
    """The CONNECT exchange, then the tunnel's bytes to its ``Tunnel``."""

    def __init__(
        self,
        head: bytes,
        vm_id: str,
        protocol: str,
        describe: Callable[[int, bytes, StreamEnd | None], Exception],
    ) -> None:
        self.head = head
        self.describe = describe
        self.tunnel = Tunnel(vm_id, protocol, self)
        # Cancelled (a timeout) before the answer: the connection goes too.
        self.started: defer.Deferred[Tunnel] = defer.Deferred(self._cancel)
        self._reader = HeadReader()
        self._buffer = b""  # a refusal's text, as it comes
        # (code, Content-Length, X-Console-End) of a refusal whose text is
        # still coming.
        self._refusal: tuple[int, int | None, StreamEnd | None] | None = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self.head)

    def _cancel(self, started: defer.Deferred[Tunnel]) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.started.called:
            if self._refusal is None:
                self.tunnel._received(data)
            return
        if self._refusal is not None:
            self._buffer += data
            self._checkRefusal()
            return
        try:
            received = self._reader.receive(data)
        except BadHead as e:
            self._fail(e)
            return
        if received is not None:
            self._headReceived(*received)

    def _headReceived(self, head: ResponseHead, rest: bytes) -> None:
        if head.code == 200:
            # From here on everything is the console's, including ``rest``;
            # held until the caller takes it (reading paused meanwhile).
            self.tunnel._pending = rest
            self.tunnel._held = True
            transport: Any = self.transport
            transport.pauseProducing()
            self.started.callback(self.tunnel)
            return
        end = parse_end(head.header(END_HEADER))
        self._refusal = (head.code, head.content_length, end)
        self._buffer = rest
        self._checkRefusal()

    def _checkRefusal(self) -> None:
        assert self._refusal is not None
        code, length, _ = self._refusal
        if length is not None and len(self._buffer) >= length:
            self._refuse(self._buffer[:length])
        elif len(self._buffer) > MAX_HEAD:
            self._refuse(self._buffer[:MAX_HEAD])

    def _refuse(self, text: bytes) -> None:
        assert self._refusal is not None
        code, _, end = self._refusal
        self._fail(self.describe(code, text, end))

    def _fail(self, error: Exception | Failure) -> None:
        if not self.started.called:
            self.started.errback(error)
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.started.called:
            if self._refusal is not None:
                # The text of a refusal without a length ends with the connection.
                self._refuse(self._buffer)
            else:
                self.started.errback(reason)
        self.tunnel._lost()


def open_tunnel(
    reactor: Any,
    host: str,
    port: int,
    creator: Any,
    vm_id: str,
    protocol: str,
    *,
    token: str | None = None,
    describe: Callable[[int, bytes, StreamEnd | None], Exception],
    timeout: float | None,
) -> defer.Deferred[Tunnel]:
    """Connect and send the CONNECT; fires with the ``Tunnel`` once the server
    answered 200, or fails with ``describe(code, text, X-Console-End)`` for a
    refusal (or
    the low-level failure, for the caller to describe)."""
    head = tunnel_head(host, port, vm_id, protocol, token)
    wire = _TunnelProtocol(head, vm_id, protocol, describe)
    tcp: Any = HostnameEndpoint(reactor, host, port, timeout=timeout or 30)
    factory = Factory()
    factory.buildProtocol = lambda addr: wire  # type: ignore[method-assign]
    endpoint: Any = wrapClientTLS(creator, tcp)
    connected: defer.Deferred[Any] = endpoint.connect(factory)

    def opened(_: Any) -> defer.Deferred[Tunnel]:
        return wire.started

    return connected.addCallback(opened)
