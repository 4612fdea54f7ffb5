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
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from vdsmconsole.core.consolelog import ConsoleLog
from vdsmconsole.core.interfaces import (
    DESTROYED,
    ConsoleSource,
    InputWriter,
    SourceState,
    Subscriber,
)
from vdsmconsole.core.offsetmark import OffsetMark
from vdsmconsole.core.ring import OffsetBeyondEnd, ReadResult, Ring
from vdsmconsole.spec import ConsoleSpec
from vdsmconsole.status import Code, StatusError

log = Logger(namespace="vdsmconsole.console")


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
        # A guest that comes back on another source (a libvirt domain that
        # restarts gets a new pty): its going down does not end the streams,
        # which wait for ``reattach``.
        self.revivable = False
        self._subscribers: set[Subscriber] = set()
        self._writers: set[InputWriter] = set()

    # -- lifecycle -------------------------------------------------------------

    @property
    def state(self) -> str:
        return str(self.source.state)

    def start(self) -> None:
        self.source.start(self)

    def reattach(
        self, spec: ConsoleSpec, source: ConsoleSource
    ) -> defer.Deferred[None]:
        """Read the guest from ``source`` from now on, once the old source
        has stopped: the ring, the log, the offsets and every stream carry
        on (a restarted libvirt domain on its new pty)."""

        def attach(_: object) -> None:
            if not self.closed:
                self.spec, self.source = spec, source
                source.start(self)

        return self.source.stop().addCallback(attach)

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
        if mark is not None and offset + len(data) > mark.refill_at:
            if offset + len(data) > mark.reserved:
                self._update_mark(mark.cover, offset + len(data))
            else:
                mark.reserve_ahead()  # off the reactor, while half is left
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
        elif state is SourceState.DOWN and not self.revivable:
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

    @property
    def readers(self) -> int:
        """Followers now: streams, tunnels and websockets reading output."""
        return len(self._subscribers)

    @property
    def writers(self) -> int:
        """Clients sending input now."""
        return len(self._writers)

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
            "readers": self.readers,
            "writers": self.writers,
            "bytesLostToSlowReaders": self.lost_to_slow_readers,
            "logBytes": self.log.disk_bytes() if self.log is not None else 0,
            "logError": self.log_error or self.mark_error,
            "reason": self.reason,
        }
