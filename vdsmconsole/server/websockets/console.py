"""A console over a websocket: output as binary messages, input from messages.

The streams' own parts do the work: a ``Follower`` pulls the console's
output from its cursor while the websocket's transport keeps up (one binary
message per write, at most ``follower.CHUNK`` bytes) and stops when it
pushes back, so a slow or stalled client costs what a slow GET follower
costs; a ``BodyWriter`` hands each message to the guest whole and stops
reading the socket while the guest does not take input.

What the client learns (docs/protocol.rst, "Browsers"): the 101 response's
``X-Console-Offset`` (and ``X-Console-Lost``), and the same as the first
message, a text message ``{"offset": N, "lost": L}``, for browsers, which
cannot read response headers.  Every binary message after it continues the
bytes before it, so the offset of a message's first byte is that offset plus
every binary byte received before it.  The close frame says how it ended:
1000 with the reason ``destroyed``, ``down``, ``complete`` or ``behind``
(the trailer ``X-Console-End`` of a GET), 1001 ``stopping`` when the server
stops (resume from the last offset), 1011 when something broke.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from twisted.logger import Logger

from vdsmconsole.core.console import Console
from vdsmconsole.core.interfaces import SERVER_STOPPING
from vdsmconsole.server.http.endings import StreamEnd
from vdsmconsole.server.streams.follower import Follower
from vdsmconsole.server.streams.input import BodyWriter
from vdsmconsole.server.websockets.wire import SocketProtocol

log = Logger(namespace="vdsmconsole.websockets")

NORMAL = 1000
GOING_AWAY = 1001


class SocketSink:
    """What a Follower writes to when its client is a websocket."""

    producer: Any = None
    finished = False

    def __init__(self, socket: SocketProtocol) -> None:
        self.socket = socket

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        transport: Any = self.socket.transport
        transport.registerProducer(producer, True)

    def unregisterProducer(self) -> None:
        self.producer = None
        transport: Any = self.socket.transport
        transport.unregisterProducer()

    def write(self, data: bytes) -> None:
        if data:
            self.socket.send_bytes(data)


class SocketFollower(Follower):
    """A Follower whose ends are close frames instead of trailers."""

    def end(self, why: StreamEnd) -> None:
        if not self.done:
            self.stop()
            self.request.socket.close(NORMAL, why.value)

    def consoleClosed(self, why: str) -> None:
        if why == SERVER_STOPPING:
            self.stop()
            self.request.socket.close(GOING_AWAY, StreamEnd.STOPPING.value)
        else:
            self.end(StreamEnd.DESTROYED)


class SocketInput(BodyWriter):
    """A BodyWriter whose stop on shutdown leaves the close to the follower."""

    def consoleClosed(self, why: str) -> None:
        if why == SERVER_STOPPING:
            self.stop()  # the follower sends 1001 stopping
        else:
            super().consoleClosed(why)


class ConsoleSocket:
    """One websocket on a console: follows it, and types if allowed.

    ``may_type`` False (a viewer): input messages are dropped and counted,
    never reaching the guest; the socket stays open for output.
    """

    def __init__(self, console: Console, start: int, lost: int, may_type: bool) -> None:
        self.console = console
        self.start = start
        self.lost = lost
        self.may_type = may_type
        self.headers = {"X-Console-Offset": str(start)}
        if lost:
            self.headers["X-Console-Lost"] = str(lost)
        self.follower: SocketFollower | None = None
        self.writer: SocketInput | None = None
        self.dropped = 0  # input bytes of a viewer, not sent to the guest
        self.gone = False
        self.was_open = False
        self.on_open: Callable[[], None] = lambda: None  # the audit's attach

    def opened(self, socket: SocketProtocol) -> None:
        if self.gone:
            return
        self.was_open = True
        self.on_open()
        socket.send_text(json.dumps({"offset": self.start, "lost": self.lost}))
        sink = SocketSink(socket)
        self.follower = SocketFollower(sink, self.console, self.start, follow=True)
        if self.may_type:
            # BodyWriter pauses "the body" by pausing the request channel's
            # transport: here the websocket's, which stops reading it.
            body = SimpleNamespace(isHTTP2=False, channel=socket, bodyConsumer=None)
            self.writer = SocketInput(body, self.console, True, self.follower)
            self.writer.start()
        self.follower.start()

    def received(self, data: bytes) -> None:
        if self.writer is None:
            self.dropped += len(data)
            return
        self.writer.bodyChunk(data)

    def closed(self) -> None:
        self.gone = True
        if self.follower is not None:
            self.follower.stop()
        if self.writer is not None:
            self.writer.stop()

    def summary(self) -> dict[str, int]:
        """What the audit's ``detach`` line says about this socket."""
        fields = {"bytesWritten": 0, "inputDropped": self.dropped}
        if self.follower is not None:
            fields["endOffset"] = self.follower.cursor
            fields["bytesSent"] = self.follower.sent
        if self.writer is not None:
            fields["bytesWritten"] = self.writer.written
        return fields
