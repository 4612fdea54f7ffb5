"""The viewer's connection, taken over from the HTTP/1.1 channel.

Once a CONNECT is admitted the channel parses no more HTTP: its
``dataReceived`` (and the ``rawDataReceived`` that Twisted's line parser
calls for what followed the request's headers in the same read) hand the
bytes to the tunnel.  Bytes that come before the tunnel is up (while the
endpoint connects) are held, and the connection is not read meanwhile, so
that is at most one read.

What stays Twisted's: the channel remains the TLS transport's producer, and
a producer registered here becomes the channel's request producer, paused
and resumed with the transport's send buffer (``[console]
client_buffer_bytes``) as a follower is.  Reading is paused with the
transport itself, as a stream POST's body is (streams/input.py).  The
request stays unfinished: when the connection goes the channel tells it
(``notifyFinish`` fails), which is how the tunnel learns the viewer left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from vdsmconsole.server.tunnels.side import ViewerBase

log = Logger(namespace="vdsmconsole.tunnels")

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
REASONS = {502: b"Bad Gateway", 503: b"Service Unavailable"}  # after takeover


def plain_answer(code: int, message: str) -> bytes:
    """A complete text/plain HTTP/1.1 answer that closes the connection."""
    body = message.encode("utf-8") + b"\n"
    return (
        b"HTTP/1.1 %d %s\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (code, REASONS[code], len(body), body)
    )


class ViewerLink(ViewerBase):
    """The viewer's side of a tunnel: bytes in, bytes out, backpressure."""

    def __init__(self, request: Any) -> None:
        super().__init__()
        self.request = request
        self.channel = request.channel
        self.transport = self.channel.transport  # TLS

    def take(self) -> None:
        """From now on every byte the viewer sends is the tunnel's."""
        channel = self.channel
        channel.dataReceived = self._data
        channel.rawDataReceived = self._data
        self.pauseReading("connecting")
        self.request.notifyFinish().addBoth(self._connectionLost)

    def start(self, sink: Callable[[bytes], None]) -> None:
        """Hand what came early, then every byte, to ``sink``; read again."""
        # Resume first (it reads nothing at once): a pause the sink asks for
        # while it takes the early bytes then stays in force.
        self.resumeReading("connecting")
        self._handEarly(sink)

    def _data(self, data: bytes) -> None:
        self._received(data)

    # -- writing -------------------------------------------------------------

    def accept(self) -> None:
        """Say 200: raw bytes from now on (no Content-Length, no chunking)."""
        self.request.setResponseCode(200)
        self.transport.write(ESTABLISHED)
        self.channel.site.log(self.request)

    def refuse(self, code: int, message: str) -> None:
        """Answer an error before the tunnel started, then close."""
        if self.gone:
            return
        self.request.setResponseCode(code)
        self.transport.write(plain_answer(code, message))
        self.channel.site.log(self.request)
        self.close()

    def write(self, data: bytes) -> None:
        if not self.gone and data:
            self.sent += len(data)
            self.transport.write(data)

    # The Follower of a serial tunnel registers itself as a response would.
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.channel.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self.channel is not None:
            self.channel.unregisterProducer()

    # -- the end -------------------------------------------------------------

    def close(self) -> None:
        """Close after what is queued for the viewer is sent."""
        if self.gone:
            return
        self.unregisterProducer()
        self.channel.loseConnection()  # unregisters the channel first: TLS closes

    def abort(self) -> None:
        """Cut at once (the server stops)."""
        if not self.gone:
            self.transport.abortConnection()

    def _connectionLost(self, result: object) -> None:
        self._lostNow()
