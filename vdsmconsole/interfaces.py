"""The small interfaces that tie sources, consoles and streams together."""

from __future__ import annotations

import enum
from typing import Any, Protocol

from twisted.internet.defer import Deferred


class SourceState(enum.StrEnum):
    # A unix or tcp source before its first connection: ``reconnecting`` is
    # for one that was connected and lost its guest.
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DOWN = "down"


class SourceSink(Protocol):
    """What a source reports to: the console that owns it."""

    def sourceData(self, data: bytes) -> None:
        """Bytes the guest wrote, in order, as they were read."""

    def sourceStateChanged(self, state: SourceState, reason: str) -> None:
        """The source changed state (see SourceState); ``reason`` says why."""

    def sourceInputPaused(self) -> None:
        """The guest is not taking input: stop writing until resumed."""

    def sourceInputResumed(self) -> None:
        """The guest takes input again."""


class ConsoleSource(Protocol):
    """One guest serial console: a read side and a write side.

    Exactly one reader per guest console: the server.  A source never waits
    for its sink; it reads whenever the guest has written (a slowly trickling
    guest is left unread for a few ms after a small read, so the kernel gathers
    its writes into one).
    """

    state: SourceState

    def start(self, sink: SourceSink) -> None:
        """Open or connect, and report to ``sink`` from now on."""

    def write(self, data: bytes) -> bool:
        """Send input to the guest; False (nothing taken) unless connected."""

    def pauseReading(self) -> None:
        """Leave the guest's output unread for now (the kernel keeps it)."""

    def resumeReading(self) -> None:
        """Read the guest's output again."""

    def stop(self) -> Deferred[None]:
        """Stop for good: close, stop retrying, end a spawned child.

        After the Deferred fires the sink hears nothing more.
        """

    def describe(self) -> dict[str, Any]:
        """Facts for list(fullStatus): e.g. the pty path, a child's pid."""
