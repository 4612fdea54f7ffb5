"""An open tty's two directions, each on its own fd, for the reactor."""

from __future__ import annotations

import os
import stat
import termios
from collections.abc import Callable

from twisted.internet import abstract, error
from twisted.python.failure import Failure

from vdsmconsole.sources.options import FULL_READ, READ_BATCH, READ_SIZE, Reactor
from vdsmconsole.terminal import make_raw
from vdsmconsole.transports import write_at_once


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
