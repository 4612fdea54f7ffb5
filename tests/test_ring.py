"""Tests for vdsmconsole.core.ring: offsets, loss accounting and memory use."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vdsmconsole.core.ring import OffsetBeyondEnd, ReadResult, Ring


def test_new_ring_is_empty() -> None:
    """A new ring has start == end == the given start and holds nothing."""
    ring = Ring(100, start=42)
    assert (ring.start, ring.end, len(ring), ring.capacity) == (42, 42, 0, 100)
    assert ring.read(42, 10) == ReadResult(42, b"", 0)


def test_bad_arguments_are_rejected() -> None:
    """Capacity < 1, negative start, max_bytes < 1 and negative offsets raise."""
    with pytest.raises(ValueError):
        Ring(0)
    with pytest.raises(ValueError):
        Ring(10, start=-1)
    with pytest.raises(ValueError):
        Ring(10, block_size=0)
    ring = Ring(10)
    ring.append(b"abc")
    with pytest.raises(ValueError):
        ring.read(0, 0)
    with pytest.raises(ValueError):
        ring.read(-1, 5)


def test_append_returns_new_end() -> None:
    """append returns the offset just past the bytes appended."""
    ring = Ring(10, start=5)
    assert ring.append(b"abc") == 8
    assert ring.append(b"") == 8
    assert ring.end == 8


def test_read_returns_what_was_appended() -> None:
    """Reads return the appended bytes at their absolute offsets."""
    ring = Ring(100, start=1000)
    ring.append(b"hello ")
    ring.append(b"world")
    assert ring.read(1000, 100) == ReadResult(1000, b"hello world", 0)
    assert ring.read(1006, 3) == ReadResult(1006, b"wor", 0)
    assert ring.read(1006, 3).next_offset == 1009


def test_read_at_end_is_empty_and_beyond_end_raises() -> None:
    """offset == end gives no data; offset > end raises OffsetBeyondEnd."""
    ring = Ring(10)
    ring.append(b"abc")
    assert ring.read(3, 5) == ReadResult(3, b"", 0)
    with pytest.raises(OffsetBeyondEnd) as info:
        ring.read(4, 5)
    assert (info.value.offset, info.value.end) == (4, 3)
    assert isinstance(info.value, ValueError)


def test_overflow_drops_oldest_and_reports_loss() -> None:
    """Bytes pushed out by capacity are reported as lost, exactly."""
    ring = Ring(4)
    ring.append(b"abcdef")
    assert (ring.start, ring.end, len(ring)) == (2, 6, 4)
    assert ring.read(0, 10) == ReadResult(2, b"cdef", 2)
    ring.append(b"g")
    assert ring.read(1, 2) == ReadResult(3, b"de", 2)


def test_loss_reported_even_when_caught_up() -> None:
    """A read before start when nothing new is held still reports the loss."""
    ring = Ring(3)
    ring.append(b"abcdef")
    assert ring.read(0, 1) == ReadResult(3, b"d", 3)


def test_read_spans_blocks() -> None:
    """A read returns all bytes up to max_bytes even across block edges."""
    ring = Ring(1000, block_size=4)
    for piece in (b"ab", b"cdefg", b"hijklmnopq", b"r"):
        ring.append(piece)
    assert ring.read(1, 100) == ReadResult(1, b"bcdefghijklmnopqr", 0)
    assert ring.read(3, 9) == ReadResult(3, b"defghijkl", 0)


def test_appending_after_a_spanning_read_works() -> None:
    """A read that spans into the tail does not stop the tail from growing."""
    ring = Ring(1000, block_size=4)
    ring.append(b"abcdef")
    result = ring.read(0, 100)
    ring.append(b"ghi")
    assert result.data == b"abcdef"
    assert ring.read(0, 100).data == b"abcdefghi"


def test_huge_append_keeps_only_capacity() -> None:
    """An append larger than capacity keeps its last `capacity` bytes."""
    ring = Ring(5, start=10, block_size=2)
    ring.append(b"xy")
    ring.append(b"0123456789")
    assert (ring.start, ring.end) == (17, 22)
    assert ring.read(10, 100) == ReadResult(17, b"56789", 7)


def test_accepts_bytearray_and_memoryview() -> None:
    """append takes any bytes-like object and does not keep a reference."""
    ring = Ring(100, block_size=4)
    source = bytearray(b"abcdefgh")
    ring.append(source)
    ring.append(memoryview(b"ijk"))
    source[:] = b"XXXXXXXXXXXX"  # resizing proves no export is left behind
    assert ring.read(0, 100).data == b"abcdefghijk"


def _traced(build: Callable[[], object]) -> int:
    """Bytes still allocated by the objects `build()` returns."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return after - before


