"""Guest console sources: the one reader and writer of each guest's console.

A guest's serial console lives behind a pty that qemu holds the master of, a
socket chardev qemu listens on, or (for the demo guest and tests) a child
process on a pty of our own.  Whatever the kind, the console above needs the
same few things, which `ConsoleSource` names: every byte the guest writes,
handed on as soon as it is read (qemu drops serial output nobody reads, and a
guest whose console blocks can freeze on its own kernel messages); a way to
send input whose backpressure reaches the writers; a state that says whether
the guest is there; and a stop that really ends everything.

Each kind fails differently, and that shapes the code:

- A pty path is never reopened.  The kernel hands ``/dev/pts/N`` to the next
  pty as soon as the old one is gone, so reopening the path could attach
  another guest's console.  A pty whose guest went away stays ``down``.
  After a server restart the registry brings a pty console back, and its
  path is opened again only if the process that held the pty's master when
  it was first attached (its pid and start time, found in /proc) still holds
  the master of that pty number.
- A socket chardev is retried forever with exponential backoff: qemu may start
  after us or be restarted, and the socket path or port stays the guest's.
- A spawned child is ours: ``stop()`` ends it (SIGTERM, then SIGKILL).

Reading is shaped for what it costs.  A busy guest's pty is read until it
runs dry and handed on as one piece (a pty gives about 4 KiB per read).  A
guest that trickles a few bytes at a time is read at once, then left unread
for ``SourceOptions.coalesce_delay`` (a few milliseconds) so that the kernel
gathers its next writes into one read: one log write and one TLS record per
few milliseconds instead of one per few bytes.  Input ends such a wait, and
the output that answers it (an echo) is never held.  Within the wait the pty
buffers what the guest writes (about 12 KiB before the guest's write would
block), so nothing is lost and the guest is not stalled in practice.

Input backpressure comes from the write transport's producer protocol: each
source registers a small push producer on the transport it writes to, and the
transport pauses it when its buffer is full and resumes it when drained.
Those calls become ``sourceInputPaused`` / ``sourceInputResumed``.

The reactor is always injected; only tests and the entry point use the global
one.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import termios
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet import abstract, error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import (
    Factory,
    ProcessProtocol,
    Protocol,
    connectionDone,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vdsmconsole.interfaces import ConsoleSource, SourceSink, SourceState
from vdsmconsole.spec import ConsoleSpec
from vdsmconsole.transports import write_at_once

__all__ = [
    "PtyOwner",
    "PtySource",
    "SourceOptions",
    "SpawnSource",
    "TcpSource",
    "UnixSource",
    "backoff_delay",
    "find_pty_owner",
    "scan_pty_owners",
    "make_raw",
    "make_source",
    "owner_holds",
]

_log = Logger()

# A sink that raises must not take the source down with it: a pty source that
# lost its fds can never come back.  Shared, as failureHandler advises, because
# sourceData is the hot path.
_sinkFailures = _log.failureHandler("while reporting to a console source's sink:")

# One read takes what the kernel has, up to this much.
READ_SIZE = 65536
# A pty hands out at most about 4 KiB per read (its line discipline's buffer),
# however much the guest has queued behind that.  A busy guest's output is
# therefore read in a loop until the pty runs dry or this much is in hand,
# and passed on as one: one ring append, one log write and one write to each
# client instead of one per 4 KiB, which is most of what a relay costs.
READ_BATCH = 256 * 1024
# A read this short means the guest had nothing more queued: stop there
# rather than pay for a read that would only say EAGAIN.
FULL_READ = 2048

# The reactor provides IReactorTime, IReactorFDSet, IReactorProcess,
# IReactorTCP, IReactorUNIX and IReactorPluggableNameResolver.  zope interfaces
# are not checkable types without the mypy-zope plugin, hence Any.
Reactor = Any


@dataclass(frozen=True)
class SourceOptions:
    """How sources behave; from the server's configuration, same for all."""

    reconnect_initial: float = 0.5
    """Seconds before the first retry of a unix/tcp source; doubles each time."""
    reconnect_max: float = 30.0
    """The cap of the exponential backoff."""
    connect_timeout: float = 10.0
    """Seconds one unix/tcp connection attempt may take."""
    spawn_commands: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Name -> argv of the commands a spawn source may run.

    A spawn console names one of these; an argv never comes from the wire.
    """
    spawn_env: Mapping[str, str] | None = None
    """The environment of spawned commands; None inherits the server's."""
    stop_timeout: float = 5.0
    """Seconds a spawned child gets between SIGTERM and SIGKILL; also how long
    its pty may stay open after it exited (a grandchild may hold it)."""
    coalesce_delay: float = 0.003
    """Seconds the guest's output is left unread after a small read; 0: never.

    A guest that prints a few bytes at a time (a boot log, a progress bar)
    would otherwise cost one read, one log write and one TLS record per few
    bytes.  After a read shorter than ``small_read`` the source stops reading
    for this long, so that the kernel gathers what the guest writes meanwhile
    and the next read takes it all at once.  The first bytes after a quiet
    spell go out at once; later ones wait at most this long.  Input written to
    the guest ends the wait, and output that follows input (an echo, the
    answer to a keystroke) is never held.
    """
    small_read: int = 4096
    """Reads shorter than this many bytes start a coalescing wait, if they came
    slowly enough that the guest writes less than this during the wait (a
    guest streaming faster than ``small_read / coalesce_delay``, about 1.4 MB/s
    by default, is never held back)."""

    def __post_init__(self) -> None:
        for name in ("reconnect_initial", "reconnect_max", "connect_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        if not self.stop_timeout >= 0:
            raise ValueError(f"stop_timeout must be >= 0, not {self.stop_timeout!r}")
        if not 0 <= self.coalesce_delay <= 1:
            raise ValueError(
                f"coalesce_delay must be 0 to 1 second, not {self.coalesce_delay!r}"
            )
        if self.small_read < 0:
            raise ValueError(f"small_read must be >= 0, not {self.small_read!r}")
        for name, argv in self.spawn_commands.items():
            if (
                isinstance(argv, str | bytes)
                or not argv
                or not all(isinstance(arg, str) for arg in argv)
            ):
                raise ValueError(
                    f"spawn command {name!r} needs a non-empty argv list, not {argv!r}"
                )


_DEFAULT_OPTIONS = SourceOptions()


def make_source(
    spec: ConsoleSpec,
    options: SourceOptions,
    reactor: Reactor,
    *,
    restored: bool = False,
    owner: PtyOwner | None = None,
) -> ConsoleSource:
    """The source for a validated console description (not started yet).

    ``restored``: the console comes back from the registry after a restart;
    a pty is then reopened only if ``owner`` (recorded when it was first
    attached) still holds it.
    """
    if spec.type == "pty":
        return PtySource(spec.path, reactor, options, restored=restored, owner=owner)
    if spec.type == "unix":
        return UnixSource(spec.path, options, reactor)
    if spec.type == "tcp":
        return TcpSource(spec.host, spec.port, options, reactor)
    if spec.type == "spawn":
        return SpawnSource(spec.command, options, reactor)
    raise ValueError(f"unknown console source type {spec.type!r}")


def backoff_delay(failed_attempts: int, initial: float, maximum: float) -> float:
    """Seconds to wait after ``failed_attempts`` (1, 2, ...) failures in a row.

    ``initial``, doubling, capped at ``maximum``.  No jitter: the peers are
    local qemu processes, not a shared server that a herd could overwhelm.
    """
    # The exponent is bounded so that a source retrying for months cannot
    # overflow a float.
    exponent = min(max(failed_attempts - 1, 0), 64)
    return float(min(initial * 2**exponent, maximum))


def make_raw(fd: int) -> None:
    """Put a terminal in raw mode (cfmakeraw), so bytes pass both ways unchanged.

    In the default cooked mode the line discipline echoes what the guest
    writes back into the guest, turns the guest's CR into NL (ICRNL) and our
    NL into CR NL (ONLCR), holds input back until a line ends (ICANON) and
    eats ^C, ^Z, ^S, ^Q (ISIG, IXON).  Python 3.11's
    ``tty.setraw`` leaves INLCR and IGNCR alone and flushes pending input
    (TCSAFLUSH), which would drop what the guest wrote before we attached;
    hence this, applied with TCSANOW.
    """
    attrs = termios.tcgetattr(fd)
    iflag, oflag, cflag, lflag = attrs[0], attrs[1], attrs[2], attrs[3]
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
        | termios.IXOFF
    )
    oflag &= ~termios.OPOST
    lflag &= ~(
        termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN
    )
    cflag &= ~(termios.CSIZE | termios.PARENB)
    cflag |= termios.CS8
    attrs[0:4] = [iflag, oflag, cflag, lflag]
    cc = list(attrs[6])
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    attrs[6] = cc
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


