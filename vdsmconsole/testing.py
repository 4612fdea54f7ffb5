"""Fakes and helpers for testing code that uses vdsmconsole, as the suite does.

Real parts where they are cheap, fakes that honour the interfaces where not:

- ``FakeSource`` is a ``ConsoleSource`` that the test plays: the guest
  printing (``emit``), the link coming and going (``set_state``), the guest's
  input pushing back (``input_full``/``input_drained``).
- ``RecordingSink`` is a ``SourceSink`` that remembers what a source said.
- ``PtyGuest`` holds the master of a real pty pair, as qemu does.
- ``make_console`` builds a started ``Console`` on a ``FakeSource``.
- ``wait_until`` polls a condition on the running reactor with a deadline.
- ``free_port`` holds a free loopback port bound until it is released, so
  that nobody else is handed it meanwhile.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import termios
from collections.abc import Callable
from types import TracebackType
from typing import Any

from twisted.internet import abstract, fdesc
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock

from vdsmconsole.core.console import Console
from vdsmconsole.core.consolelog import ConsoleLog
from vdsmconsole.core.interfaces import ConsoleSource, SourceSink, SourceState
from vdsmconsole.core.ring import Ring
from vdsmconsole.spec import ConsoleSpec

__all__ = [
    "FakeSource",
    "HeldPort",
    "PtyGuest",
    "UNIX_SPEC",
    "RecordingSink",
    "free_port",
    "make_console",
    "pattern",
    "queued",
    "wait_until",
]


class HeldPort:
    """A free TCP port, kept bound (not listening) until ``release()``.

    While it is held the kernel hands the port to nobody else, and nothing
    listens on it: a connection to it is refused.  A server that sets
    ``SO_REUSEADDR`` (Twisted's ``listenTCP``, socat's ``reuseaddr``) may
    listen on it meanwhile, since this socket sets it too; release the port
    once that server listens.  As a context manager it gives the port number.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._socket: socket.socket | None = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.host = host
        self.port = int(self._socket.getsockname()[1])

    def release(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> int:
        return self.port

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def free_port(host: str = "127.0.0.1") -> HeldPort:
    """A free port on ``host``, held until released (see ``HeldPort``)."""
    return HeldPort(host)


class FakeSource:
    """A ConsoleSource played by the test: it is both the guest and the link.

    ``emit`` is the guest printing, ``set_state`` the link coming and going,
    ``input_full``/``input_drained`` the guest's input side pushing back.
    ``stop`` fires after ``stop_delay`` seconds of the clock (0: at once), as
    a spawned child that takes a while to exit would.
    """

    def __init__(self, clock: Clock | None = None, stop_delay: float = 0.0) -> None:
        self.state = SourceState.DOWN
        self.sink: SourceSink | None = None
        self.clock = clock or Clock()
        self.stop_delay = stop_delay
        self.written: list[bytes] = []
        self.pauses = 0
        self.resumes = 0
        self.stopping = False

    # ConsoleSource
    def start(self, sink: SourceSink) -> None:
        if self.sink is not None or self.stopping:
            raise RuntimeError("started twice")
        self.sink = sink
        self.set_state(SourceState.CONNECTED, "attached")

    def write(self, data: bytes) -> bool:
        if self.state is not SourceState.CONNECTED or self.stopping:
            return False
        self.written.append(bytes(data))
        return True

    def pauseReading(self) -> None:
        self.pauses += 1

    def resumeReading(self) -> None:
        self.resumes += 1

    def stop(self) -> Deferred[None]:
        if not self.stopping:
            if self.state is not SourceState.DOWN:
                self.set_state(SourceState.DOWN, "stopped")
            self.stopping = True
        if not self.stop_delay:
            self.sink = None
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.clock.callLater(self.stop_delay, d.callback, None)
        return d

    def describe(self) -> dict[str, Any]:
        return {"type": "fake", "state": self.state.value}

    # the guest's side
    def emit(self, data: bytes) -> None:
        assert self.sink is not None and not self.stopping
        self.sink.sourceData(data)

    def set_state(self, state: SourceState, reason: str) -> None:
        self.state = state
        if self.sink is not None:
            self.sink.sourceStateChanged(state, reason)

    def input_full(self) -> None:
        assert self.sink is not None
        self.sink.sourceInputPaused()

    def input_drained(self) -> None:
        assert self.sink is not None
        self.sink.sourceInputResumed()


# A typing Protocol assignment: mypy checks the fake against the interface.
_fake_is_a_source: ConsoleSource = FakeSource()


UNIX_SPEC = ConsoleSpec(type="unix", path="/run/vdsmconsole-test/nowhere.sock")


def pattern(offset: int, size: int) -> bytes:
    """Bytes that say where they belong, so a misplaced read is caught."""
    return bytes((offset + i) * 7 % 251 for i in range(size))


def make_console(
    source: FakeSource | None = None,
    *,
    vm_id: str = "vm1",
    spec: ConsoleSpec | None = None,
    ring_bytes: int = 1024,
    log: ConsoleLog | None = None,
    block_size: int | None = None,
) -> Console:
    """A started console on ``source`` (a new ``FakeSource`` by default), a
    real ring and, if given, a real console log."""
    source = source or FakeSource()
    spec = spec or UNIX_SPEC
    ring = Ring(ring_bytes, start=log.end if log else 0, block_size=block_size)
    console = Console(vm_id, spec, source, ring, log, source.clock)
    console.start()
    return console


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


# A typing Protocol assignment: mypy checks the fake against the interface.
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
