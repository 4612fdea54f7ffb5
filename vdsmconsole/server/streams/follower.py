"""A console's output to one response, from the follower's own cursor."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from vdsmconsole.core.console import Console
from vdsmconsole.core.interfaces import SERVER_STOPPING, SourceState
from vdsmconsole.server.http.endings import StreamEnd, abort_stream, end_stream

log = Logger(namespace="vdsmconsole.streams")

CHUNK = 64 * 1024  # the most one write to a client carries


@implementer(IPushProducer)
class Follower:
    """Streams a console's output to one response, from its own cursor."""

    def __init__(
        self, request: Any, console: Console, start: int, follow: bool
    ) -> None:
        self.request = request
        self.console = console
        self.start_offset = start
        self.cursor = start
        self.limit = None if follow else console.end
        self.sent = 0
        self.paused = False
        self.done = False
        self._pumping = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.console.subscribe(self)
        self.pump()

    # Subscriber
    def dataAvailable(self) -> None:
        self.pump()

    def consoleDown(self) -> None:
        self.pump()  # ends the response once the client has what is retained

    def consoleClosed(self, why: str) -> None:
        if why == SERVER_STOPPING:
            self.stop()
            abort_stream(self.request)
        else:
            self.end(StreamEnd.DESTROYED)

    # IPushProducer
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.pump()

    def stopProducing(self) -> None:
        self.stop()

    def pump(self) -> None:
        """Write what the client has not seen, until it pushes back."""
        if self._pumping:
            return  # a write made the transport resume us: the loop goes on
        self._pumping = True
        console = self.console
        try:
            while not self.paused and not self.done:
                end = console.end if self.limit is None else self.limit
                cursor = self.cursor
                if cursor >= end:
                    if self.limit is not None:
                        self.end(StreamEnd.COMPLETE)
                    elif console.state == SourceState.DOWN and not console.closed:
                        self.end(StreamEnd.DOWN)  # nothing more will come
                    return
                # The console picks the ring or, for older offsets, its log.
                result = console.read(cursor, min(CHUNK, end - cursor))
                if result.lost:
                    # Fell behind everything retained: end; a resume is told.
                    self.console.count_lost(result.lost)
                    log.info(
                        "console {vm}: a follower fell {n} bytes behind; ending it",
                        vm=self.console.vm_id,
                        n=result.lost,
                    )
                    self.end(StreamEnd.BEHIND)
                    return
                self.cursor = result.offset + len(result.data)
                self.sent += len(result.data)
                self.request.write(result.data)
        finally:
            self._pumping = False

    def end(self, why: StreamEnd) -> None:
        """End the response cleanly, saying why (see endings.py)."""
        if not self.done:
            self.stop()
            end_stream(self.request, why)

    def stop(self) -> None:
        """Send no more; the response is left as it is."""
        if self.done:
            return
        self.done = True
        self.console.unsubscribe(self)
