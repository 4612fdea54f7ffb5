"""One guest console: its source, its ring, its log and whoever follows it.

The console is the single reader of its guest.  Every byte the source reads
goes into the ring (hot bytes) and the log (older bytes) at the next absolute
offset, and subscribers are told that more is there; each subscriber keeps
its own cursor and pulls at its own pace, so a slow client never holds the
guest back and never makes the server buffer more for it than it retains
anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from vdsmconsole.config import Config
from vdsmconsole.consolelog import ConsoleLog
from vdsmconsole.interfaces import ConsoleSource, SourceState
from vdsmconsole.offsetmark import MARK_FILE, OffsetMark
from vdsmconsole.policy import RefusedSource
from vdsmconsole.ring import OffsetBeyondEnd, ReadResult, Ring
from vdsmconsole.sources import PtyOwner, SourceOptions, make_source
from vdsmconsole.spec import ConsoleSpec
from vdsmconsole.status import Code, StatusError

log = Logger(namespace="vdsmconsole.console")

CONSOLE_DOWN = Code.CONSOLE_DOWN  # input for a guest that is not connected


# Why a console stops (``Console.stop``), for those who follow it: a stream
# ends cleanly for a destroyed console, and is cut when the server stops (the
# console comes back with the server: its clients should resume).
DESTROYED = "destroyed"
SERVER_STOPPING = "stopping"


class Subscriber(Protocol):
    """A follower of the console's output (a stream, or a test)."""

    def dataAvailable(self) -> None:
        """More bytes were appended; read them from your cursor when you can."""

    def consoleDown(self) -> None:
        """The guest is gone for good: nothing will be appended any more."""

    def consoleClosed(self, why: str) -> None:
        """The console stops (``DESTROYED`` or ``SERVER_STOPPING``): end."""


class InputWriter(Protocol):
    """A client sending input: paused while the guest does not take it."""

    def pauseProducing(self) -> None:
        """The guest does not take input now: hold it, stop reading the client."""

    def resumeProducing(self) -> None:
        """The guest takes input again (or its source reconnected)."""

    def consoleDown(self) -> None:
        """The guest went away for good: end the input."""

    def consoleClosed(self, why: str) -> None:
        """The console stops (``DESTROYED`` or ``SERVER_STOPPING``)."""


class ConsoleDown(StatusError):
    def __init__(self, vm_id: str, state: str) -> None:
        super().__init__(Code.CONSOLE_DOWN, f"console {vm_id} is {state}")