@implementer(IPushProducer)
class _InputGate:
    """Registered on a write transport: its pause/resume say the guest's side
    is full/drained.  One per transport, dead once that transport is gone."""

    def __init__(self, source: _SourceBase) -> None:
        self._source = source
        self.active = True

    def pauseProducing(self) -> None:
        if self.active:
            self._source._inputPaused()

    def resumeProducing(self) -> None:
        if self.active:
            self._source._inputResumed()

    def stopProducing(self) -> None:
        # The transport is gone; the source hears of that through its own
        # connectionLost and decides what input pausing means then.
        self.active = False


class _SourceBase:
    """What all sources share: the sink, the state, pausing, stopping."""

    kind = ""

    def __init__(self, reactor: Reactor, options: SourceOptions | None = None) -> None:
        self._reactor = reactor
        self.state = SourceState.DOWN
        self._reason = "not started"
        self._lastError = ""
        self._sink: SourceSink | None = None
        self._stopping = False
        self._stopped = False
        self._stopWaiters: list[Deferred[None]] = []
        self._readingPaused = False
        self._inputIsPaused = False
        self._gate: _InputGate | None = None
        options = options or _DEFAULT_OPTIONS
        self._coalesceDelay = options.coalesce_delay
        self._smallRead = options.small_read
        # Reading held back for a moment after a small read (see
        # SourceOptions.coalesce_delay), on top of pauseReading's pause.
        self._coalescing = False
        self._coalesceCall: Any = None
        # Input went to the guest since the last read: what comes back
        # answers it and is not held.
        self._inputSent = False
        # When the last data was read (reactor time): with its size, the
        # guest's rate, which decides whether holding back is worth it.
        self._lastData = float("-inf")

    @property
    def _holdReading(self) -> bool:
        """Whether the read side should be stopped now (for _applyReading)."""
        return self._readingPaused or self._coalescing

    # -- ConsoleSource

    def start(self, sink: SourceSink) -> None:
        if self._sink is not None or self._stopping:
            raise RuntimeError(f"{self!r} was already started or stopped")
        self._sink = sink
        self._start()

    def write(self, data: bytes) -> bool:
        transport = self._writeTransport()
        if self.state is not SourceState.CONNECTED or transport is None:
            return False
        if data:
            transport.write(data)
            # The guest will answer: read it as soon as it does.
            self._inputSent = True
            if self._coalescing:
                self._endCoalescing()
        return True

    def pauseReading(self) -> None:
        self._readingPaused = True
        self._applyReading()

    def resumeReading(self) -> None:
        self._readingPaused = False
        self._applyReading()

    def stop(self) -> Deferred[None]:
        if self._stopped:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._stopWaiters.append(waiter)
        if not self._stopping:
            # Say so once (a source already down keeps its reason), then
            # nothing more: whatever the teardown below reports (a lost
            # connection, a child's exit) is our own doing.
            if self.state is not SourceState.DOWN:
                self._setState(SourceState.DOWN, "stopped")
            self._stopping = True
            self._endCoalescing()
            self._stop()
        return waiter

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"type": self.kind}
        facts.update(self._target())
        facts.update(
            state=self.state.value, reason=self._reason, lastError=self._lastError
        )
        facts.update(self._moreFacts())
        return facts

    # -- what each kind provides

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        """Tear down, then call _stopDone (now or later)."""
        raise NotImplementedError

    def _writeTransport(self) -> Any:
        """Where input goes now, or None."""
        raise NotImplementedError

    def _applyReading(self) -> None:
        """Make the current read side match _holdReading."""
        raise NotImplementedError

    def _target(self) -> dict[str, Any]:
        raise NotImplementedError

    def _moreFacts(self) -> dict[str, Any]:
        return {}

    # -- helpers for the kinds

    def _stopDone(self) -> None:
        self._stopped = True
        self._sink = None
        waiters, self._stopWaiters = self._stopWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _emitData(self, data: bytes) -> None:
        if self._stopping or self._sink is None:
            return
        with _sinkFailures:
            self._sink.sourceData(data)
        now = self._reactor.seconds()
        since, self._lastData = now - self._lastData, now
        n = len(data)
        if self._inputSent:
            # An answer to input: the next bytes may be its rest, keep reading.
            self._inputSent = False
        elif (
            n < self._smallRead
            and self._coalesceDelay > 0
            # A slow guest only: at the rate these bytes came, the guest
            # writes less than small_read while it is left unread, far from
            # filling the pty.  A busy guest that was merely caught up with
            # is read on at once, never held back.
            and n * self._coalesceDelay < since * self._smallRead
        ):
            self._startCoalescing()

    def _startCoalescing(self) -> None:
        """Leave the guest's output unread for coalesce_delay (see SourceOptions)."""
        if self._coalescing or self._stopping:
            return
        self._coalescing = True
        self._applyReading()
        self._coalesceCall = self._reactor.callLater(
            self._coalesceDelay, self._endCoalescing
        )

    def _endCoalescing(self) -> None:
        call, self._coalesceCall = self._coalesceCall, None
        if call is not None and call.active():
            call.cancel()
        if self._coalescing:
            self._coalescing = False
            if not self._stopping:
                self._readAfterHold()

    def _readAfterHold(self) -> None:
        """Reading may go on after a coalescing wait: by default, poll again."""
        self._applyReading()

    def _setState(self, state: SourceState, reason: str) -> None:
        if self._stopping:
            return
        self.state = state
        self._reason = reason
        _log.info(
            "{source}: {state}: {reason}", source=self, state=state, reason=reason
        )
        if self._sink is not None:
            with _sinkFailures:
                self._sink.sourceStateChanged(state, reason)

    def _inputPaused(self) -> None:
        if self._inputIsPaused or self._stopping:
            return
        self._inputIsPaused = True
        if self._sink is not None:
            with _sinkFailures:
                self._sink.sourceInputPaused()

    def _inputResumed(self) -> None:
        if not self._inputIsPaused or self._stopping:
            return
        self._inputIsPaused = False
        if self._sink is not None:
            with _sinkFailures:
                self._sink.sourceInputResumed()

    def _registerGate(self, transport: Any) -> None:
        """Map the write transport's buffer onto input paused/resumed."""
        self._dropGate()
        self._gate = _InputGate(self)
        transport.registerProducer(self._gate, True)
        # A fresh transport has an empty buffer: input flows again.  While
        # there was none, input stayed paused so that the console kept its
        # writers waiting rather than dropping what they sent.
        self._inputResumed()

    def _dropGate(self) -> None:
        # Transports tell their producer stopProducing when they go, but a
        # late pause from a dead transport must not pause the next one, so
        # the source does not rely on that.
        if self._gate is not None:
            self._gate.active = False
            self._gate = None

    def __repr__(self) -> str:
        target = ",".join(f"{k}={v}" for k, v in self._target().items())
        return f"<{type(self).__name__} {target} {self.state.value}>"


