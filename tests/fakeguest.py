"""Test helpers that play the other side of a console: a guest, a sink.

Real parts, not mocks: `PtyGuest` holds the master of a real pty pair the way
qemu does, `RecordingSink` honours the `SourceSink` protocol and remembers
everything it was told, and `wait_until` polls a condition on the running
reactor with a deadline, so that a broken test fails instead of hanging.
"""

from __future__ import annotations

import array
import fcntl
import os
import termios
from collections.abc import Callable
from typing import Any

from twisted.internet import abstract, fdesc
from twisted.internet.defer import Deferred, maybeDeferred

from vdsmconsole.core.interfaces import SourceSink, SourceState


def wait_until(
    predicate: Callable[[], object],
    what: str = "condition",
    timeout: float = 5.0,
    interval: float = 0.01,
    reactor: Any = None,
) -> Deferred[None]:
    """A Deferred that fires once ``predicate()`` is true, checked every
    ``interval`` seconds; it fails with AssertionError after ``timeout``."""
    if reactor is None:
        from twisted.internet import reactor
    done: Deferred[None] = Deferred()
    deadline = reactor.seconds() + timeout

    def check() -> None:
        # maybeDeferred: an exception in the predicate fails the wait.
        maybeDeferred(predicate).addCallbacks(decide, done.errback)

    def decide(ok: object) -> None:
        if ok:
            done.callback(None)
        elif reactor.seconds() > deadline:
            done.errback(AssertionError(f"timed out after {timeout}s waiting: {what}"))
        else:
            reactor.callLater(interval, check)

    reactor.callLater(0, check)
    return done


def queued(fd: int) -> int:
    """Bytes waiting to be read on a tty fd (FIONREAD), without reading them."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    return buf[0]


class RecordingSink:
    """A SourceSink that remembers everything, in order."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.states: list[tuple[SourceState, str]] = []
        self.input_paused = False
        self.pauses = 0
        self.resumes = 0
        self.calls = 0

    @property
    def state(self) -> SourceState | None:
        return self.states[-1][0] if self.states else None

    def count(self, state: SourceState) -> int:
        return sum(1 for s, _ in self.states if s is state)

    def sourceData(self, data: bytes) -> None:
        self.calls += 1
        self.data += data

    def sourceStateChanged(self, state: SourceState, reason: str) -> None:
        self.calls += 1
        self.states.append((state, reason))

    def sourceInputPaused(self) -> None:
        self.calls += 1
        assert not self.input_paused, "paused twice"
        self.input_paused = True
        self.pauses += 1

    def sourceInputResumed(self) -> None:
        self.calls += 1
        assert self.input_paused, "resumed without a pause"
        self.input_paused = False
        self.resumes += 1


_sink_check: SourceSink = RecordingSink()


class _MasterReader(abstract.FileDescriptor):
    def __init__(self, reactor: Any, guest: PtyGuest) -> None:
        super().__init__(reactor)
        self._guest = guest
        self.connected = 1

    def fileno(self) -> int:
        return self._guest.master

    def doRead(self) -> Any:
        # EIO once nobody has the slave open: that ends this reader.
        return fdesc.readFromFD(self._guest.master, self._guest.received.extend)


class PtyGuest:
    """Plays qemu on a pty pair: holds the master, offers the slave's path.

    The slave fd stays open here too (as long as the test wants), which lets
    a test see what is queued for the source with `pending_for_source`.
    """

    def __init__(self, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        os.set_blocking(self.master, False)
        self.received = bytearray()
        self._reader: _MasterReader | None = None

    def write(self, data: bytes) -> None:
        """What the guest prints (small amounts: the master is nonblocking)."""
        written = os.write(self.master, data)
        assert written == len(data), "the pty's input queue is full"

    def read_available(self) -> bytes:
        """Read what the source has written so far, without waiting."""
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.received += chunk
        return bytes(self.received)

    def start_reading(self) -> None:
        """Take input as fast as it comes, like a guest that reads its serial."""
        if self._reader is None:
            self._reader = _MasterReader(self._reactor, self)
            self._reader.startReading()

    def stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.stopReading()
            self._reader = None

    def pending_for_guest(self) -> int:
        """Bytes the source wrote that the guest has not read yet."""
        return queued(self.master)

    def pending_for_source(self) -> int:
        """Bytes the guest wrote that nobody has read from the slave yet."""
        return queued(self.slave)

    def close_slave(self) -> None:
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1

    def close(self) -> None:
        """The guest goes away: qemu closes the master."""
        self.stop_reading()
        self.close_slave()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
