"""The viewer's end of a relay, whatever carries it: one small interface.

A graphics relay (``relay.py``) moves bytes between a viewer and an
endpoint.  The viewer is either a CONNECT tunnel's raw TLS connection
(``takeover.ViewerLink``) or a browser's websocket on the web listener
(``websockets/graphics.SocketLink``, binary messages); both are a
``ViewerSide``, so the one relay (the VNC authentication step, the
view-only filter, backpressure both ways) serves both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["ViewerBase", "ViewerSide"]


class ViewerSide(Protocol):
    """What a tunnel needs of its viewer's connection."""

    sent: int  # bytes written to the viewer
    received: int  # bytes the viewer sent
    gone: bool  # the viewer's connection is closed

    def whenLost(self, f: Callable[[], None]) -> None:
        """Call ``f`` once the viewer's connection is gone (now if it is)."""

    def accept(self) -> None:
        """The tunnel is up: tell the viewer (200, or a websocket's 101)."""

    def refuse(self, code: int, message: str) -> None:
        """Answer an HTTP error before the tunnel started, then close."""

    def start(self, sink: Callable[[bytes], None]) -> None:
        """Hand every byte from the viewer (those held so far first) to ``sink``."""

    def write(self, data: bytes) -> None:
        """Send bytes to the viewer."""

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """``producer`` is paused while the viewer's send buffer is full."""

    def unregisterProducer(self) -> None:
        """Forget the producer."""

    def pauseReading(self, why: str) -> None:
        """Stop reading the viewer until every ``why`` is resumed."""

    def resumeReading(self, why: str) -> None:
        """Read again once no other reason holds it."""

    def close(self) -> None:
        """Close after what is queued for the viewer is sent."""

    def abort(self) -> None:
        """Cut the connection now."""


class ViewerBase:
    """What both viewer sides keep alike: bytes from the viewer held until
    the relay starts, counts, pause reasons, and the callbacks of the end.

    A subclass gives ``transport`` (None once there is none) and calls
    ``_received`` with each piece from the viewer and ``_lostNow`` once.
    """

    transport: Any

    def __init__(self) -> None:
        self.sink: Callable[[bytes], None] | None = None
        self.early: list[bytes] = []  # from the viewer before start()
        self.received = 0  # from the viewer
        self.sent = 0  # to the viewer
        self.gone = False
        self._paused: set[str] = set()  # why reading is paused
        self._lost: list[Callable[[], None]] = []

    def whenLost(self, f: Callable[[], None]) -> None:
        if self.gone:
            f()
        else:
            self._lost.append(f)

    def _handEarly(self, sink: Callable[[bytes], None]) -> None:
        """From now on bytes go to ``sink``; those held so far first."""
        self.sink = sink
        early, self.early = self.early, []
        for data in early:
            if self.gone:
                return
            sink(data)

    def _received(self, data: bytes) -> None:
        if self.gone or not data:
            return
        self.received += len(data)
        if self.sink is None:
            self.early.append(data)
        else:
            self.sink(data)

    def pauseReading(self, why: str) -> None:
        if not self._paused and not self.gone and self.transport is not None:
            self.transport.pauseProducing()
        self._paused.add(why)

    def resumeReading(self, why: str) -> None:
        if why not in self._paused:
            return
        self._paused.discard(why)
        if not self._paused and not self.gone and self.transport is not None:
            self.transport.resumeProducing()

    def _lostNow(self) -> None:
        """The viewer's connection is gone: drop what is held, say so once."""
        if self.gone:
            return
        self.gone = True
        self.early = []
        calls, self._lost = self._lost, []
        for f in calls:
            f()