# -- pty ---------------------------------------------------------------------


class _NotATerminal(Exception):
    pass


def _open_tty(path: str) -> int:
    """Open an existing tty, never as our controlling terminal, nonblocking."""
    # stat before open: opening an arbitrary device can have side effects.
    if not stat.S_ISCHR(os.stat(path).st_mode):
        raise _NotATerminal(f"{path} is not a character device")
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        if not os.isatty(fd):
            raise _NotATerminal(f"{path} is not a terminal")
        make_raw(fd)
    except termios.error as e:
        os.close(fd)
        raise OSError(*e.args) from e
    except BaseException:
        os.close(fd)
        raise
    return fd


class _TtyEnd(abstract.FileDescriptor):
    """One direction of an open tty, owning its own fd.

    The reactor keeps one handler per fd (epoll registers each fd once), so a
    reader and a writer object on the same fd would replace each other and
    reading would stop after the first write.  Each direction gets its own fd.
    """

    def __init__(
        self, reactor: Reactor, fd: int, path: str, lost: Callable[[str], None]
    ) -> None:
        super().__init__(reactor)
        self._fd = fd
        self._path = path
        self._lost = lost
        self._why = ""
        self.connected = 1

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        """Forget the fd without reporting anything; idempotent."""
        if self._fd < 0:
            return
        abstract.FileDescriptor.connectionLost(self, Failure(error.ConnectionDone()))
        os.close(self._fd)
        self._fd = -1

    def connectionLost(self, reason: Failure) -> None:
        self.close()
        self._lost(self._why or f"{self._path} hung up")