def test_memory_follows_content_not_capacity() -> None:
    """A 64 MiB ring holding ten bytes allocates a few hundred bytes, not MiBs."""

    def build() -> Ring:
        ring = Ring(64 * 1024 * 1024)
        ring.append(b"0123456789")
        return ring

    assert _traced(build) < 4096


def test_memory_of_trickle_is_proportional() -> None:
    """Many tiny appends into a big ring hold about what was appended."""

    def build() -> Ring:
        ring = Ring(64 * 1024 * 1024)
        for _ in range(100_000):
            ring.append(b"12345678")
        return ring

    assert _traced(build) < 800_000 * 1.2


def test_memory_stays_bounded_when_full() -> None:
    """A full ring stays near its capacity however much goes through it."""
    capacity = 1024 * 1024

    def build() -> Ring:
        ring = Ring(capacity)
        chunk = bytes(range(256)) * 16
        for _ in range(2560):  # 10 MiB
            ring.append(chunk)
        return ring

    assert _traced(build) < capacity * 1.2


# -- properties against a reference model ----------------------------------

appends = st.one_of(
    st.binary(max_size=3),
    st.binary(min_size=5, max_size=40),
    st.integers(min_value=0, max_value=300).map(
        lambda n: bytes(i % 251 for i in range(n))
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(min_value=1, max_value=64),
    block_size=st.one_of(st.none(), st.integers(min_value=1, max_value=16)),
    start=st.integers(min_value=0, max_value=10**12),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("append"), appends),
            st.tuples(
                st.just("read"),
                st.tuples(st.integers(0, 400), st.integers(1, 80)),
            ),
        ),
        max_size=40,
    ),
)
def test_reads_match_appends_or_report_loss_exactly(
    capacity: int,
    block_size: int | None,
    start: int,
    steps: list[tuple[str, object]],
) -> None:
    """Any mix of appends and reads returns appended bytes or exact loss."""
    ring = Ring(capacity, start=start, block_size=block_size)
    model = b""  # everything appended, model[0] at offset `start`
    for kind, arg in steps:
        if kind == "append":
            assert isinstance(arg, bytes)
            model += arg
            assert ring.append(arg) == start + len(model)
        else:
            assert isinstance(arg, tuple)
            rel, max_bytes = arg
            _check_read(ring, start, model, start + rel, max_bytes)
        end = start + len(model)
        assert ring.end == end
        assert ring.start == max(start, end - capacity)
        assert len(ring) == min(capacity, len(model))
    # Finally read at every offset from before the start to the end.
    for offset in range(max(0, start - 3), start + len(model) + 2):
        _check_read(ring, start, model, offset, 7)


def _check_read(ring: Ring, base: int, model: bytes, offset: int, n: int) -> None:
    end = base + len(model)
    if offset > end:
        with pytest.raises(OffsetBeyondEnd):
            ring.read(offset, n)
        return
    result = ring.read(offset, n)
    held_from = max(base, end - ring.capacity)
    expected_lost = max(0, held_from - offset)
    assert result.lost == expected_lost
    assert result.offset == offset + expected_lost
    first = result.offset - base
    assert result.data == model[first : first + n]


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=200), max_size=30),
    capacity=st.integers(min_value=1, max_value=500),
)
def test_polling_reader_misses_only_reported_bytes(
    sizes: list[int], capacity: int
) -> None:
    """A reader following next_offset gets every byte, or is told it lost it."""
    ring = Ring(capacity, block_size=8)
    model = bytearray()
    received: list[int | None] = []  # None where a loss was reported
    offset = 0

    def poll() -> int:
        result = ring.read(offset, 50)
        assert result.offset == offset + result.lost
        received.extend([None] * result.lost)
        received.extend(result.data)
        return result.next_offset

    for size in sizes:
        chunk = bytes((len(model) + i) % 256 for i in range(size))
        model += chunk
        ring.append(chunk)
        offset = poll()
    while offset < ring.end:
        offset = poll()
    assert len(received) == len(model)
    for got, want in zip(received, model, strict=True):
        assert got is None or got == want
    # Nothing is reported lost when the ring never overflowed.
    if len(model) <= capacity:
        assert None not in received
