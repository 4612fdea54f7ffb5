"""One console stream being received: offsets, loss, its end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from vdsmconsole.client.errors import ConnectionLost
from vdsmconsole.client.failures import _short
from vdsmconsole.streamend import StreamEnd, end_of


class Stream:
    """One ``GET /consoleStream/<vmId>`` response being received.

    ``start_offset`` is the absolute offset of its first byte and ``lost``
    how many requested bytes were no longer retained; ``offset`` is the
    absolute offset of the next byte to come.  ``done`` fires with this
    stream when the response ends (the server finished it, or ``close()``),
    or fails with ``ConnectionLost`` if the connection broke (the server
    stopping cuts its streams so).  ``end`` then says why the server ended
    it (its ``X-Console-End`` trailer): a ``StreamEnd`` (``destroyed``,
    ``down``, ``complete``, ``behind``), or None if it did not say.
    """

    def __init__(self, vm_id: str, start_offset: int, lost: int) -> None:
        self.vm_id = vm_id
        self.start_offset = start_offset
        self.lost = lost
        self.received = 0
        self.closed = False
        self.end: StreamEnd | None = None
        self.done: defer.Deferred[Stream] = defer.Deferred()
        self._transport: Any = None

    @property
    def offset(self) -> int:
        return self.start_offset + self.received

    def close(self) -> None:
        """Stop receiving; ``done`` fires with the stream (not a failure)."""
        if self.closed:
            return
        self.closed = True
        if self._transport is not None:
            self._transport.stopProducing()


def _chunk_decoder(transport: Any) -> Any:
    """Twisted's decoder of the chunked response body now being delivered.

    Twisted's ``Agent`` parses a response's trailers but hands them to no
    one; the decoder keeps them (``_trailerHeaders``).  It is reached from
    the body's transport: the connection's ``TransportProxyProducer``, the
    TLS protocol, the HTTP/1.1 client protocol, its parser.  None when any
    step is missing (the end's reason is then unknown, as from an old server).
    """
    tls = getattr(transport, "_producer", None)
    parser = getattr(getattr(tls, "wrappedProtocol", None), "_parser", None)
    decoder = getattr(parser, "bodyDecoder", None)
    if isinstance(decoder, http._ChunkedTransferDecoder) and isinstance(
        getattr(decoder, "_trailerHeaders", None), list
    ):
        return decoder
    return None


class _StreamReceiver(Protocol):
    def __init__(
        self, stream: Stream, on_data: Callable[[bytes], object], where: str
    ) -> None:
        self.stream = stream
        self.on_data = on_data
        self.where = where
        self._decoder: Any = None

    def connectionMade(self) -> None:
        self.stream._transport = self.transport
        self._decoder = _chunk_decoder(self.transport)
        if self.stream.closed:
            self.transport.stopProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.stream.closed:
            return
        self.stream.received += len(data)
        self.on_data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        done = self.stream.done
        if done.called:
            return
        if self.stream.closed or reason.check(ResponseDone, PotentialDataLoss):
            if reason.check(ResponseDone) and self._decoder is not None:
                self.stream.end = end_of(self._decoder._trailerHeaders)
            done.callback(self.stream)
        else:
            done.errback(
                ConnectionLost(
                    f"console stream from {self.where} lost: {_short(reason)}"
                )
            )