class _TtyReader(_TtyEnd):
    def __init__(
        self,
        reactor: Reactor,
        fd: int,
        path: str,
        lost: Callable[[str], None],
        received: Callable[[bytes], None],
    ) -> None:
        super().__init__(reactor, fd, path, lost)
        self._received = received

    def doRead(self) -> BaseException | None:
        """Read until the pty runs dry (or READ_BATCH), pass it on as one."""
        chunks: list[bytes] = []
        size = 0
        why: BaseException | None = None
        fd = self._fd
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                # EIO: the other side of the pty is gone.
                self._why = f"reading {self._path}: {e.strerror}"
                why = error.ConnectionLost()
                break
            if not data:
                # A hung-up tty reads as end of file: qemu closed the master.
                self._why = f"{self._path} was closed by the guest's side (end of file)"
                why = error.ConnectionDone()
                break
            chunks.append(data)
            size += len(data)
            if len(data) < FULL_READ or size >= READ_BATCH:
                break
        if chunks:
            # What was read before a hang-up still goes out, then the loss.
            self._received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        return why


class _TtyWriter(_TtyEnd):
    def write(self, data: bytes) -> None:
        """Write at once when nothing is queued; queue (and poll) the rest.

        Input is mostly keystrokes: a direct write spares a round through
        epoll for each of them.
        """
        if self._fd >= 0:
            data = write_at_once(self, data)
            if not data:
                return
        super().write(data)

    def writeSomeData(self, data: bytes) -> int | BaseException:
        try:
            return os.write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as e:
            self._why = f"writing {self._path}: {e.strerror}"
            return error.ConnectionLost()

    def doRead(self) -> None:
        # Never registered for reading; the reader owns that direction.
        return None


# -- who holds a pty's master ---------------------------------------------------

PROC = Path("/proc")
# What a pty master's fd links to: /dev/ptmx, or the devpts instance's own
# ptmx in a container (where /dev/ptmx is a symlink to it).
_PTMX_LINKS = frozenset({"/dev/ptmx", "/dev/pts/ptmx"})
_PTS_PATH = re.compile(r"/dev/pts/(\d+)")


@dataclass(frozen=True)
class PtyOwner:
    """The process holding a pty's master: a guest's qemu, named so that a
    later start can tell it from whoever holds that pty number next.

    ``start`` is the process's start time (field 22 of ``/proc/<pid>/stat``,
    clock ticks since boot): with the pid it names one process for the life
    of the host, even after the pid is reused.
    """

    pid: int
    start: int

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_json(cls, value: object) -> PtyOwner | None:
        """The owner a registry entry recorded; None if absent or malformed."""
        if not isinstance(value, Mapping):
            return None
        pid, start = value.get("pid"), value.get("start")
        for number in (pid, start):
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                return None
        assert isinstance(pid, int) and isinstance(start, int)
        return cls(pid, start) if pid > 0 else None


