"""Tests for vdsmconsole.core.consolelog: segments, rotation, gaps, restarts."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from vdsmconsole.core.consolelog import ConsoleLog, segment_name
from vdsmconsole.core.ring import BytesLike, OffsetBeyondEnd, ReadResult


class FlakyWriter:
    """Stands in for os.write: can fail after a byte budget, or write short."""

    def __init__(self) -> None:
        self.budget: int | None = None  # bytes still allowed before ENOSPC
        self.max_chunk: int | None = None  # write at most this much per call
        self.calls = 0

    def __call__(self, fd: int, data: BytesLike) -> int:
        self.calls += 1
        if self.budget is not None:
            if self.budget == 0:
                raise OSError(errno.ENOSPC, "No space left on device (simulated)")
            data = data[: self.budget]
        if self.max_chunk is not None:
            data = data[: self.max_chunk]
        written = os.write(fd, data)
        if self.budget is not None:
            self.budget -= written
        return written


def segments(directory: Path) -> dict[int, int]:
    """The segment files on disk: start offset -> size."""
    found = {}
    for path in directory.iterdir():
        match = re.fullmatch(r"([0-9]{20})\.log", path.name)
        if match and path.is_file() and not path.is_symlink():
            found[int(match.group(1))] = path.stat().st_size
    return found


def pattern(offset: int, size: int) -> bytes:
    """Bytes that say where they belong, so misplaced reads are caught."""
    return bytes((offset + i) * 7 % 256 for i in range(size))


def test_new_log_is_empty_and_creates_directory(tmp_path: Path) -> None:
    """A new log starts at 0, creates its directory with mode 0750."""
    directory = tmp_path / "state" / "vm1"
    log = ConsoleLog(directory, 100, 2)
    assert (log.start, log.end, log.disk_bytes()) == (0, 0, 0)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    assert log.read(0, 10) == ReadResult(0, b"", 0)
    with pytest.raises(OffsetBeyondEnd):
        log.read(1, 10)
    log.close()


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    """Non-positive sizes, negative keep, bad offsets and max_bytes raise."""
    with pytest.raises(ValueError):
        ConsoleLog(tmp_path, 0, 1)
    with pytest.raises(ValueError):
        ConsoleLog(tmp_path, 10, -1)
    with ConsoleLog(tmp_path, 10, 1) as log:
        log.append(0, b"abc")
        with pytest.raises(ValueError):
            log.append(-1, b"x")
        with pytest.raises(ValueError):
            log.read(0, 0)
        with pytest.raises(ValueError):
            log.read(-1, 1)


def test_append_and_read(tmp_path: Path) -> None:
    """Appended bytes are read back at their offsets, in a named segment."""
    with ConsoleLog(tmp_path, 100, 2) as log:
        log.append(0, b"hello ")
        log.append(6, b"world")
        assert log.end == 11
        assert log.read(0, 100) == ReadResult(0, b"hello world", 0)
        assert log.read(6, 3) == ReadResult(6, b"wor", 0)
        assert log.read(11, 3) == ReadResult(11, b"", 0)
        assert log.disk_bytes() == 11
    assert segments(tmp_path) == {0: 11}
    assert (tmp_path / "00000000000000000000.log").read_bytes() == b"hello world"


def test_rotation_splits_appends_at_the_size_limit(tmp_path: Path) -> None:
    """No segment exceeds max_file_bytes; offsets continue across files."""
    data = pattern(0, 25)
    with ConsoleLog(tmp_path, 10, 5) as log:
        log.append(0, data)
        assert segments(tmp_path) == {0: 10, 10: 10, 20: 5}
        assert log.read(3, 100) == ReadResult(3, data[3:], 0)
        log.append(25, b"xxxxx")  # fills the third segment exactly
        assert segments(tmp_path) == {0: 10, 10: 10, 20: 10}
        log.append(30, b"y")  # the next byte rotates
        assert segments(tmp_path) == {0: 10, 10: 10, 20: 10, 30: 1}


def test_retention_bounds_disk_and_reports_loss(tmp_path: Path) -> None:
    """After 5x the budget, disk use stays bounded and old reads report loss."""
    max_file, keep = 1000, 2
    budget = (keep + 1) * max_file
    total = 5 * budget
    with ConsoleLog(tmp_path, max_file, keep) as log:
        offset = 0
        for size in [1, 7, 333, 1000, 4096, 13] * 100:
            if offset >= total:
                break
            log.append(offset, pattern(offset, size))
            offset += size
            assert log.disk_bytes() <= budget
            assert sum(segments(tmp_path).values()) == log.disk_bytes()
        assert len(segments(tmp_path)) <= keep + 1
        assert log.end == offset
        assert log.end - log.start <= budget
        assert log.start > 0
        for asked in (0, 1, log.start - 1):
            result = log.read(asked, 50)
            assert result.lost == log.start - asked
            assert result == ReadResult(log.start, pattern(log.start, 50), result.lost)
        whole = log.read(log.start, budget)
        assert whole == ReadResult(
            log.start, pattern(log.start, log.end - log.start), 0
        )


def test_restart_keeps_offsets_and_bytes(tmp_path: Path) -> None:
    """Re-opening the directory gives the same start, end and bytes."""
    with ConsoleLog(tmp_path, 10, 1) as log:
        log.append(0, pattern(0, 37))
        before = (log.start, log.end, log.read(0, 100))
    with ConsoleLog(tmp_path, 10, 1) as log:
        assert (log.start, log.end, log.read(0, 100)) == before
        assert before[:2] == (20, 37)
        log.append(37, pattern(37, 2))  # carries on in the open segment
        assert segments(tmp_path) == {20: 10, 30: 9}
        assert log.read(20, 100).data == pattern(20, 19)


def test_restart_with_full_last_segment_rotates(tmp_path: Path) -> None:
    """A last segment found full at restart is rotated on the next append."""
    with ConsoleLog(tmp_path, 10, 3) as log:
        log.append(0, pattern(0, 10))
    with ConsoleLog(tmp_path, 10, 3) as log:
        log.append(10, pattern(10, 1))
    assert segments(tmp_path) == {0: 10, 10: 1}


def test_lowering_keep_files_deletes_old_segments_at_open(tmp_path: Path) -> None:
    """A log re-opened with a smaller keep_files trims the oldest segments."""
    with ConsoleLog(tmp_path, 10, 5) as log:
        log.append(0, pattern(0, 55))
    with ConsoleLog(tmp_path, 10, 1) as log:
        assert (log.start, log.end) == (40, 55)
        assert log.disk_bytes() == 15
    assert segments(tmp_path) == {40: 10, 50: 5}


def test_gap_opens_a_new_segment_and_is_reported(tmp_path: Path) -> None:
    """An append past end starts a segment at its offset; reads report the gap."""
    with ConsoleLog(tmp_path, 100, 5) as log:
        log.append(0, b"abc")
        log.append(10, b"defg")
        assert (log.start, log.end) == (0, 14)
        assert segments(tmp_path) == {0: 3, 10: 4}
        assert log.read(0, 100) == ReadResult(0, b"abc", 0)  # stops at the gap
        assert log.read(3, 100) == ReadResult(10, b"defg", 7)
        assert log.read(5, 2) == ReadResult(10, b"de", 5)
    with ConsoleLog(tmp_path, 100, 5) as log:
        assert log.read(4, 100) == ReadResult(10, b"defg", 6)


def test_first_append_at_a_later_offset(tmp_path: Path) -> None:
    """A log whose first byte is at offset N reports 0..N as lost."""
    with ConsoleLog(tmp_path, 100, 5) as log:
        log.append(4096, b"boot")
        assert (log.start, log.end) == (4096, 4100)
        assert log.read(0, 10) == ReadResult(4096, b"boot", 4096)
    assert segments(tmp_path) == {4096: 4}


def test_read_spans_contiguous_segments(tmp_path: Path) -> None:
    """A read returns up to max_bytes across contiguous segments."""
    with ConsoleLog(tmp_path, 4, 10) as log:
        log.append(0, pattern(0, 14))
        assert log.read(2, 9) == ReadResult(2, pattern(2, 9), 0)
        assert log.read(1, 100) == ReadResult(1, pattern(1, 13), 0)


def test_failed_write_leaves_end_exact_and_gap_is_reported(tmp_path: Path) -> None:
    """A write failing midway counts only written bytes; later data follows a gap."""
    writer = FlakyWriter()
    with ConsoleLog(tmp_path, 100, 5, _write=writer) as log:
        log.append(0, b"0123")
        writer.budget = 3
        with pytest.raises(OSError) as info:
            log.append(4, b"456789")
        assert info.value.errno == errno.ENOSPC
        assert log.end == 7
        writer.budget = None
        log.append(10, b"ABC")  # 7..9 never reached the disk
        assert log.end == 13
        assert segments(tmp_path) == {0: 7, 10: 3}
        assert log.read(0, 100) == ReadResult(0, b"0123456", 0)
        assert log.read(7, 100) == ReadResult(10, b"ABC", 3)
    with ConsoleLog(tmp_path, 100, 5) as log:
        assert log.read(8, 100) == ReadResult(10, b"ABC", 2)


def test_retrying_a_failed_append_writes_only_the_rest(tmp_path: Path) -> None:
    """Appending again with the same offset and data skips what is on disk."""
    writer = FlakyWriter()
    with ConsoleLog(tmp_path, 100, 5, _write=writer) as log:
        writer.budget = 2
        with pytest.raises(OSError):
            log.append(0, b"abcdef")
        writer.budget = None
        log.append(0, b"abcdef")
        log.append(3, b"def")  # entirely on disk already: nothing to do
        assert log.end == 6
        assert log.read(0, 100) == ReadResult(0, b"abcdef", 0)


def test_failure_at_a_gap_leaves_an_empty_segment_then_removes_it(
    tmp_path: Path,
) -> None:
    """A gap append writing nothing ends the log there; its empty file goes later."""
    writer = FlakyWriter()
    with ConsoleLog(tmp_path, 100, 5, _write=writer) as log:
        log.append(0, b"ab")
        writer.budget = 0
        with pytest.raises(OSError):
            log.append(50, b"cd")
        assert log.end == 50
        assert log.read(2, 10) == ReadResult(50, b"", 48)
        writer.budget = None
        log.append(60, b"ef")
        assert segments(tmp_path) == {0: 2, 60: 2}
        assert log.read(2, 10) == ReadResult(60, b"ef", 58)


def test_short_writes_are_completed(tmp_path: Path) -> None:
    """A writer that takes one byte per call still gets everything written."""
    writer = FlakyWriter()
    writer.max_chunk = 1
    with ConsoleLog(tmp_path, 4, 5, _write=writer) as log:
        log.append(0, b"abcdefghij")
        assert writer.calls == 10
        assert log.read(0, 100).data == b"abcdefghij"
    assert segments(tmp_path) == {0: 4, 4: 4, 8: 2}


def test_segment_creation_failure_leaves_end_unchanged(tmp_path: Path) -> None:
    """If the next segment cannot be created, nothing changes; later appends work."""
    with ConsoleLog(tmp_path, 4, 5) as log:
        log.append(0, b"abcd")
        (tmp_path / segment_name(4)).mkdir()  # in the way of the rotation
        with pytest.raises(OSError):
            log.append(4, b"efgh")
        assert (log.end, log.disk_bytes()) == (4, 4)
        log.append(8, b"ijkl")
        assert log.read(0, 100) == ReadResult(0, b"abcd", 0)
        assert log.read(4, 100) == ReadResult(8, b"ijkl", 4)
    assert (tmp_path / segment_name(4)).is_dir()


def test_foreign_files_are_ignored_and_kept(tmp_path: Path) -> None:
    """Files not named like segments, and non-regular entries, are left alone."""
    foreign = ["notes.txt", "123.log", segment_name(0) + ".bak", "x" * 20 + ".log"]
    for name in foreign:
        (tmp_path / name).write_bytes(b"not a segment")
    (tmp_path / segment_name(7)).mkdir()
    (tmp_path / segment_name(9)).symlink_to(tmp_path / "notes.txt")
    with ConsoleLog(tmp_path, 10, 0) as log:
        assert (log.start, log.end, log.disk_bytes()) == (0, 0, 0)
        log.append(0, pattern(0, 35))  # rotations delete old segments only
        assert (log.start, log.end) == (30, 35)
    for name in foreign:
        assert (tmp_path / name).read_bytes() == b"not a segment"
    assert (tmp_path / segment_name(7)).is_dir()
    assert (tmp_path / segment_name(9)).is_symlink()


def test_closed_log_refuses_io(tmp_path: Path) -> None:
    """After close, append and read raise ValueError; close is idempotent."""
    log = ConsoleLog(tmp_path, 10, 1)
    log.append(0, b"a")
    log.close()
    log.close()
    with pytest.raises(ValueError):
        log.append(1, b"b")
    with pytest.raises(ValueError):
        log.read(0, 1)


# -- a state machine against a reference model ----------------------------


class ConsoleLogMachine(RuleBasedStateMachine):
    """Appends (with gaps, failures, retries), reads and restarts vs a model."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="consolelog-"))
        self.writer = FlakyWriter()
        self.written: dict[int, int] = {}  # offset -> byte that reached disk
        self.end = 0
        self.last_start = 0

    @initialize(
        max_file=st.integers(min_value=1, max_value=40),
        keep=st.integers(min_value=0, max_value=3),
    )
    def open_log(self, max_file: int, keep: int) -> None:
        self.max_file, self.keep = max_file, keep
        self.log = ConsoleLog(self.directory, max_file, keep, _write=self.writer)

    def teardown(self) -> None:
        if hasattr(self, "log"):
            self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _append(self, offset: int, data: bytes, budget: int | None) -> None:
        self.writer.budget = budget
        try:
            self.log.append(offset, data)
        except OSError:
            assert budget is not None
        finally:
            self.writer.budget = None
        # What the model expects: bytes below end were skipped, the rest
        # written up to the budget.
        first = max(offset, self.end)
        skip = first - offset
        if skip >= len(data):
            return
        count = len(data) - skip if budget is None else min(budget, len(data) - skip)
        for i in range(count):
            self.written[first + i] = data[skip + i]
        self.end = first + count

    @rule(
        gap=st.one_of(st.just(0), st.integers(min_value=1, max_value=30)),
        size=st.integers(min_value=0, max_value=90),
    )
    def append(self, gap: int, size: int) -> None:
        offset = self.end + gap
        self._append(offset, pattern(offset, size), None)

    @rule(
        gap=st.integers(min_value=0, max_value=5),
        size=st.integers(min_value=1, max_value=60),
        budget=st.integers(min_value=0, max_value=60),
    )
    def failing_append(self, gap: int, size: int, budget: int) -> None:
        offset = self.end + gap
        self._append(offset, pattern(offset, size), budget)

    @rule(back=st.integers(min_value=1, max_value=40), size=st.integers(0, 60))
    def overlapping_append(self, back: int, size: int) -> None:
        offset = max(0, self.end - back)
        self._append(offset, pattern(offset, size), None)

    @rule(chunk=st.integers(min_value=1, max_value=5))
    def short_writes(self, chunk: int) -> None:
        self.writer.max_chunk = chunk

    @rule()
    def restart(self) -> None:
        self.log.close()
        self.log = ConsoleLog(
            self.directory, self.max_file, self.keep, _write=self.writer
        )

    @rule(
        data=st.data(),
        max_bytes=st.integers(min_value=1, max_value=120),
    )
    def read(self, data: st.DataObject, max_bytes: int) -> None:
        offset = data.draw(st.integers(min_value=0, max_value=self.end + 3))
        self.check_read(offset, max_bytes)

    def check_read(self, offset: int, max_bytes: int) -> None:
        if offset > self.end:
            with pytest.raises(OffsetBeyondEnd):
                self.log.read(offset, max_bytes)
            return
        result = self.log.read(offset, max_bytes)
        # The first retained byte at or after offset, and the run from it.
        first = max(offset, self.log.start)
        while first < self.end and first not in self.written:
            first += 1
        run = bytearray()
        while len(run) < max_bytes and first + len(run) in self.written:
            run.append(self.written[first + len(run)])
        assert result == ReadResult(first, bytes(run), first - offset)

    @invariant()
    def offsets_match_model(self) -> None:
        assert self.log.end == self.end
        assert self.last_start <= self.log.start <= self.log.end
        self.last_start = self.log.start

    @invariant()
    def disk_stays_bounded(self) -> None:
        on_disk = segments(self.directory)
        assert sum(on_disk.values()) == self.log.disk_bytes()
        assert self.log.disk_bytes() <= (self.keep + 1) * self.max_file
        assert len(on_disk) <= self.keep + 1
        assert all(size <= self.max_file for size in on_disk.values())

    @invariant()
    def a_follower_reads_everything_retained(self) -> None:
        # Walking from start by next_offset returns every retained byte and
        # reports exactly the gaps.
        offset = self.log.start
        while offset < self.end:
            self.check_read(offset, 64)
            offset = self.log.read(offset, 64).next_offset


ConsoleLogMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None
)
test_console_log_state_machine = ConsoleLogMachine.TestCase
