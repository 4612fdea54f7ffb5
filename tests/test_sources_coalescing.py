"""How a pty source batches reads: fewer, larger pieces for the console.

A real pty, driven by hand on a MemoryReactorClock: the test calls the
reader's ``doRead`` when the reactor would, and advances time itself, so
what is held, for how long, and what comes out in one piece is exact.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest
from twisted.internet.testing import MemoryReactorClock

from tests.serverproc import wait_for
from vdsmconsole.sources.options import (
    COALESCE_DELAY,
    FULL_READ,
    MAX_COALESCE_DELAY,
    SourceOptions,
)
from vdsmconsole.sources.pty import PtySource
from vdsmconsole.testing import PtyGuest, RecordingSink

HOLD = 0.003
# What one read of a pty gives at most (its line discipline's buffer).
PTY_READ = 4095
BOUND = MAX_COALESCE_DELAY
WINDOW = 1.0


@pytest.fixture
def guest() -> Generator[PtyGuest, None, None]:
    g = PtyGuest(MemoryReactorClock())
    yield g
    g.close()


class Attached:
    """A PtySource on a clock, with the pieces a test needs at hand."""

    def __init__(self, guest: PtyGuest, **options: float) -> None:
        self.guest = guest
        self.clock = MemoryReactorClock()
        self.sink = RecordingSink()
        self.source = PtySource(
            guest.path,
            self.clock,
            SourceOptions(**options),  # type: ignore[arg-type]
        )
        self.source.start(self.sink)
        self.reader = self.source._reader
        assert self.reader is not None

    def output(self, data: bytes) -> None:
        """The guest writes; wait until the kernel has it for the source."""
        before = self.guest.pending_for_source()
        self.guest.write(data)
        self.wait_pending(before + len(data))

    def wait_pending(self, count: int = 1) -> None:
        """Until at least ``count`` bytes wait in the pty for the source."""
        wait_for(
            lambda: self.guest.pending_for_source() >= count, 5, "the pty to hold them"
        )

    def poll(self) -> None:
        """What the reactor does when the pty is readable."""
        assert self.reading, "the reactor would not read now"
        assert self.reader is not None
        self.reader.doRead()

    @property
    def reading(self) -> bool:
        return self.reader in self.clock.getReaders()

    @property
    def pieces(self) -> int:
        return self.sink.calls - len(self.sink.states)


def test_a_small_read_goes_out_at_once_then_the_next_bytes_gather(
    guest: PtyGuest,
) -> None:
    """The first bytes pass at once; what follows is read as one after the hold."""
    a = Attached(guest, coalesce_delay=HOLD)
    a.output(b"a")
    a.poll()
    assert a.sink.data == b"a"
    assert not a.reading  # held: the kernel gathers what comes next
    a.output(b"b")
    a.output(b"c")
    a.clock.advance(HOLD * 0.9)
    assert a.sink.data == b"a"
    pieces = a.pieces
    a.clock.advance(HOLD * 0.2)
    assert a.sink.data == b"abc"
    assert a.pieces == pieces + 1  # one read, one piece
    assert not a.reading  # that read was small too: held again
    a.clock.advance(HOLD)
    assert a.reading  # nothing had gathered: wait for the pty again
    a.source.stop()


def test_input_ends_the_hold_and_its_answer_is_not_held(guest: PtyGuest) -> None:
    """A keystroke ends a hold; the echo that answers it does not start one."""
    a = Attached(guest, coalesce_delay=HOLD)
    a.output(b"boot")
    a.poll()
    assert not a.reading
    assert a.source.write(b"x")
    assert guest.read_available() == b"x"  # written at once, not queued
    assert a.reader not in a.clock.getWriters()
    assert a.reading
    assert a.clock.getDelayedCalls() == []
    a.output(b"x")
    a.poll()
    assert a.sink.data == b"bootx"
    assert a.reading  # the echo: keep reading
    a.source.stop()


def test_a_busy_guest_is_read_until_dry_and_passed_on_as_one(
    guest: PtyGuest,
) -> None:
    """Several pty-sized reads in one poll become one piece, and hold nothing."""
    a = Attached(guest, coalesce_delay=HOLD)
    written = b""
    try:
        while True:  # fill the pty: more than one read's worth (4 KiB) queues
            chunk = bytes(range(256)) * 16
            written += chunk[: os.write(guest.master, chunk)]
    except BlockingIOError:
        pass
    assert len(written) > 2 * FULL_READ
    # The line discipline hands the slave at most one read's worth at a
    # time and is refilled by a kernel worker: on a loaded machine a read
    # can find it not yet refilled, which ends the poll early.  So: the
    # first poll starts with a full line discipline, and polls go on until
    # everything arrived; batching shows as fewer pieces than reads.
    a.wait_pending(PTY_READ)
    reads = -(-len(written) // PTY_READ)
    a.poll()
    assert len(a.sink.data) >= PTY_READ
    for _ in range(reads):
        assert a.reading and a.clock.getDelayedCalls() == []  # no hold
        if len(a.sink.data) == len(written):
            break
        a.wait_pending()
        a.poll()
    assert bytes(a.sink.data) == written
    assert a.pieces < reads
    a.source.stop()


def test_a_busy_guest_caught_up_with_is_not_held(guest: PtyGuest) -> None:
    """A short read right behind a long one is a busy guest: read on at once."""
    a = Attached(guest, coalesce_delay=HOLD)
    assert os.write(guest.master, bytes(6000)) == 6000  # more than one read's
    a.wait_pending()
    a.poll()  # a long read: nothing to gather
    assert len(a.sink.data) == 6000
    assert a.reading
    a.output(bytes(1000))
    a.clock.advance(0.0001)
    a.poll()  # 1000 bytes 0.1 ms later: 10 MB/s, far too fast to hold back
    assert len(a.sink.data) == 7000
    assert a.reading and a.clock.getDelayedCalls() == []
    a.source.stop()


def test_no_coalescing_when_the_delay_is_zero(guest: PtyGuest) -> None:
    """coalesce_delay=0 reads every time the pty is readable."""
    a = Attached(guest, coalesce_delay=0)
    a.output(b"a")
    a.poll()
    assert a.reading and a.clock.getDelayedCalls() == []
    a.source.stop()


def test_a_pause_outlasts_the_hold(guest: PtyGuest) -> None:
    """pauseReading during a hold keeps reading off after it; resume reads."""
    a = Attached(guest, coalesce_delay=HOLD)
    a.output(b"a")
    a.poll()
    a.source.pauseReading()
    a.output(b"b")
    a.clock.advance(HOLD * 2)
    assert a.sink.data == b"a" and not a.reading
    a.source.resumeReading()
    assert a.reading
    a.poll()
    assert a.sink.data == b"ab"
    a.source.stop()


def test_stop_during_a_hold_leaves_nothing_scheduled(guest: PtyGuest) -> None:
    """Stopping a source that holds its reading cancels the hold."""
    a = Attached(guest, coalesce_delay=HOLD)
    a.output(b"a")
    a.poll()
    assert a.clock.getDelayedCalls()
    assert a.source.stop().called
    assert a.clock.getDelayedCalls() == []
    assert not a.reading


def test_options_reject_a_bad_delay() -> None:
    """A negative or absurd coalescing delay is refused early."""
    with pytest.raises(ValueError, match="coalesce_delay"):
        SourceOptions(coalesce_delay=-1)
    with pytest.raises(ValueError, match="coalesce_delay"):
        SourceOptions(coalesce_delay=5)
    with pytest.raises(ValueError, match="small_read"):
        SourceOptions(small_read=-1)
    with pytest.raises(ValueError, match="coalesce_delay"):
        SourceOptions(coalesce_delay=MAX_COALESCE_DELAY * 1.01)
    with pytest.raises(ValueError, match="interactive_window"):
        SourceOptions(interactive_window=-1)
    with pytest.raises(ValueError, match="interactive_window"):
        SourceOptions(interactive_window=float("nan"))
    assert SourceOptions(coalesce_delay=MAX_COALESCE_DELAY).coalesce_delay == BOUND


def test_the_default_hold_is_within_the_bound() -> None:
    """The default hold is a real hold, and never above 25 ms."""
    assert 0 < COALESCE_DELAY <= MAX_COALESCE_DELAY == 0.025
    assert SourceOptions().coalesce_delay == COALESCE_DELAY


# -- interactive-aware: held while nobody types, never while someone does -------


def test_idle_chatter_is_held_up_to_the_bound_and_not_longer(
    guest: PtyGuest,
) -> None:
    """With nobody typing, chatter waits the whole hold, then goes out at once."""
    a = Attached(guest, coalesce_delay=BOUND, interactive_window=WINDOW)
    a.output(b"tick0")
    a.poll()
    assert a.sink.data == b"tick0"  # after a quiet spell: at once
    for i in range(1, 4):
        assert not a.reading
        a.output(b"tick%d" % i)
        a.clock.advance(BOUND * 0.99)
        assert not a.sink.data.endswith(b"tick%d" % i)  # still held
        a.clock.advance(BOUND * 0.02)
        assert a.sink.data.endswith(b"tick%d" % i)  # the bound: out, no later
    a.clock.advance(BOUND * 1.01)
    assert a.reading and a.clock.getDelayedCalls() == []
    a.source.stop()


def test_an_echo_goes_out_at_once_and_nothing_is_held_through_the_window(
    guest: PtyGuest,
) -> None:
    """After a key, the echo and all chatter are read unheld until the window ends."""
    a = Attached(guest, coalesce_delay=BOUND, interactive_window=WINDOW)
    a.output(b"chatter")
    a.poll()
    assert not a.reading  # idle: held
    assert a.source.write(b"k")
    assert a.reading and a.clock.getDelayedCalls() == []  # the key ends the hold
    assert guest.read_available() == b"k"
    a.output(b"chatter")  # what came before the echo...
    a.poll()
    assert a.reading  # ...is not held, so the echo is not held behind it
    a.output(b"k")
    a.poll()
    assert a.sink.data == b"chatterchatterk"
    steps = 9
    for _ in range(steps):  # chatter through the window: every read at once
        a.clock.advance(WINDOW / (steps + 1))
        a.output(b"x")
        a.poll()
        assert a.reading and a.clock.getDelayedCalls() == []
    assert a.sink.data.endswith(b"x" * steps)
    a.source.stop()


def test_once_the_window_lapses_chatter_is_held_again(guest: PtyGuest) -> None:
    """Interactive to idle: the first small read after the window starts a hold."""
    a = Attached(guest, coalesce_delay=BOUND, interactive_window=WINDOW)
    assert a.source.write(b"k")
    a.output(b"k")
    a.poll()
    a.clock.advance(WINDOW * 0.5)
    a.output(b"x")
    a.poll()
    assert a.reading  # within the window
    a.clock.advance(WINDOW * 0.5)
    a.output(b"y")
    a.poll()
    assert not a.reading  # the window is over: idle again, held
    a.output(b"z")
    a.clock.advance(BOUND * 1.01)
    assert a.sink.data == b"kxyz"
    a.source.stop()


def test_a_key_during_idle_chatter_switches_to_interactive_at_once(
    guest: PtyGuest,
) -> None:
    """Idle to interactive: a key during a hold ends it; its echo is unheld."""
    a = Attached(guest, coalesce_delay=BOUND, interactive_window=WINDOW)
    a.output(b"a")
    a.poll()
    a.output(b"b")  # gathered during the hold
    a.clock.advance(BOUND * 0.1)
    assert a.sink.data == b"a" and not a.reading
    assert a.source.write(b"k")
    assert a.reading and a.clock.getDelayedCalls() == []
    a.poll()  # what gathered, read at once
    assert a.sink.data == b"ab"
    assert a.reading  # and not held after it: the echo may be next
    a.clock.advance(0.002)  # the guest is slow to answer
    a.output(b"k")
    a.poll()
    assert a.sink.data == b"abk" and a.reading
    a.source.stop()


def test_a_burst_is_never_held_even_with_the_longest_hold(guest: PtyGuest) -> None:
    """A guest writing faster than small_read per hold is read on at once."""
    a = Attached(guest, coalesce_delay=BOUND, interactive_window=WINDOW)
    assert os.write(guest.master, bytes(6000)) == 6000
    a.wait_pending()
    a.poll()
    assert a.reading
    for _ in range(5):  # 1000 bytes a millisecond: 1 MB/s, far above 160 KB/s
        a.output(bytes(1000))
        a.clock.advance(0.001)
        a.poll()
        assert a.reading and a.clock.getDelayedCalls() == []
    assert len(a.sink.data) == 11000
    a.source.stop()


def test_no_window_still_leaves_the_answer_to_input_unheld(guest: PtyGuest) -> None:
    """interactive_window=0: the read after input is unheld, the next one held."""
    a = Attached(guest, coalesce_delay=BOUND, interactive_window=0)
    assert a.source.write(b"k")
    a.output(b"k")
    a.poll()
    assert a.reading
    a.clock.advance(0.01)  # a slow guest: 1 byte in 10 ms
    a.output(b"x")
    a.poll()
    assert not a.reading
    a.source.stop()