def _fd_pts_index(fd: int) -> int | None:
    """N if ``fd`` is open on ``/dev/pts/N``."""
    try:
        return pts_index(os.ttyname(fd))
    except OSError:
        return None


def pts_index(path: str) -> int | None:
    """N for ``/dev/pts/N``; None for any other path."""
    found = _PTS_PATH.fullmatch(path)
    return int(found.group(1)) if found else None


def process_start(pid: int, proc: Path = PROC) -> int | None:
    """Field 22 of ``<proc>/<pid>/stat`` (start time); None if unreadable."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except (OSError, UnicodeDecodeError):
        return None
    # The command name (field 2) may hold spaces and parentheses: count the
    # fields after its closing parenthesis, which is field 3.
    fields = text[text.rfind(")") + 1 :].split()
    try:
        return int(fields[22 - 3])
    except (IndexError, ValueError):
        return None


def _tty_index(fdinfo: str) -> int | None:
    for line in fdinfo.splitlines():
        key, _, value = line.partition(":")
        if key == "tty-index" and value.strip().isdigit():
            return int(value)
    return None


def _master_index(pid: int, fd: str, proc: Path) -> int | None:
    """N if ``pid``'s descriptor ``fd`` is the master of ``/dev/pts/N``."""
    try:
        if os.readlink(proc / str(pid) / "fd" / fd) not in _PTMX_LINKS:
            return None
        return _tty_index((proc / str(pid) / "fdinfo" / fd).read_text())
    except (OSError, UnicodeDecodeError):  # closed meanwhile, or not ours to see
        return None


def master_fds(pid: int, proc: Path = PROC) -> dict[int, str]:
    """pty number -> the descriptor by which ``pid`` holds its master."""
    try:
        fds = os.listdir(proc / str(pid) / "fd")
    except OSError:  # gone, or another user's process
        return {}
    found: dict[int, str] = {}
    for fd in fds:
        index = _master_index(pid, fd, proc)
        if index is not None:
            found.setdefault(index, fd)
    return found


def master_indexes(pid: int, proc: Path = PROC) -> set[int]:
    """The pty numbers whose master ``pid`` holds (empty if it cannot be seen)."""
    return set(master_fds(pid, proc))


