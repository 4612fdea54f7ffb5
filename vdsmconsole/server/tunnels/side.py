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

__all__ = ["ViewerSide"]


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