class Console:
    def __init__(
        self,
        vm_id: str,
        spec: ConsoleSpec,
        source: ConsoleSource,
        ring: Ring,
        console_log: ConsoleLog | None,
        clock: Any,
        mark: OffsetMark | None = None,
    ) -> None:
        self.vm_id = vm_id
        self.spec = spec
        self.source = source
        self.ring = ring
        self.log = console_log
        self.clock = clock
        self.mark = mark
        self.reason = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.lost_to_slow_readers = 0
        self.log_error = ""
        self.mark_error = ""
        self.input_paused = False
        self.closed = False
        self._subscribers: set[Subscriber] = set()
        self._writers: set[InputWriter] = set()

    # -- lifecycle -------------------------------------------------------------

    @property
    def state(self) -> str:
        return str(self.source.state)

    def start(self) -> None:
        self.source.start(self)

    def stop(self, why: str = DESTROYED) -> defer.Deferred[None]:
        """Stop reading the guest, end every stream, close the log.

        ``why``: ``DESTROYED`` or ``SERVER_STOPPING``, passed on to the streams.
        """
        self.closed = True
        for subscriber in list(self._subscribers):
            subscriber.consoleClosed(why)
        self._subscribers.clear()
        for writer in list(self._writers):
            writer.consoleClosed(why)
        self._writers.clear()
        d = self.source.stop()

        def close_log(result: object) -> None:
            if self.log is not None:
                self.log.close()
            if self.mark is not None:
                self._update_mark(self.mark.close, self.ring.end)

        return d.addBoth(close_log)

    # -- the source side ---------------------------------------------------

    def sourceData(self, data: bytes) -> None:
        if not data:
            return
        offset = self.ring.end
        mark = self.mark
        if mark is not None and offset + len(data) > mark.reserved:
            self._update_mark(mark.cover, offset + len(data))
        self.ring.append(data)
        self.bytes_in += len(data)
        self._append_log(offset, data)
        for subscriber in list(self._subscribers):
            subscriber.dataAvailable()

    def _update_mark(self, update: Callable[..., None], *args: int) -> None:
        """Tell the offset mark, on disk, before the offsets are handed out."""
        try:
            update(*args)
        except OSError as e:
            # The console goes on (the guest must be drained); only a restart
            # after a crash could then reuse these offsets.  Once per episode.
            if not self.mark_error:
                log.error(
                    "console {vm}: cannot save its next offset: {err}; a restart "
                    "after a crash may reuse offsets",
                    vm=self.vm_id,
                    err=e,
                )
            self.mark_error = e.strerror or str(e)
        else:
            self.mark_error = ""

    def _append_log(self, offset: int, data: bytes) -> None:
        if self.log is None:
            return
        try:
            self.log.append(offset, data)
        except OSError as e:
            if not self.log_error:
                # Once per episode: the ring keeps the console going meanwhile.
                log.error(
                    "console {vm}: cannot write console log: {err}; "
                    "serving from memory until it can",
                    vm=self.vm_id,
                    err=e,
                )
            self.log_error = e.strerror or str(e)
            if self.mark is not None:
                # Offsets past the log's end are handed out: a restart must
                # not trust the log's end (see offsetmark.py).
                self._update_mark(self.mark.log_incomplete)
        else:
            if self.log_error:
                log.info("console {vm}: console log writable again", vm=self.vm_id)
                self.log_error = ""
                if self.mark is not None:
                    self._update_mark(self.mark.log_complete)

    def sourceStateChanged(self, state: SourceState, reason: str) -> None:
        self.reason = reason
        log.info(
            "console {vm}: {state} ({reason})",
            vm=self.vm_id,
            state=state,
            reason=reason,
        )
        if self.closed:
            return
        if state is SourceState.CONNECTED and not self.input_paused:
            # A writer that found no guest while the source reconnected holds
            # its input and waits for a resume; the source only says "input
            # resumed" after it said "paused", so say it here, or that writer
            # waits for ever.
            for writer in list(self._writers):
                writer.resumeProducing()
        elif state is SourceState.DOWN:
            # The guest is gone for good (a pty or a spawned child never comes
            # back): end the writers rather than leave them waiting, and the
            # followers once they have what is retained.
            for writer in list(self._writers):
                writer.consoleDown()
            for subscriber in list(self._subscribers):
                subscriber.consoleDown()

    def sourceInputPaused(self) -> None:
        self.input_paused = True
        for writer in list(self._writers):
            writer.pauseProducing()

    def sourceInputResumed(self) -> None:
        self.input_paused = False
        for writer in list(self._writers):
            writer.resumeProducing()

    # -- readers -------------------------------------------------------------

    @property
    def first_offset(self) -> int:
        """The oldest offset retained, in the log or the ring."""
        log_ = self.log
        # A log that holds nothing (never written, or the disk was full all
        # along) says start 0: that is no retained byte.
        if log_ is not None and log_.start < min(log_.end, self.ring.start):
            return log_.start
        return self.ring.start

    @property
    def end(self) -> int:
        return self.ring.end

    def read(self, offset: int, max_bytes: int) -> ReadResult:
        """Bytes from ``offset``: the ring if it still has them, else the log.

        Raises OffsetBeyondEnd for an offset past the end.
        """
        if offset > self.ring.end:
            raise OffsetBeyondEnd(offset, self.ring.end)
        if offset >= self.ring.start or self.log is None:
            return self.ring.read(offset, max_bytes)
        # Older than the ring: the log, but never past where the ring begins
        # (the log may lag or have a gap there).
        limit = min(max_bytes, self.ring.start - offset)
        try:
            if offset < self.log.end:
                result = self.log.read(offset, limit)
                # Only what the log holds from before the ring's start: when
                # the log retains less than the ring (or has a gap), its next
                # byte may lie past ring.start, and answering with it would
                # report bytes the ring still holds as lost.
                if result.data and result.offset < self.ring.start:
                    return result
        except OSError as e:
            log.error("console {vm}: cannot read log: {err}", vm=self.vm_id, err=e)
        result = self.ring.read(self.ring.start, max_bytes)
        return ReadResult(result.offset, result.data, self.ring.start - offset)

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def count_lost(self, nbytes: int) -> None:
        self.lost_to_slow_readers += nbytes

    # -- writers --------------------------------------------------------------

    def add_writer(self, writer: InputWriter) -> None:
        self._writers.add(writer)
        if self.input_paused:
            writer.pauseProducing()

    def remove_writer(self, writer: InputWriter) -> None:
        self._writers.discard(writer)

    def write(self, data: bytes) -> bool:
        """Input to the guest, whole; False if the guest is not connected."""
        if self.closed or not self.source.write(data):
            return False
        self.bytes_out += len(data)
        return True

    def write_all(self, data: bytes) -> int:
        """Input from an RPC: whole, or refused; never queued without bound."""
        if self.input_paused and self.state == SourceState.CONNECTED:
            # The guest's input buffer is full: queueing more would grow the
            # server by a whole RPC body per call.  The caller retries.
            raise StatusError(Code.CONSOLE_BUSY, f"console {self.vm_id} is busy")
        if not self.write(data):
            raise ConsoleDown(self.vm_id, self.state)
        return len(data)

    # -- descriptions -------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return {"vmId": self.vm_id, "status": self.state}

    def full_status(self) -> dict[str, Any]:
        return {
            "vmId": self.vm_id,
            "status": self.state,
            "console": self.spec.to_wire(),
            "source": self.source.describe(),
            "firstOffset": self.first_offset,
            "nextOffset": self.end,
            "reason": self.reason,
        }

    def stats(self) -> dict[str, Any]:
        return {
            "vmId": self.vm_id,
            "state": self.state,
            "firstOffset": self.first_offset,
            "nextOffset": self.end,
            "ringFirstOffset": self.ring.start,
            "bytesIn": self.bytes_in,
            "bytesOut": self.bytes_out,
            "readers": len(self._subscribers),
            "writers": len(self._writers),
            "bytesLostToSlowReaders": self.lost_to_slow_readers,
            "logBytes": self.log.disk_bytes() if self.log is not None else 0,
            "logError": self.log_error or self.mark_error,
            "reason": self.reason,
        }