def scan_pty_owners(proc: Path = PROC) -> dict[int, tuple[PtyOwner, str]]:
    """Every visible pty master: pty number -> the process holding it, and
    the descriptor by which it does.

    One pass over every ``<proc>/<pid>/fd`` (a few milliseconds per hundred
    processes); processes we may not look into are skipped, so a guest of
    another user is not found without privileges.  Several holders (a master
    inherited across fork): the one started first.
    """
    try:
        pids = [int(name) for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return {}
    owners: dict[int, tuple[PtyOwner, str]] = {}
    for pid in pids:
        fds = master_fds(pid, proc)
        if not fds:
            continue
        start = process_start(pid, proc)
        if start is None:
            continue
        owner = PtyOwner(pid, start)
        for index, fd in fds.items():
            known = owners.get(index)
            if known is None or (owner.start, owner.pid) < (
                known[0].start,
                known[0].pid,
            ):
                owners[index] = (owner, fd)
    return owners


# The last scan, so that many creates in a row (a host's guests registered
# at once) cost one scan, not one each.  An entry is used only after that
# very process is confirmed to still hold that pty by the descriptor the scan
# found (one readlink and one fdinfo read, whatever the number of the
# process's descriptors): ptys are recycled at once, so a remembered holder
# is never trusted unchecked.
_last_scan: dict[tuple[Path, int], tuple[PtyOwner, str]] = {}


def find_pty_owner(index: int, proc: Path = PROC) -> PtyOwner | None:
    """The process holding the master of ``/dev/pts/<index>``, or None."""
    cached = _last_scan.get((proc, index))
    if cached is not None and owner_holds(cached[0], index, proc, fd=cached[1]):
        return cached[0]
    owners = scan_pty_owners(proc)
    _last_scan.clear()
    _last_scan.update({(proc, i): found for i, found in owners.items()})
    found = owners.get(index)
    return found[0] if found is not None else None


def owner_holds(
    owner: PtyOwner, index: int, proc: Path = PROC, *, fd: str | None = None
) -> bool:
    """Whether that very process (pid and start time) still holds the master
    of ``/dev/pts/<index>`` (by descriptor ``fd``, when given)."""
    if process_start(owner.pid, proc) != owner.start:
        return False
    if fd is not None:
        holds = _master_index(owner.pid, fd, proc) == index
    else:
        holds = index in master_indexes(owner.pid, proc)
    # Read the start again: the pid may have been reused meanwhile.
    return holds and process_start(owner.pid, proc) == owner.start


class PtySource(_SourceBase):
    """An existing pty slave whose master the guest's qemu holds.

    Opened once at start and never again: see the module docstring.  At its
    first attach (``create``) the source looks up which process holds the
    pty's master, its ``owner``, which the registry records.  After a restart
    (``restored``) the path is opened again only if that same process (pid and
    start time) still holds the master of that pty number; otherwise, or when
    no owner was recorded, the console stays ``down`` and the path is never
    opened, since the number may now be another guest's.
    """

    kind = "pty"

    def __init__(
        self,
        path: str,
        reactor: Reactor,
        options: SourceOptions | None = None,
        *,
        restored: bool = False,
        owner: PtyOwner | None = None,
        proc: Path = PROC,
    ) -> None:
        super().__init__(reactor, options)
        self._path = path
        self._reader: _TtyReader | None = None
        self._writer: _TtyWriter | None = None
        self._restored = restored
        self._proc = proc
        self.owner: PtyOwner | None = owner if restored else None
        """Who held the master when the pty was first attached; None: unknown."""

    def _target(self) -> dict[str, Any]:
        return {"path": self._path}

    def _moreFacts(self) -> dict[str, Any]:
        return {"ownerPid": 0 if self.owner is None else self.owner.pid}

    def _refuse(self, why: str) -> None:
        self._lastError = why
        self._setState(SourceState.DOWN, why)

    def _restoredIndex(self) -> int | None:
        """The pty number to reopen after a restart, if its owner still holds
        it; otherwise go down saying why and answer None."""
        path = self._path
        owner = self.owner
        # realpath only reads links, it opens nothing.
        index = pts_index(os.path.realpath(path))
        refusal = f"not reopening {path} by path: create the console again"
        if owner is None:
            self._refuse(
                f"no owner of {path} was recorded when it was attached (its "
                f"master's holder could not be seen in /proc); {refusal}"
            )
        elif index is None:
            self._refuse(f"{path} is not a /dev/pts/N pty; {refusal}")
        elif not owner_holds(owner, index, self._proc):
            self._refuse(f"pty owner {owner.pid} is gone; {refusal} with the new path")
        else:
            return index
        return None

    def _start(self) -> None:
        index: int | None = None
        if self._restored:
            index = self._restoredIndex()
            if index is None:
                return
        try:
            rfd = _open_tty(self._path)
        except _NotATerminal as e:
            self._lastError = str(e)
            self._setState(SourceState.DOWN, self._lastError)
            return
        except OSError as e:
            self._lastError = f"cannot open {self._path}: {e.strerror}"
            self._setState(SourceState.DOWN, self._lastError)
            return
        opened = _fd_pts_index(rfd)
        if self._restored:
            if opened != index:
                # The path was changed (a link) between the check and the open.
                os.close(rfd)
                self._refuse(
                    f"{self._path} is no longer /dev/pts/{index}; not reopening "
                    "it by path: create the console again with the new path"
                )
                return
        elif opened is not None:
            self.owner = find_pty_owner(opened, self._proc)
        if self.owner is None:
            _log.warn(
                "{source}: the holder of the pty's master was not found; "
                "after a restart this console stays down",
                source=self,
            )
        # A second fd for writing (see _TtyEnd).  dup rather than a second
        # open(path): it cannot land on another pty that took the path in
        # between, and epoll accepts both since they are different fds.
        wfd = os.dup(rfd)
        self._reader = _TtyReader(
            self._reactor, rfd, self._path, self._ptyLost, self._emitData
        )
        self._writer = _TtyWriter(self._reactor, wfd, self._path, self._ptyLost)
        self._registerGate(self._writer)
        self._applyReading()
        self._setState(SourceState.CONNECTED, f"attached to {self._path}")

    def _ptyLost(self, why: str) -> None:
        self._closeFds()
        self._lastError = why
        self._setState(SourceState.DOWN, f"{why}; a pty is never reopened")

    def _closeFds(self) -> None:
        self._dropGate()
        for end in (self._reader, self._writer):
            if end is not None:
                end.close()
        self._reader = self._writer = None

    def _writeTransport(self) -> Any:
        return self._writer

    def _readAfterHold(self) -> None:
        # What gathered during the wait is read now rather than after another
        # round through epoll; the reader is registered again only when the
        # pty had nothing (so a steady trickle costs no epoll_ctl at all).
        reader = self._reader
        if reader is None or self._readingPaused:
            self._applyReading()
            return
        why = reader.doRead()
        if why is not None:
            reader.connectionLost(Failure(why))
        elif not self._coalescing:
            self._applyReading()

    def _applyReading(self) -> None:
        if self._reader is None:
            return
        if self._holdReading:
            self._reader.stopReading()
        else:
            self._reader.startReading()

    def _stop(self) -> None:
        self._closeFds()
        self._stopDone()


# -- unix and tcp --------------------------------------------------------------


class _StreamProtocol(Protocol):
    def __init__(self, source: _StreamSource) -> None:
        self._source = source

    def connectionMade(self) -> None:
        self._source._connected(self)

    def dataReceived(self, data: bytes) -> None:
        self._source._emitData(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._source._disconnected(self, reason)


class _StreamFactory(Factory):
    def __init__(self, source: _StreamSource) -> None:
        self._source = source

    def buildProtocol(self, addr: IAddress | None) -> _StreamProtocol:
        return _StreamProtocol(self._source)


@implementer(IStreamClientEndpoint)
class _WatchedEndpoint:
    """Counts connection attempts and remembers why they failed.

    ClientService retries on its own but keeps the failures to itself; an
    operator asking why a console is not connected wants them.
    """

    def __init__(self, endpoint: Any, source: _StreamSource) -> None:
        self._endpoint = endpoint
        self._source = source

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self._source._attempts += 1
        connecting: Deferred[IProtocol] = self._endpoint.connect(protocolFactory)
        return connecting.addErrback(self._failed)

    def _failed(self, failure: Failure) -> Failure:
        self._source._attemptFailed(failure)
        return failure


class _StreamSource(_SourceBase):
    """A qemu socket chardev (server=on) that we connect to, again and again."""

    def __init__(self, options: SourceOptions, reactor: Reactor) -> None:
        super().__init__(reactor, options)
        self._options = options
        self._service: ClientService | None = None
        self._protocol: _StreamProtocol | None = None
        self._attempts = 0
        self._failedInARow = 0
        self._connections = 0

    def _endpoint(self) -> Any:
        raise NotImplementedError

    def _where(self) -> str:
        raise NotImplementedError

    def _retryDelay(self, failedAttempts: int) -> float:
        return backoff_delay(
            failedAttempts, self._options.reconnect_initial, self._options.reconnect_max
        )

    def _start(self) -> None:
        self._setState(SourceState.CONNECTING, f"connecting to {self._where()}")
        # The ignores: implementer() is invisible to mypy without mypy-zope.
        self._service = ClientService(
            _WatchedEndpoint(self._endpoint(), self),  # type: ignore[arg-type]
            _StreamFactory(self),  # type: ignore[arg-type]
            retryPolicy=self._retryDelay,
            clock=self._reactor,
        )
        self._service.startService()

    def _connected(self, protocol: _StreamProtocol) -> None:
        transport = protocol.transport
        assert transport is not None
        if self._stopping:
            transport.abortConnection()
            return
        self._protocol = protocol
        self._connections += 1
        self._failedInARow = 0
        self._registerGate(transport)
        self._applyReading()
        self._setState(SourceState.CONNECTED, f"connected to {self._where()}")

    def _disconnected(self, protocol: _StreamProtocol, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._dropGate()
        self._lastError = f"connection lost: {reason.getErrorMessage()}"
        self._setState(SourceState.RECONNECTING, self._lastError)

    def _attemptFailed(self, failure: Failure) -> None:
        if self._stopping and failure.check(CancelledError):
            return
        self._failedInARow += 1
        self._lastError = f"cannot connect: {failure.getErrorMessage()}"
        _log.debug("{source}: {error}", source=self, error=self._lastError)

    def _writeTransport(self) -> Any:
        return None if self._protocol is None else self._protocol.transport

    def _applyReading(self) -> None:
        transport = self._writeTransport()
        if transport is None:
            return
        if self._holdReading:
            transport.pauseProducing()
        else:
            transport.resumeProducing()

    def _stop(self) -> None:
        if self._service is None:
            self._stopDone()
            return
        stopping = self._service.stopService()
        # stopService only asks for a clean close, which waits for input the
        # guest may never take; drop it instead.
        transport = self._writeTransport()
        if transport is not None:
            transport.abortConnection()
        stopping.addBoth(lambda _: self._stopDone())

    def _moreFacts(self) -> dict[str, Any]:
        return {
            "connectAttempts": self._attempts,
            "reconnectAttempts": self._failedInARow,
            "connections": self._connections,
        }


class UnixSource(_StreamSource):
    """qemu ``-chardev socket,path=...,server=on``."""

    kind = "unix"

    def __init__(self, path: str, options: SourceOptions, reactor: Reactor) -> None:
        super().__init__(options, reactor)
        self._path = path

    def _target(self) -> dict[str, Any]:
        return {"path": self._path}

    def _where(self) -> str:
        return self._path

    def _endpoint(self) -> Any:
        return UNIXClientEndpoint(
            self._reactor, self._path, timeout=self._options.connect_timeout
        )


class TcpSource(_StreamSource):
    """qemu ``-chardev socket,host=...,port=...,server=on``."""

    kind = "tcp"

    def __init__(
        self, host: str, port: int, options: SourceOptions, reactor: Reactor
    ) -> None:
        super().__init__(options, reactor)
        self._host = host
        self._port = port

    def _target(self) -> dict[str, Any]:
        return {"host": self._host, "port": self._port}

    def _where(self) -> str:
        return f"{self._host}:{self._port}"

    def _endpoint(self) -> Any:
        timeout = self._options.connect_timeout
        # An address (the usual case for a chardev) is connected to directly:
        # HostnameEndpoint would resolve it in a thread and report each
        # failure only after its 0.3 s attempt delay.
        if abstract.isIPAddress(self._host):
            return TCP4ClientEndpoint(
                self._reactor, self._host, self._port, timeout=timeout
            )
        if abstract.isIPv6Address(self._host):
            return TCP6ClientEndpoint(
                self._reactor, self._host, self._port, timeout=timeout
            )
        return HostnameEndpoint(self._reactor, self._host, self._port, timeout=timeout)


# -- spawn ---------------------------------------------------------------------


def _describe_exit(reason: Failure) -> str:
    value = reason.value
    exitCode = getattr(value, "exitCode", None)
    sig = getattr(value, "signal", None)
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {name}"
    return f"exited with status {exitCode or 0}"


class _ChildProtocol(ProcessProtocol):
    def __init__(self, source: SpawnSource) -> None:
        self._source = source

    def connectionMade(self) -> None:
        self._source._childStarted(self.transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._source._emitData(data)

    def processExited(self, reason: Failure) -> None:
        self._source._childExited(reason)

    def processEnded(self, reason: Failure) -> None:
        self._source._childEnded(reason)


class SpawnSource(_SourceBase):
    """A command named in the configuration, run on a fresh raw pty."""

    kind = "spawn"

    def __init__(self, command: str, options: SourceOptions, reactor: Reactor) -> None:
        super().__init__(reactor, options)
        self._command = command
        self._options = options
        self._process: Any = None
        self._pid = 0
        self._exit = ""
        self._closeCall: Any = None
        self._killCall: Any = None

    def _target(self) -> dict[str, Any]:
        return {"command": self._command}

    def _moreFacts(self) -> dict[str, Any]:
        return {
            "pid": self._pid,
            "running": self._process is not None,
            "exitStatus": self._exit,
        }

    def _start(self) -> None:
        argv = self._options.spawn_commands.get(self._command)
        if not argv:
            self._lastError = (
                f"spawn command {self._command!r} is not in the configuration"
            )
            self._setState(SourceState.DOWN, self._lastError)
            return
        env = None if self._options.spawn_env is None else dict(self._options.spawn_env)
        master, slave = os.openpty()
        try:
            # Raw before the child starts, so that its first bytes already
            # pass unchanged and nothing it reads is echoed back to us.
            make_raw(slave)
            self._reactor.spawnProcess(
                _ChildProtocol(self),
                argv[0],
                list(argv),
                env=env,
                usePTY=(master, slave, os.ttyname(slave)),
            )
        except (OSError, termios.error) as e:
            # PTYProcess leaves a pty it was given open when fork fails.
            os.close(master)
            os.close(slave)
            self._lastError = f"cannot run {self._command!r}: {e.args[-1]}"
            self._setState(SourceState.DOWN, self._lastError)

    def _childStarted(self, process: Any) -> None:
        # Called from within spawnProcess: the pid is known, the pty is ours.
        self._process = process
        self._pid = process.pid
        self._registerGate(process)
        self._applyReading()
        self._setState(
            SourceState.CONNECTED, f"started {self._command!r} (pid {self._pid})"
        )

    def _childExited(self, reason: Failure) -> None:
        self._exit = _describe_exit(reason)
        if self._killCall is not None and self._killCall.active():
            self._killCall.cancel()
        # processEnded waits for the pty to read EIO too: output may still be
        # on its way.  But a grandchild can hold the pty open, and a paused
        # reader sees no EIO, so do not wait for ever.
        self._scheduleClose(0.0 if self._stopping else self._options.stop_timeout)

    def _scheduleClose(self, delay: float) -> None:
        if self._closeCall is not None and self._closeCall.active():
            self._closeCall.cancel()
        self._closeCall = self._reactor.callLater(delay, self._closePty)

    def _closePty(self) -> None:
        process = self._process
        if process is not None and not process.disconnected:
            # What the child wrote last is still in the pty when reading was
            # paused: hand it on rather than drop it with the master.
            for _ in range(16):
                try:
                    data = os.read(process.fileno(), READ_SIZE)
                except OSError:  # EAGAIN: all read; EIO: nobody has the slave
                    break
                if not data:
                    break
                self._emitData(data)
            # There is no abortConnection on a PTYProcess, and loseConnection
            # waits for input the child may never read; this closes the master
            # and lets processEnded come.
            process.connectionLost(Failure(error.ConnectionDone()))

    def _childEnded(self, reason: Failure) -> None:
        self._exit = _describe_exit(reason)
        self._process = None
        self._dropGate()
        for call in (self._closeCall, self._killCall):
            if call is not None and call.active():
                call.cancel()
        if self._stopping:
            self._stopDone()
            return
        self._lastError = f"{self._command!r} (pid {self._pid}) {self._exit}"
        self._setState(SourceState.DOWN, self._lastError)

    def _signal(self, name: str) -> None:
        try:
            self._process.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass

    def _kill(self) -> None:
        self._signal("KILL")
        # Reaped or not, the child may have left descendants on the pty.
        self._scheduleClose(0.0)

    def _stop(self) -> None:
        if self._process is None:
            self._stopDone()
            return
        if self._exit:
            # Already reaped, only its pty is still open: close that now.
            self._scheduleClose(0.0)
            return
        self._signal("TERM")
        self._killCall = self._reactor.callLater(self._options.stop_timeout, self._kill)

    def _writeTransport(self) -> Any:
        return self._process

    def _applyReading(self) -> None:
        if self._process is None:
            return
        if self._holdReading:
            self._process.pauseProducing()
        else:
            self._process.resumeProducing()
