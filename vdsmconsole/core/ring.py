"""The in-memory ring buffer of one guest console: bytes in, offsets out.

Every byte a guest writes gets an absolute offset that only grows (across
reconnects and, through the console log, across restarts).  Readers ask for
an offset and get back what is still held from there, plus exactly how many
bytes they asked for that are gone: nothing is ever dropped silently.

Why it is built the way it is:

- Memory follows what is held, not the capacity: a 64 MiB ring of a guest
  that printed ten bytes holds ten bytes (plus a small tail buffer).  A host
  runs hundreds of consoles and most of them are quiet.
- It is on the hot path twice over: a busy guest arrives in ~4 KiB pty reads
  at 100 MB/s, and a trickling guest arrives a few bytes at a time thousands
  of times a second.  Bytes are therefore kept in fixed-size blocks: small
  appends are coalesced into a ``bytearray`` tail, which is frozen into an
  immutable ``bytes`` block once full.  Every block but the tail has exactly
  ``block_size`` bytes, so finding the block of an offset is arithmetic, not
  a search, and trimming the front drops whole blocks from a list.
- Reads copy each byte they return once (``memoryview`` slices joined), and
  return everything held from the offset up to ``max_bytes``, across blocks.

Nothing here does I/O or knows about Twisted; the console wires it to a
source, to the console log and to its clients.  Not thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BytesLike",
    "MAX_BLOCK_SIZE",
    "MIN_BLOCK_SIZE",
    "OffsetBeyondEnd",
    "ReadResult",
    "Ring",
    "check_read_args",
]

# What append accepts: pty and socket reads give bytes, tests and callers
# holding buffers may pass the others (they are copied, never kept).
BytesLike = bytes | bytearray | memoryview

# Blocks are capacity/8, clamped: big enough that per-block overhead is
# noise, small enough that a dead head block wastes little memory.
MAX_BLOCK_SIZE = 64 * 1024
MIN_BLOCK_SIZE = 256


@dataclass(frozen=True, slots=True)
class ReadResult:
    """What a read at an offset found.

    ``offset`` is the absolute offset of ``data[0]``, that is the requested
    offset plus ``lost``: the bytes between the two are no longer retained
    (or never were).  A reader that asks next for ``next_offset`` misses
    nothing that is still retained.
    """

    offset: int
    data: bytes
    lost: int

    @property
    def next_offset(self) -> int:
        """The offset to ask for next: just past the returned data."""
        return self.offset + len(self.data)


class OffsetBeyondEnd(ValueError):
    """The requested offset has not been written yet (it is past the end)."""

    def __init__(self, offset: int, end: int) -> None:
        super().__init__(f"offset {offset} is beyond the end {end}")
        self.offset = offset
        self.end = end


def check_read_args(offset: int, max_bytes: int, end: int) -> None:
    """Validate the arguments of a read; shared by the ring and the log."""
    if offset < 0:
        raise ValueError(f"offset must not be negative, got {offset}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
    if offset > end:
        raise OffsetBeyondEnd(offset, end)


class Ring:
    """Keeps the last ``capacity`` bytes appended, addressed by absolute offset.

    ``start`` is the oldest offset still held, ``end`` the offset the next
    appended byte gets; ``end - start <= capacity``.  A ring restored after a
    restart begins at ``start`` (the console log's end) so offsets continue.
    ``block_size`` is a tuning knob (and lets tests exercise block edges with
    small data); the default derives it from the capacity.
    """

    __slots__ = (
        "_capacity",
        "_block_size",
        "_blocks",
        "_tail",
        "_base",
        "_start",
        "_end",
    )

    def __init__(
        self, capacity: int, start: int = 0, *, block_size: int | None = None
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if start < 0:
            raise ValueError(f"start must not be negative, got {start}")
        if block_size is None:
            block_size = min(MAX_BLOCK_SIZE, max(MIN_BLOCK_SIZE, capacity // 8))
        elif block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self._capacity = capacity
        self._block_size = block_size
        # Full blocks, each exactly block_size bytes, oldest first.
        self._blocks: list[bytes] = []
        # The block being filled, always shorter than block_size; it follows
        # the full blocks.
        self._tail = bytearray()
        # Absolute offset of _blocks[0] (of _tail when there are no blocks).
        # It may be older than _start: the head block can be partly dead.
        self._base = start
        self._start = start
        self._end = start

    @property
    def capacity(self) -> int:
        """The most bytes held at once."""
        return self._capacity

    @property
    def start(self) -> int:
        """The oldest absolute offset still held (== end when empty)."""
        return self._start

    @property
    def end(self) -> int:
        """The absolute offset the next appended byte gets."""
        return self._end

    def __len__(self) -> int:
        return self._end - self._start

    def __repr__(self) -> str:
        return f"<Ring start={self._start} end={self._end} capacity={self._capacity}>"

    def append(self, data: BytesLike) -> int:
        """Add ``data`` at the end, dropping the oldest bytes beyond capacity.

        Returns the new end.  Costs O(len(data)) plus O(1) per block filled.
        """
        n = len(data)
        tail = self._tail
        if n < self._block_size - len(tail):
            # The common case for a trickling guest: it fits in the tail.
            if not n:
                return self._end
            tail += data
            self._end += n
            if self._end - self._start > self._capacity:
                self._trim()
            return self._end
        return self._append_blocks(data)

    def _append_blocks(self, data: BytesLike) -> int:
        """The slow path of append: ``data`` fills at least one block."""
        n = len(data)
        bs = self._block_size
        blocks = self._blocks
        with memoryview(data) as view:
            if n > self._capacity:
                # Neither what is held nor the head of data survives: keep
                # only the last `capacity` bytes, starting afresh.
                skip = n - self._capacity
                blocks.clear()
                self._tail = bytearray()
                self._end += skip
                self._base = self._start = self._end
                view = view[skip:]
                n = self._capacity
            pos = 0
            tail = self._tail
            if tail:
                # Top the tail up to a full block and freeze it.
                pos = bs - len(tail)
                tail += view[:pos]
                blocks.append(bytes(tail))
            while n - pos >= bs:
                blocks.append(bytes(view[pos : pos + bs]))
                pos += bs
            self._tail = bytearray(view[pos:])
        self._end += n
        self._trim()
        return self._end

    def _trim(self) -> None:
        """Move start up to end - capacity and drop blocks that are all dead."""
        start = self._end - self._capacity
        if start <= self._start:
            return
        self._start = start
        # The tail is never wholly dead (start < end), so this is at most
        # len(_blocks).
        dead = (start - self._base) // self._block_size
        if dead:
            del self._blocks[:dead]
            self._base += dead * self._block_size

    def read(self, offset: int, max_bytes: int) -> ReadResult:
        """Return what is held from ``offset``, at most ``max_bytes`` of it.

        An offset older than ``start`` reports ``lost = start - offset`` and
        returns data from ``start``; ``offset == end`` returns no data;
        ``offset > end`` raises OffsetBeyondEnd.  All bytes held from the
        (adjusted) offset are returned up to ``max_bytes``, across blocks:
        a short result means the reader has caught up with ``end``.
        """
        end = self._end
        check_read_args(offset, max_bytes, end)
        lost = 0
        if offset < self._start:
            lost = self._start - offset
            offset = self._start
        stop = min(end, offset + max_bytes)
        if offset == stop:
            return ReadResult(offset, b"", lost)
        bs = self._block_size
        blocks = self._blocks
        first, lo = divmod(offset - self._base, bs)
        last = (stop - 1 - self._base) // bs
        if first == last:
            block = blocks[first] if first < len(blocks) else self._tail
            hi = lo + (stop - offset)
            if type(block) is bytes:
                # Slicing bytes copies once (and not at all for a whole block).
                return ReadResult(offset, block[lo:hi], lost)
            with memoryview(block) as view:
                return ReadResult(offset, view[lo:hi].tobytes(), lost)
        # Spans blocks: join views so that each byte is copied once.  The
        # views are released before returning so the tail can grow again.
        views: list[memoryview] = []
        try:
            for i in range(first, last + 1):
                block = blocks[i] if i < len(blocks) else self._tail
                hi = bs if i < last else stop - self._base - last * bs
                views.append(memoryview(block)[lo:hi])
                lo = 0
            data = b"".join(views)
        finally:
            for v in views:
                v.release()
        return ReadResult(offset, data, lost)