def make_console_factory(config: Config, reactor: Any) -> Callable[..., Console]:
    options = SourceOptions(
        reconnect_initial=config.reconnect_initial,
        reconnect_max=config.reconnect_max,
        spawn_commands=dict(config.spawn_commands),
    )

    def factory(
        vm_id: str,
        spec: ConsoleSpec,
        *,
        restored: bool = False,
        owner: PtyOwner | None = None,
        refused: str = "",
        fresh: bool = False,
    ) -> Console:
        """``restored``/``owner``: a pty console the registry brings back;
        ``refused``: why its target is no longer allowed (it stays down).

        ``fresh``: a new console (``create``), not one a restart brings back:
        it shows only its own guest's output, so the log a previous console
        of this vmId left is deleted; its offsets carry on above every offset
        that one handed out, so that none is ever reused for the vmId.
        """
        # vm_id was validated before it got here; it is safe as a path part.
        directory = config.state_dir / "consoles" / vm_id
        console_log = ConsoleLog(
            directory, config.log_file_bytes, config.log_keep_files
        )
        mark = OffsetMark(directory / MARK_FILE)
        if fresh:
            start = max(console_log.end, mark.saved)
            console_log.discard()
        else:
            # Past every offset handed out before: the log's end, or further
            # when a crash cut the log's tail or the log could not be written.
            start = mark.resume_offset(console_log.end)
        ring = Ring(config.ring_bytes, start=start)
        if refused:
            source: ConsoleSource = RefusedSource(spec, refused, owner)
        else:
            source = make_source(spec, options, reactor, restored=restored, owner=owner)
        return Console(vm_id, spec, source, ring, console_log, reactor, mark)

    return factory
