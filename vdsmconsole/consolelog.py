"""The on-disk console log of one guest console.

The ring buffer keeps the hot bytes in memory; this log keeps the older ones
on disk, under the same absolute offsets, so that a client resuming from an
old offset (or after a server restart) is served from here.

Layout: a directory of segment files, each named by the absolute offset of
its first byte, zero-padded to 20 digits (``00000000000000004096.log``).  A
segment ends at its start plus its size, and the log ends where the last
segment ends, so the directory alone says which offsets are retained: a
restart scans it and carries on with the same offsets.  Files whose names do
not have that shape are left alone.

Appends only ever go to the end of the last segment (``O_APPEND``); no file
is ever written in the middle.  The last segment is rotated when it reaches
``max_file_bytes`` (an append is split so that no file exceeds it) and at
most ``keep_files`` older segments are kept, so the disk use of a console is
bounded by ``(keep_files + 1) * max_file_bytes``.

Gaps: bytes that never reached the disk (a write failed, the disk was full)
are not papered over.  ``end`` counts exactly the bytes that did reach a
file; the next append, whose offset is then beyond ``end``, opens a new
segment at its own offset, and a read that lands in the gap reports it as
lost, like a read older than ``start``.  An append whose offset is below
``end`` skips the part already on disk, so retrying a failed append with the
same offset and data is safe.

Durability: appends are not fsync'ed.  The page cache holds the recent bytes:
a crash of the process loses nothing that was already written, a crash of the
host may lose the last seconds (offsetmark.py keeps their offsets from being
handed out again).  A console log is a diagnostic record, and
fsync on every guest write would let a slow disk throttle the guest's console.

Pure: no Twisted, no threads; blocking file I/O on a local state directory.
Not thread-safe.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import re
import types
from collections.abc import Callable
from pathlib import Path

from vdsmconsole.ring import BytesLike, OffsetBeyondEnd, ReadResult, check_read_args

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "ConsoleLog",
    "OffsetBeyondEnd",
    "ReadResult",
    "segment_name",
]

DIR_MODE = 0o750
FILE_MODE = 0o640
_SEGMENT_NAME = re.compile(r"([0-9]{20})\.log")

# Never follow a symlink planted in the state directory, never leak fds.
_O_COMMON = os.O_CLOEXEC | os.O_NOFOLLOW

Writer = Callable[[int, BytesLike], int]


def segment_name(start: int) -> str:
    """The file name of the segment whose first byte has offset ``start``."""
    return f"{start:020d}.log"


class ConsoleLog:
    """Append-only, rotated, offset-addressed log of one console's output.

    ``_write`` replaces ``os.write`` for tests that simulate failing or
    short writes.
    """

    def __init__(
        self,
        directory: Path,
        max_file_bytes: int,
        keep_files: int,
        *,
        _write: Writer = os.write,
    ) -> None:
        if max_file_bytes < 1:
            raise ValueError(f"max_file_bytes must be at least 1, got {max_file_bytes}")
        if keep_files < 0:
            raise ValueError(f"keep_files must not be negative, got {keep_files}")
        self._dir = Path(directory)
        self._max = max_file_bytes
        self._keep = keep_files
        self._write = _write
        # Segments oldest first, as two parallel lists (bisect on starts).
        # Only the last one may be empty; none overlaps the next.
        self._starts: list[int] = []
        self._sizes: list[int] = []
        self._disk = 0
        # The last segment, open for appending; opened lazily.
        self._fd: int | None = None
        self._closed = False
        self._make_dir()
        self._scan()
        # keep_files may have been lowered since the last run.
        self._apply_retention()

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def start(self) -> int:
        """The oldest offset retained on disk (== end when nothing is)."""
        return self._starts[0] if self._starts else 0

    @property
    def end(self) -> int:
        """The offset the next appended byte gets (0 for a new log)."""
        return self._starts[-1] + self._sizes[-1] if self._starts else 0

    def disk_bytes(self) -> int:
        """Total size of the retained segment files."""
        return self._disk

    def __repr__(self) -> str:
        return (
            f"<ConsoleLog {str(self._dir)!r} start={self.start} end={self.end}"
            f" segments={len(self._starts)}>"
        )

    # -- opening ------------------------------------------------------------

    def _make_dir(self) -> None:
        try:
            self._dir.mkdir(mode=DIR_MODE, parents=True)
        except FileExistsError:
            return
        # mkdir's mode is filtered by the umask; say what we mean.
        os.chmod(self._dir, DIR_MODE)

    def _scan(self) -> None:
        found: list[tuple[int, int]] = []
        with os.scandir(self._dir) as entries:
            for entry in entries:
                match = _SEGMENT_NAME.fullmatch(entry.name)
                if match is None or not entry.is_file(follow_symlinks=False):
                    continue
                found.append(
                    (int(match.group(1)), entry.stat(follow_symlinks=False).st_size)
                )
        found.sort()
        for i, (start, size) in enumerate(found):
            if i + 1 < len(found):
                # Our appends never make segments overlap; should something
                # else have, the later segment wins.
                size = min(size, found[i + 1][0] - start)
                if size == 0:
                    # An empty segment left behind by a failed append.
                    self._unlink(start)
                    continue
            self._starts.append(start)
            self._sizes.append(size)
            self._disk += size

    # -- appending ----------------------------------------------------------

    def append(self, offset: int, data: BytesLike) -> None:
        """Write ``data``, whose first byte has absolute offset ``offset``.

        An offset beyond ``end`` starts a new segment there (the bytes in
        between are a gap, reported as lost by reads); bytes below ``end``
        are already on disk and skipped.  May raise OSError (disk full,
        permissions, ...): ``end`` then counts exactly the bytes written.
        """
        self._check_open()
        n = len(data)
        sizes = self._sizes
        fd = self._fd
        # The common case in one write: data continues the open segment and
        # fits in it.
        if (
            fd is not None
            and 0 < n <= self._max - sizes[-1]
            and offset == self._starts[-1] + sizes[-1]
        ):
            written = self._write(fd, data)
            if written > 0:
                sizes[-1] += written
                self._disk += written
            if written == n:
                return
            # A short write: the general path below skips what did land.
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        end = self.end
        skip = min(len(data), max(0, end - offset))
        if skip == len(data):
            return
        offset += skip
        with memoryview(data) as view:
            view = view[skip:]
            if offset > end or not self._starts:
                self._new_segment(offset)
            elif self._sizes[-1] >= self._max:
                self._new_segment(end)
            elif self._fd is None:
                # After a restart: carry on with the last segment.
                self._fd = os.open(
                    self._path(self._starts[-1]), os.O_WRONLY | os.O_APPEND | _O_COMMON
                )
            pos = 0
            while pos < len(view):
                room = self._max - self._sizes[-1]
                if room <= 0:
                    self._new_segment(self.end)
                    room = self._max
                assert self._fd is not None
                written = self._write(self._fd, view[pos : pos + room])
                if written <= 0:
                    raise OSError(errno.EIO, "write wrote nothing", str(self._dir))
                # Account as we go, so that an error leaves end exact.
                self._sizes[-1] += written
                self._disk += written
                pos += written

    def _new_segment(self, start: int) -> None:
        """Create the segment beginning at ``start`` and make it current."""
        # O_EXCL: never append to a file we do not know the contents of.
        fd = os.open(
            self._path(start),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | _O_COMMON,
            FILE_MODE,
        )
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        # Only now that the new segment exists (so end never moves back),
        # drop a previous one that a failed append left empty.
        if self._starts and self._sizes[-1] == 0:
            self._unlink(self._starts.pop())
            self._sizes.pop()
        self._starts.append(start)
        self._sizes.append(0)
        self._apply_retention()

    def _apply_retention(self) -> None:
        """Delete the oldest segments beyond keep_files besides the last."""
        while len(self._starts) > self._keep + 1:
            self._disk -= self._sizes.pop(0)
            self._unlink(self._starts.pop(0))

    def _unlink(self, start: int) -> None:
        # Best effort: failing to delete an old segment must not fail the
        # append that rotated; a segment still there is rescanned at restart.
        with contextlib.suppress(OSError):
            os.unlink(self._path(start))

    # -- reading ------------------------------------------------------------

    def read(self, offset: int, max_bytes: int) -> ReadResult:
        """Return the bytes retained from ``offset``, at most ``max_bytes``.

        Same contract as Ring.read: an offset before ``start`` or inside a
        gap reports ``lost`` exactly and returns the next retained bytes; at
        ``end`` no data; beyond it OffsetBeyondEnd.  A read continues across
        segments while they are contiguous, so a result shorter than
        ``max_bytes`` ends at a gap or at ``end``.
        """
        self._check_open()
        end = self.end
        check_read_args(offset, max_bytes, end)
        starts, sizes = self._starts, self._sizes
        if offset == end:
            return ReadResult(offset, b"", 0)
        # Here offset < end, so there is a non-empty segment at or after it.
        lost = 0
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0:
            i = 0
            lost = starts[0] - offset
        elif offset >= starts[i] + sizes[i]:
            i += 1
            lost = starts[i] - offset
        offset += lost
        parts: list[bytes] = []
        pos = offset
        want = max_bytes
        while want and i < len(starts) and starts[i] <= pos < starts[i] + sizes[i]:
            count = min(want, starts[i] + sizes[i] - pos)
            chunk = self._pread(starts[i], pos - starts[i], count)
            parts.append(chunk)
            pos += len(chunk)
            want -= len(chunk)
            if len(chunk) < count:
                break  # the file is shorter than we knew: someone cut it
            i += 1
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return ReadResult(offset, data, lost)

    def _pread(self, start: int, position: int, count: int) -> bytes:
        fd = os.open(self._path(start), os.O_RDONLY | _O_COMMON)
        try:
            chunks: list[bytes] = []
            while count:
                chunk = os.pread(fd, count, position)
                if not chunk:
                    break
                chunks.append(chunk)
                position += len(chunk)
                count -= len(chunk)
        finally:
            os.close(fd)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def discard(self) -> None:
        """Delete every segment: the log starts again, empty, at the offset
        of the next append (a new console of the same vmId; see console.py)."""
        self._check_open()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        for start in self._starts:
            self._unlink(start)
        self._starts.clear()
        self._sizes.clear()
        self._disk = 0

    # -- closing ------------------------------------------------------------

    def close(self) -> None:
        """Close the current segment; further appends and reads fail."""
        self._closed = True
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> ConsoleLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on a closed ConsoleLog")

    def _path(self, start: int) -> Path:
        return self._dir / segment_name(start)
