"""OffsetMark: the persisted bound that keeps offsets from being reused."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from vdsmconsole.core.offsetmark import MARK_FILE, OffsetMark


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Syncs:
    """Counts fdatasync calls (and can fail them, as a dying disk would)."""

    def __init__(self) -> None:
        self.count = 0
        self.error: OSError | None = None

    def __call__(self, fd: int) -> None:
        if self.error is not None:
            raise self.error
        self.count += 1


BOOT = "0f4b6d0e-5d1c-4c53-9e0c-6f1d2a3b4c5d"
NEXT_BOOT = "7a1e2f3d-0000-4c53-9e0c-6f1d2a3b4c5d"


def make(tmp_path: Path, boot: str = BOOT) -> tuple[OffsetMark, Clock, Syncs]:
    clock, syncs = Clock(), Syncs()
    mark = OffsetMark(
        tmp_path / MARK_FILE,
        min_step=100,
        max_step=1600,
        clock=clock,
        boot=lambda: boot,
        _sync=syncs,
    )
    return mark, clock, syncs


def reopen(tmp_path: Path, boot: str = BOOT) -> OffsetMark:
    return OffsetMark(tmp_path / MARK_FILE, boot=lambda: boot)


def on_disk(tmp_path: Path) -> int:
    return int((tmp_path / MARK_FILE).read_text().split()[0])


def test_no_file_means_no_bound(tmp_path: Path) -> None:
    mark, _, _ = make(tmp_path)
    assert mark.saved == 0
    assert mark.resume_offset(1234) == 1234
    assert not (tmp_path / MARK_FILE).exists()


def test_cover_is_durable_before_the_offsets_are_used(tmp_path: Path) -> None:
    mark, _, syncs = make(tmp_path)
    mark.cover(10)
    assert syncs.count == 1
    assert on_disk(tmp_path) >= 10
    # Within the reservation: no disk I/O at all.
    reserved = mark.reserved
    mark.cover(reserved)
    assert syncs.count == 1
    mark.cover(reserved + 1)
    assert syncs.count == 2
    assert on_disk(tmp_path) > reserved


def hand_out(mark: OffsetMark, clock: Clock, count: int = 200) -> int:
    handed_out = 0
    for _ in range(count):
        handed_out += 37
        mark.cover(handed_out)
        clock.now += 0.01
    return handed_out


def test_a_host_crash_resumes_past_every_offset_handed_out(tmp_path: Path) -> None:
    mark, clock, _ = make(tmp_path)
    handed_out = hand_out(mark, clock)
    # No close: the host died, and the log lost its last 500 bytes with it.
    resumed = reopen(tmp_path, NEXT_BOOT).resume_offset(handed_out - 500)
    assert resumed >= handed_out
    # ... and never more than one step (the maximum) past it.
    assert resumed <= handed_out + 1600


def test_a_process_crash_resumes_exactly_at_the_logs_end(tmp_path: Path) -> None:
    """Same boot: the page cache kept what the log took, so its end is exact."""
    mark, clock, _ = make(tmp_path)
    handed_out = hand_out(mark, clock)
    assert reopen(tmp_path).resume_offset(handed_out) == handed_out


def test_an_incomplete_log_is_not_trusted_even_in_the_same_boot(
    tmp_path: Path,
) -> None:
    mark, clock, _ = make(tmp_path)
    handed_out = hand_out(mark, clock)
    mark.log_incomplete()  # the disk filled up: the log ends before the ring
    assert reopen(tmp_path).resume_offset(handed_out - 500) >= handed_out
    mark.log_complete()  # it takes bytes again, from past a gap
    assert reopen(tmp_path).resume_offset(handed_out) == handed_out


def test_clean_close_writes_the_exact_end(tmp_path: Path) -> None:
    mark, _, _ = make(tmp_path)
    mark.cover(500)
    mark.close(500)
    assert reopen(tmp_path).saved == 500
    assert reopen(tmp_path, NEXT_BOOT).resume_offset(500) == 500
    # Closed with the log incomplete: the end still holds, in any boot.
    mark, _, _ = make(tmp_path)
    mark.cover(700)
    mark.log_incomplete()
    mark.close(700)
    assert reopen(tmp_path).resume_offset(500) == 700


def test_step_grows_while_output_is_fast_and_shrinks_when_slow(
    tmp_path: Path,
) -> None:
    mark, clock, syncs = make(tmp_path)
    end = 0
    # Fast: each reservation used up at once; the step doubles to the cap.
    for _ in range(20):
        end = mark.reserved + 1
        mark.cover(end)
    assert mark.reserved - end == 1600
    fast_syncs = syncs.count
    # Slow: a reservation lasts longer than `quick`; the step halves back.
    for _ in range(10):
        clock.now += 10
        end = mark.reserved + 1
        mark.cover(end)
    assert mark.reserved - end == 100
    assert syncs.count == fast_syncs + 10


def test_an_unreadable_mark_is_no_bound(tmp_path: Path) -> None:
    (tmp_path / MARK_FILE).write_text("not a number\n")
    assert reopen(tmp_path).saved == 0
    assert reopen(tmp_path).resume_offset(99) == 99


def test_a_failed_sync_raises_and_is_not_taken_as_reserved(tmp_path: Path) -> None:
    mark, _, syncs = make(tmp_path)
    syncs.error = OSError(errno.EIO, "I/O error")
    with pytest.raises(OSError):
        mark.cover(10)
    assert mark.reserved == 0
    syncs.error = None
    mark.cover(10)
    assert mark.reserved >= 10


def test_rewritten_in_place_with_a_fixed_width(tmp_path: Path) -> None:
    """A rewrite needs no new disk block: it works on a full disk."""
    mark, _, _ = make(tmp_path)
    mark.cover(5)
    size = (tmp_path / MARK_FILE).stat().st_size
    mark.cover(10**12)
    mark.log_incomplete()
    assert (tmp_path / MARK_FILE).stat().st_size == size
    mark.close(10**12)
    assert (tmp_path / MARK_FILE).stat().st_size == size


# -- reservations made ahead, off the caller's thread -----------------------------


class Job:
    """A submitted write, run when the test says (or when its result is
    needed: ``result`` blocks as a real future's would, here by running it)."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args
        self.ran = False
        self.value = None
        self.error: BaseException | None = None

    def run(self) -> None:
        if not self.ran:
            self.ran = True
            try:
                self.value = self.fn(*self.args)
            except BaseException as e:  # noqa: BLE001 - kept for result()
                self.error = e

    def done(self) -> bool:
        return self.ran

    def result(self):
        self.run()
        if self.error is not None:
            raise self.error
        return self.value


class Ahead:
    """An executor that keeps what it is given until the test runs it."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def submit(self, fn, *args) -> Job:
        self.jobs.append(Job(fn, *args))
        return self.jobs[-1]


def make_ahead(tmp_path: Path) -> tuple[OffsetMark, Clock, Syncs, Ahead]:
    clock, syncs, ahead = Clock(), Syncs(), Ahead()
    mark = OffsetMark(
        tmp_path / MARK_FILE,
        min_step=100,
        max_step=1600,
        clock=clock,
        boot=lambda: BOOT,
        ahead=ahead,  # type: ignore[arg-type]
        _sync=syncs,
    )
    return mark, clock, syncs, ahead


def test_the_next_reservation_is_made_durable_on_the_ahead_executor(
    tmp_path: Path,
) -> None:
    """Half used: the next reservation is synced off the caller's thread, and
    output up to it then needs no sync of the caller's."""
    mark, clock, syncs, ahead = make_ahead(tmp_path)
    mark.cover(10)
    assert syncs.count == 1
    first = mark.reserved
    assert 10 < mark.refill_at < first
    mark.reserve_ahead()
    mark.reserve_ahead()  # one at a time
    assert len(ahead.jobs) == 1 and syncs.count == 1  # nothing in line
    assert mark.reserved == first  # not durable yet: not taken
    ahead.jobs[0].run()
    assert syncs.count == 2 and on_disk(tmp_path) > first
    clock.now += 10
    mark.cover(first + 1)  # takes the reservation made ahead
    assert syncs.count == 2
    assert mark.reserved == on_disk(tmp_path) > first + 1


def test_output_that_outruns_the_disk_waits_for_the_reservation_ahead(
    tmp_path: Path,
) -> None:
    """Past the reservation with the next one still in flight: cover waits
    for it rather than handing out offsets the disk does not know."""
    mark, clock, syncs, ahead = make_ahead(tmp_path)
    mark.cover(10)
    first = mark.reserved
    mark.reserve_ahead()
    assert not ahead.jobs[0].done()
    mark.cover(first + 5)
    assert ahead.jobs[0].done()
    assert on_disk(tmp_path) >= first + 5
    assert syncs.count == 2  # the ahead write sufficed: none in line


def test_a_failed_write_ahead_is_met_by_the_store_in_line(tmp_path: Path) -> None:
    """A write ahead that fails is not taken; cover's own store raises."""
    mark, clock, syncs, ahead = make_ahead(tmp_path)
    mark.cover(10)
    first = mark.reserved
    syncs.error = OSError(errno.EIO, "I/O error")
    mark.reserve_ahead()
    ahead.jobs[0].run()
    mark.reserve_ahead()  # settles the failure, tries again
    ahead.jobs[1].run()
    assert mark.reserved == first
    with pytest.raises(OSError):
        mark.cover(first + 1)
    assert mark.reserved == first


def test_close_lands_after_a_write_ahead(tmp_path: Path) -> None:
    """A clean stop waits for the write ahead, so the exact end is what stays."""
    mark, clock, syncs, ahead = make_ahead(tmp_path)
    mark.cover(10)
    mark.reserve_ahead()
    mark.close(60)
    assert ahead.jobs[0].done()
    assert on_disk(tmp_path) == 60
    assert reopen(tmp_path).resume_offset(60) == 60


def test_a_real_thread_ahead_keeps_every_offset_covered(tmp_path: Path) -> None:
    """With a real thread: whatever was handed out is always within the mark
    on disk, and a host crash resumes past it."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as ahead:
        mark = OffsetMark(
            tmp_path / MARK_FILE, min_step=100, max_step=1600, ahead=ahead
        )
        handed_out = 0
        for _ in range(300):
            end = handed_out + 37
            if end > mark.reserved:
                mark.cover(end)
            elif end > mark.refill_at:
                mark.reserve_ahead()
            handed_out = end
            assert on_disk(tmp_path) >= handed_out
    assert reopen(tmp_path, NEXT_BOOT).resume_offset(handed_out - 500) >= handed_out
