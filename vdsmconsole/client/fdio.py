"""Reading a pipe or a tty as the reactor says it is ready; bodies from it."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    IReadDescriptor,
)
from twisted.python.failure import Failure
from twisted.web import client as webclient
from twisted.web.iweb import (
    UNKNOWN_LENGTH,
    IBodyProducer,
)
from zope.interface import implementer

READ_SIZE = 64 * 1024


@implementer(IPushProducer)
class FDReader:
    """Reads a file descriptor (a pipe, a tty) as the reactor says it is ready.

    Each read is at most ``READ_SIZE`` bytes of what is there, handed to
    ``on_data`` at once; end of file (or a hung-up tty) calls ``on_eof``.
    Pausing stops watching the descriptor, so a consumer that pushes back
    stops the reading.  Regular files and ``/dev/null`` cannot be watched by
    epoll: use ``FileBodyProducer`` for those (``stdin_producer`` picks).
    """

    def __init__(
        self,
        reactor: Any,
        fd: int,
        on_data: Callable[[bytes], object],
        on_eof: Callable[[], object],
    ) -> None:
        self.reactor = reactor
        self.fd = fd
        self.on_data = on_data
        self.on_eof = on_eof
        self.reading = False
        self.finished = False
        self._descriptor = _ReadDescriptor(self)

    def start(self) -> None:
        self.resumeProducing()

    def pauseProducing(self) -> None:
        if self.reading:
            self.reading = False
            self.reactor.removeReader(self._descriptor)

    def resumeProducing(self) -> None:
        if not self.reading and not self.finished:
            self.reading = True
            self.reactor.addReader(self._descriptor)

    def stopProducing(self) -> None:
        self.pauseProducing()
        self.finished = True

    def _ready(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: the terminal hung up
        if data:
            self.on_data(data)
            return
        self.pauseProducing()
        self._hung_up()

    def _hung_up(self) -> None:
        if self.finished:
            return
        self.reading = False  # the reactor has dropped the descriptor already
        self.finished = True
        self.on_eof()


@implementer(IReadDescriptor)
class _ReadDescriptor:
    def __init__(self, reader: FDReader) -> None:
        self.reader = reader

    def fileno(self) -> int:
        return self.reader.fd

    def doRead(self) -> None:
        self.reader._ready()

    def connectionLost(self, reason: Failure) -> None:
        # epoll reports a pipe whose writer is gone (drained) as a hang-up,
        # not as readable: that is the end of file too.
        self.reader._hung_up()

    def logPrefix(self) -> str:
        return f"fd {self.reader.fd}"


def pollable(fd: int) -> bool:
    """Whether the reactor can watch ``fd`` (not a regular file or /dev/null)."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return False
    if not stat.S_ISCHR(mode):
        return True
    return os.fstat(fd).st_rdev != os.stat(os.devnull).st_rdev


@implementer(IBodyProducer)
class FDBodyProducer:
    """A request body read from a pipe or tty as data arrives, sent chunked.

    Each read goes out as one chunk at once, so a ``send -`` fed by a slow
    program delivers every line when it is written, not at end of file.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, reactor: Any, fd: int) -> None:
        self.reactor = reactor
        self.fd = fd
        self._consumer: Any = None  # IConsumer
        self._finished: defer.Deferred[None] = defer.Deferred()
        self._reader = FDReader(reactor, fd, self._data, self._eof)

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        self._consumer = consumer
        self._reader.start()
        return self._finished

    def _data(self, data: bytes) -> None:
        if self._consumer is not None:
            self._consumer.write(data)

    def _eof(self) -> None:
        if not self._finished.called:
            self._finished.callback(None)

    def pauseProducing(self) -> None:
        self._reader.pauseProducing()

    def resumeProducing(self) -> None:
        self._reader.resumeProducing()

    def stopProducing(self) -> None:
        self._reader.stopProducing()


def stdin_producer(
    reactor: Any, fd: int = 0
) -> FDBodyProducer | webclient.FileBodyProducer:
    """A body producer for standard input: chunk by chunk from a pipe or tty,
    a plain ``FileBodyProducer`` for a regular file or ``/dev/null``."""
    if pollable(fd):
        return FDBodyProducer(reactor, fd)
    return webclient.FileBodyProducer(open(fd, "rb", closefd=False))  # noqa: SIM115
