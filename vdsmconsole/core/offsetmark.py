"""A console's high-water mark: offsets are never handed out twice.

The console log is not fsync'ed (see consolelog.py), so a host crash can
cut its tail, and a log that could not be written (a full disk) ends before
the ring did.  Restarting from the log's end alone would then hand the same
offsets to new bytes: a client resuming with an offset it was given would
silently get another text.  The mark is the fix: a small file saying "no
offset at or past N was ever handed out", made durable (fdatasync) *before*
the console hands out offsets up to N.

Where a restart carries on (``resume_offset``):

- after a clean stop the mark is the exact end: no gap;
- after the process alone died (same boot: the page cache kept every byte
  the log accepted) and the log was complete: the log's end, exactly;
- otherwise (the host crashed, or the log had failed to take some bytes):
  ``max(log end, mark)``.  The offsets in between are a gap that reads report
  as lost: at most one step of offsets that may never have held bytes, an
  overcount of what was lost, never an undercount.

To keep the fsyncs rare the mark runs ahead of the output by a step that
doubles while the output is fast (a reservation used up within ``quick``
seconds) and halves back while it is slow: a busy console pays a few
fdatasyncs a second, a quiet one one every ``min_step`` bytes.

To keep them off the caller's thread (the reactor: an fdatasync can take
tens of milliseconds on a busy disk, and every console and client waits
meanwhile), a mark given an ``ahead`` executor makes its next reservation
there once half of the current one is used (``reserve_ahead``); the caller
takes it over at its next ``cover`` and blocks only when the output
outruns the disk.

The file is one line, ``<offset, 20 digits> <boot id> <c|i>`` (c: the log
held every byte, i: it did not), rewritten in place at a fixed width: the
write never needs a new disk block, so it works on a full disk too.

Pure: no Twisted; blocking I/O on the local state directory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path

__all__ = ["MARK_FILE", "OffsetMark", "boot_id"]

MARK_FILE = "next-offset"
_FILE_MODE = 0o640
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_BOOT_WIDTH = 36  # a UUID


def boot_id() -> str:
    """This boot of the host ("" if unknown: then no boot matches it)."""
    try:
        return _BOOT_ID.read_text().strip()[:_BOOT_WIDTH]
    except OSError:
        return ""


class OffsetMark:
    """The persisted bound on the offsets one console has handed out.

    ``cover(end)`` must be called before offsets below ``end`` are handed
    out, ``log_incomplete()`` when the log failed to take bytes that were
    handed out, ``log_complete()`` once it takes them again.  Each raises
    OSError when the mark cannot be made durable.
    """

    def __init__(
        self,
        path: Path,
        *,
        min_step: int = 64 * 1024,
        max_step: int = 16 * 1024 * 1024,
        quick: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        boot: Callable[[], str] = boot_id,
        ahead: Executor | None = None,
        _sync: Callable[[int], None] = os.fdatasync,
    ) -> None:
        if not 0 < min_step <= max_step:
            raise ValueError(
                f"need 0 < min_step <= max_step, got {min_step}, {max_step}"
            )
        self._path = Path(path)
        self._min = min_step
        self._max = max_step
        self._quick = quick
        self._clock = clock
        self._sync = _sync
        self._boot = boot()
        self._step = min_step
        self._lastReserved = float("-inf")
        self.saved, self._savedBoot, self._savedComplete = self._load()
        # The bound as last made durable (or as found at open).
        self._reserved = self.saved
        self._complete = True
        # The next reservation being made durable on ``ahead`` (one at most).
        self._ahead = ahead
        self._pending: Future[tuple[int, bool]] | None = None

    @property
    def reserved(self) -> int:
        """No offset at or past this was handed out (as far as the disk knows)."""
        return self._reserved

    def resume_offset(self, log_end: int) -> int:
        """The first offset to hand out after a restart, given the log's end."""
        if self._boot and self._savedBoot == self._boot and self._savedComplete:
            return log_end
        return max(log_end, self.saved)

    def _load(self) -> tuple[int, str, bool]:
        try:
            fields = self._path.read_bytes().split()
        except OSError:
            return 0, "", False  # none yet (a new console, or one from before marks)
        try:
            value = max(0, int(fields[0]))
        except (IndexError, ValueError):
            return 0, "", False
        boot = fields[1].decode("ascii", "replace") if len(fields) > 1 else ""
        complete = len(fields) > 2 and fields[2] == b"c"
        return value, boot, complete

    @property
    def refill_at(self) -> int:
        """Output past this (and within ``reserved``) may ``reserve_ahead``."""
        return self._reserved - self._step // 2

    def cover(self, end: int) -> None:
        """Make the mark at least ``end``, durably, before it is handed out."""
        if end <= self._reserved:
            return
        self._settle(wait=True)
        if end <= self._reserved:
            return
        self._store(end + self._nextStep(), self._complete)

    def reserve_ahead(self) -> None:
        """Half of the reservation is used: make the next one durable on the
        ``ahead`` executor, so that ``cover`` finds it done (never raises; a
        failure there is left for ``cover``'s own store to meet and say)."""
        self._settle(wait=False)
        if self._ahead is None or self._pending is not None:
            return
        value, complete = self._reserved + self._nextStep(), self._complete
        self._pending = self._ahead.submit(self._write, value, complete)

    def _nextStep(self) -> int:
        now = self._clock()
        if now - self._lastReserved < self._quick:
            self._step = min(self._max, self._step * 2)
        else:
            self._step = max(self._min, self._step // 2)
        self._lastReserved = now
        return self._step

    def _settle(self, wait: bool) -> None:
        """Take over a reservation made ahead once it is durable."""
        pending = self._pending
        if pending is None or not (wait or pending.done()):
            return
        self._pending = None
        try:
            value, complete = pending.result()
        except OSError:
            return  # not durable: the next store, in line, says why
        self._reserved, self._complete = value, complete

    def log_incomplete(self) -> None:
        """The log failed to take bytes that were handed out: trust it no more."""
        self._settle(wait=True)
        if self._complete:
            self._store(self._reserved, False)

    def log_complete(self) -> None:
        """The log takes bytes again (after a gap): its end is exact again."""
        self._settle(wait=True)
        if not self._complete:
            self._store(self._reserved, True)

    def close(self, end: int) -> None:
        """A clean stop: the exact end, so that a restart leaves no gap."""
        self._settle(wait=True)
        self._store(end, self._complete)

    def _store(self, value: int, complete: bool) -> None:
        self._write(value, complete)
        self._reserved = value
        self._complete = complete

    def _write(self, value: int, complete: bool) -> tuple[int, bool]:
        """Write and fdatasync the mark (on the caller's thread or ``ahead``)."""
        # Opened per store, not held: stores are rare (a few a second at
        # most), and a thousand consoles should not hold a thousand more fds.
        fd = os.open(
            self._path,
            os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
            _FILE_MODE,
        )
        try:
            boot = (self._boot or "-").ljust(_BOOT_WIDTH)
            line = f"{value:020d} {boot} {'c' if complete else 'i'}\n".encode()
            if os.pwrite(fd, line, 0) != len(line):
                raise OSError(f"short write to {self._path}")
            self._sync(fd)
        finally:
            os.close(fd)
        return value, complete
