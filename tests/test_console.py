"""One guest console (source + ring + log + subscribers) and the registry.

Everything here runs without sockets: the guest is a `FakeSource` that
honours `ConsoleSource` (checked below against the protocol and the real
sources), time is a `Clock`, the ring and the console log are the real ones
on a temporary directory.  The end-to-end file repeats the important
behaviours against the real server, real ptys and a real qemu guest.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher

from vdsmconsole import testing
from vdsmconsole.core import offsetmark, registryfile
from vdsmconsole.core.console import (
    Console,
    ConsoleDown,
)
from vdsmconsole.core.consolelog import ConsoleLog
from vdsmconsole.core.interfaces import ConsoleSource, SourceSink, SourceState
from vdsmconsole.core.registry import Registry
from vdsmconsole.core.ring import BytesLike, OffsetBeyondEnd, Ring
from vdsmconsole.server.config import Config
from vdsmconsole.server.service import make_console_factory
from vdsmconsole.sources.factory import make_source
from vdsmconsole.sources.options import SourceOptions
from vdsmconsole.sources.pty import PtySource
from vdsmconsole.sources.sockets import TcpSource, UnixSource
from vdsmconsole.sources.spawn import SpawnSource
from vdsmconsole.spec import ConsoleSpec
from vdsmconsole.status import Code, StatusError
from vdsmconsole.testing import UNIX_SPEC, FakeSource, pattern

CONNECTED = SourceState.CONNECTED
RECONNECTING = SourceState.RECONNECTING
DOWN = SourceState.DOWN

UNIX = UNIX_SPEC
MiB = 1024 * 1024


# A typing Protocol assignment: mypy checks the console against the interface.
_console_is_a_sink: SourceSink = Console(
    "check", UNIX, FakeSource(), Ring(16), None, Clock()
)


class Follower:
    """A Subscriber that reads from its own cursor whenever told (or never)."""

    def __init__(self, console: Console, reads: bool = True, start: int = 0) -> None:
        self.console = console
        self.reads = reads
        self.cursor = start
        self.received = bytearray()
        self.told = 0
        self.closed = False
        self.why = ""
        self.down = False

    def dataAvailable(self) -> None:
        self.told += 1
        if self.reads:
            self.pull()

    def pull(self) -> None:
        while self.cursor < self.console.end:
            result = self.console.read(self.cursor, 64 * 1024)
            assert result.lost == 0, "a reader that keeps up loses nothing"
            self.received += result.data
            self.cursor = result.next_offset

    def consoleDown(self) -> None:
        self.down = True

    def consoleClosed(self, why: str) -> None:
        self.closed = True
        self.why = why


class Writer:
    """An InputWriter that records what the console told it."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def consoleDown(self) -> None:
        self.events.append("down")

    def consoleClosed(self, why: str) -> None:
        self.events.append(f"closed: {why}")


def make_console(
    tmp_path: Path | None,
    ring_bytes: int = 1024,
    log_file_bytes: int = 256,
    keep: int = 2,
    source: FakeSource | None = None,
    block_size: int | None = None,
    write: Any = os.write,
) -> Console:
    """A started console on a FakeSource with a real ring and (maybe) log."""
    log = None
    if tmp_path is not None:
        log = ConsoleLog(tmp_path / "log", log_file_bytes, keep, _write=write)
    return testing.make_console(
        source, spec=UNIX, ring_bytes=ring_bytes, log=log, block_size=block_size
    )


@pytest.fixture
def log_events() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)  # type: ignore[arg-type]
    yield events
    globalLogPublisher.removeObserver(events.append)  # type: ignore[arg-type]


# -- the fake honours the interface -------------------------------------------

PROTOCOL_METHODS = [
    name
    for name, value in vars(ConsoleSource).items()
    if callable(value) and not name.startswith("_")
]


@pytest.mark.parametrize(
    "cls", [FakeSource, PtySource, UnixSource, TcpSource, SpawnSource]
)
def test_fake_and_real_sources_have_the_protocol_methods(cls: type) -> None:
    """The fake and every real source take exactly ConsoleSource's parameters."""
    assert set(PROTOCOL_METHODS) == {
        "start",
        "write",
        "pauseReading",
        "resumeReading",
        "stop",
        "describe",
    }
    for name in PROTOCOL_METHODS:
        want = list(inspect.signature(getattr(ConsoleSource, name)).parameters)
        got = list(inspect.signature(getattr(cls, name)).parameters)
        assert got == want, f"{cls.__name__}.{name}"


def _unstarted_sources() -> list[tuple[str, Any]]:
    reactor = MemoryReactorClock()
    options = SourceOptions(spawn_commands={"cat": ["/bin/cat"]})
    specs = [
        ConsoleSpec(type="pty", path="/dev/pts/999999"),
        ConsoleSpec(type="unix", path="/nonexistent/s.sock"),
        ConsoleSpec(type="tcp", host="127.0.0.1", port=9),
        ConsoleSpec(type="spawn", command="cat"),
    ]
    made = [(s.type, make_source(s, options, reactor)) for s in specs]
    return [("fake", FakeSource()), *made]


UNSTARTED = _unstarted_sources()


@pytest.mark.parametrize(
    "source", [s for _, s in UNSTARTED], ids=[n for n, _ in UNSTARTED]
)
def test_unstarted_source_contract(source: Any) -> None:
    """Fake and real alike: down before start, refuse input, stop fires, twice."""
    assert source.state is DOWN
    assert source.write(b"x") is False
    assert "type" in source.describe()
    fired: list[object] = []
    source.stop().addBoth(fired.append)
    source.stop().addBoth(fired.append)
    assert fired == [None, None]
    assert source.state is DOWN


# -- bytes in, offsets out ------------------------------------------------------


def test_output_gets_consecutive_offsets_in_ring_and_log(tmp_path: Path) -> None:
    """Each byte read goes to the ring and the log at the next absolute offset."""
    console = make_console(tmp_path, ring_bytes=4096, log_file_bytes=100, keep=10)
    source = console.source
    assert isinstance(source, FakeSource)
    sent = b""
    for size in (1, 7, 99, 300, 2):
        chunk = pattern(len(sent), size)
        source.emit(chunk)
        sent += chunk
    assert console.end == len(sent) == console.bytes_in
    assert console.ring.read(0, 10_000).data == sent
    assert console.log is not None and console.log.read(0, 10_000).data == sent
    for offset in (0, 1, 8, 107, 300, len(sent)):
        result = console.read(offset, 10_000)
        assert (result.offset, result.lost) == (offset, 0)
        assert result.data == sent[offset:]
    with pytest.raises(OffsetBeyondEnd):
        console.read(len(sent) + 1, 1)


def test_empty_reads_and_writes_change_nothing(tmp_path: Path) -> None:
    """An empty read from the source appends nothing and tells nobody."""
    console = make_console(tmp_path)
    follower = Follower(console)
    console.subscribe(follower)
    console.sourceData(b"")
    assert console.end == 0 and follower.told == 0


def test_read_older_than_ring_is_served_from_the_log(tmp_path: Path) -> None:
    """Bytes the ring dropped still come back, from the log, at their offsets."""
    console = make_console(
        tmp_path, ring_bytes=64, log_file_bytes=100, keep=5, block_size=16
    )
    sent = pattern(0, 500)
    for i in range(0, 500, 25):
        console.sourceData(sent[i : i + 25])
    assert console.ring.start == 500 - 64
    assert console.first_offset == 0  # the log still holds everything
    collected = bytearray()
    offset = 0
    while offset < console.end:
        result = console.read(offset, 1000)
        assert (result.offset, result.lost) == (offset, 0)
        collected += result.data
        offset = result.next_offset
    assert collected == sent


def test_read_older_than_everything_reports_loss_exactly(tmp_path: Path) -> None:
    """A read before the first retained byte starts there and says how much is gone."""
    console = make_console(tmp_path, ring_bytes=64, log_file_bytes=50, keep=1)
    sent = pattern(0, 1000)
    for i in range(0, 1000, 10):
        console.sourceData(sent[i : i + 10])
    first = console.first_offset
    assert 0 < first < console.ring.start
    for asked in (0, 1, first - 1):
        result = console.read(asked, 10)
        assert (result.offset, result.lost) == (first, first - asked)
        assert result.data == sent[first : first + 10]


def test_ring_holding_more_than_the_log_loses_nothing_it_holds(tmp_path: Path) -> None:
    """When the ring retains more than the log, old reads start at the ring, exactly."""
    console = make_console(
        tmp_path, ring_bytes=300, log_file_bytes=50, keep=1, block_size=16
    )
    sent = pattern(0, 512)
    for i in range(0, 512, 8):
        console.sourceData(sent[i : i + 8])
    assert console.log is not None and console.log.start > console.ring.start > 0
    assert console.first_offset == console.ring.start
    result = console.read(0, 1000)
    assert (result.offset, result.lost) == (console.ring.start, console.ring.start)
    assert result.data == sent[console.ring.start :]


def test_first_offset_ignores_a_log_that_holds_nothing(tmp_path: Path) -> None:
    """A log that could never be written does not claim offset 0 is retained."""

    def full(fd: int, data: BytesLike) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    console = make_console(tmp_path, ring_bytes=32, write=full, block_size=8)
    console.sourceData(pattern(0, 100))
    assert console.first_offset == console.ring.start == 68
    result = console.read(0, 1000)
    assert (result.offset, result.lost) == (68, 68)
    assert console.stats()["firstOffset"] == 68


# Operations: append n bytes, read at a point between 0 and end, toggle the
# disk between full and writable.
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 120)),
        st.tuples(st.just("read"), st.integers(0, 10**6), st.integers(1, 400)),
        st.tuples(st.just("disk"), st.booleans()),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    ring_bytes=st.integers(1, 300),
    log_file_bytes=st.integers(1, 100),
    keep=st.integers(0, 3),
    with_log=st.booleans(),
    ops=OPS,
)
def test_any_read_is_exact_or_reports_its_loss(
    ring_bytes: int, log_file_bytes: int, keep: int, with_log: bool, ops: list[Any]
) -> None:
    """Property: any read returns the bytes appended there, or its exact loss."""
    disk_full = False
    had_failure = False

    def write(fd: int, data: BytesLike) -> int:
        if disk_full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    with tempfile.TemporaryDirectory() as tmp:
        console = make_console(
            Path(tmp) if with_log else None,
            ring_bytes=ring_bytes,
            log_file_bytes=log_file_bytes,
            keep=keep,
            write=write,
        )
        sent = bytearray()

        def check(asked: int, max_bytes: int) -> None:
            first = console.first_offset
            result = console.read(asked, max_bytes)
            assert result.offset == asked + result.lost
            assert 0 < len(result.data) <= max_bytes or asked == len(sent)
            assert result.data == sent[result.offset : result.next_offset]
            if asked >= console.ring.start:
                assert result.lost == 0  # the ring has it
            if result.lost:
                # Only bytes the ring no longer holds are ever reported lost.
                assert result.offset <= console.ring.start
                if not had_failure:
                    assert asked < first and result.offset == first
            elif asked < first:
                raise AssertionError(f"read at {asked} < first {first} lost nothing")

        for op in ops:
            if op[0] == "append":
                chunk = pattern(len(sent), op[1])
                console.sourceData(chunk)
                sent += chunk
            elif op[0] == "read":
                check(op[1] % (len(sent) + 1), op[2])
            else:
                disk_full = op[1]
                had_failure = had_failure or (disk_full and with_log)
        assert console.end == len(sent)
        # Following nextOffset from 0 gets every retained byte exactly once.
        offset, collected = 0, 0
        while offset < len(sent):
            result = console.read(offset, 97)
            assert result.data == sent[result.offset : result.next_offset]
            collected += len(result.data) + result.lost
            offset = result.next_offset
        assert collected == len(sent)
        console.stop()


# -- the log failing -------------------------------------------------------------


def test_unwritable_log_keeps_console_going_logged_once_per_episode(
    tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    """Disk full: the ring serves on, the stats say why, one error per episode."""
    full = [True]

    def write(fd: int, data: BytesLike) -> int:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    console = make_console(tmp_path, ring_bytes=4096, write=write)
    follower = Follower(console)
    console.subscribe(follower)

    def errors() -> int:
        return sum(
            1
            for e in log_events
            if e.get("log_level") == LogLevel.error
            and e.get("log_namespace") == "vdsmconsole.console"
        )

    for i in range(5):
        console.sourceData(b"lost-on-disk %d\n" % i)
    assert errors() == 1
    assert console.stats()["logError"] == "No space left on device"
    assert follower.received == console.read(0, 4096).data  # the ring serves
    full[0] = False
    console.sourceData(b"back\n")
    assert console.stats()["logError"] == ""
    full[0] = True
    console.sourceData(b"full again\n")
    assert errors() == 2
    assert console.stats()["logError"] == "No space left on device"
    assert follower.received.endswith(b"back\nfull again\n")


# -- slow subscribers ----------------------------------------------------------


def test_never_reading_subscriber_does_not_hold_back_50mb(tmp_path: Path) -> None:
    """50 MB pass a subscriber that never reads, unpaused, in bounded memory."""
    total = 50 * MiB
    ring_bytes = 1 * MiB
    console = make_console(
        tmp_path, ring_bytes=ring_bytes, log_file_bytes=4 * MiB, keep=1
    )
    source = console.source
    assert isinstance(source, FakeSource)
    stalled = Follower(console, reads=False)
    console.subscribe(stalled)
    chunk = bytes(range(256)) * 256  # 64 KiB, like one pty read
    fast_received = 0

    class Counting(Follower):
        def pull(self) -> None:
            nonlocal fast_received
            result = self.console.read(self.cursor, len(chunk))
            assert result.lost == 0 and result.data == chunk
            fast_received += len(result.data)
            self.cursor = result.next_offset

    console.subscribe(Counting(console))
    tracemalloc.start()
    try:
        for _ in range(total // len(chunk)):
            source.emit(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert console.end == total == console.bytes_in
    assert fast_received == total
    assert stalled.told == total // len(chunk) and stalled.cursor == 0
    assert source.pauses == 0
    assert console.ring.start == total - ring_bytes
    assert console.read(0, 1).lost > 0  # the stalled one will be told
    assert peak < ring_bytes + 4 * MiB, f"peak {peak} bytes"
    assert console.log is not None
    assert console.log.disk_bytes() <= 2 * 4 * MiB


# -- subscribers, writers, stop ------------------------------------------------


def test_subscribers_follow_at_their_own_pace(tmp_path: Path) -> None:
    """Each subscriber is told of new bytes and reads from its own cursor."""
    console = make_console(tmp_path)
    eager = Follower(console)
    lazy = Follower(console, reads=False)
    console.subscribe(eager)
    console.subscribe(lazy)
    console.sourceData(b"hello ")
    console.sourceData(b"world")
    assert eager.received == b"hello world"
    assert lazy.told == 2 and lazy.received == b""
    lazy.pull()
    assert lazy.received == b"hello world"
    assert console.stats()["readers"] == 2
    console.unsubscribe(lazy)
    console.sourceData(b"!")
    assert lazy.told == 2 and eager.received == b"hello world!"


def test_input_reaches_the_guest_and_backpressure_reaches_writers(
    tmp_path: Path,
) -> None:
    """Input goes whole to the source; the guest's pause and resume reach writers."""
    console = make_console(tmp_path)
    source = console.source
    assert isinstance(source, FakeSource)
    early = Writer()
    console.add_writer(early)
    assert console.write_all(b"ls\n") == 3
    assert source.written == [b"ls\n"]
    source.input_full()
    assert early.events == ["pause"]
    late = Writer()
    console.add_writer(late)
    assert late.events == ["pause"]  # paused from the start
    source.input_drained()
    assert early.events == ["pause", "resume"] and late.events == ["pause", "resume"]
    assert console.stats()["bytesOut"] == 3
    assert console.stats()["writers"] == 2


def test_write_while_not_connected_is_refused(tmp_path: Path) -> None:
    """Input for a reconnecting guest is refused whole: ConsoleDown, code 100."""
    console = make_console(tmp_path)
    source = console.source
    assert isinstance(source, FakeSource)
    source.set_state(RECONNECTING, "connection lost")
    assert console.write(b"x") is False
    with pytest.raises(ConsoleDown) as info:
        console.write_all(b"x")
    assert info.value.code == Code.CONSOLE_DOWN
    assert console.bytes_out == 0 and source.written == []


def test_reconnect_resumes_writers_that_found_no_guest(tmp_path: Path) -> None:
    """A writer that found the guest gone is resumed when the source is back."""
    console = make_console(tmp_path)
    source = console.source
    assert isinstance(source, FakeSource)
    writer = Writer()
    console.add_writer(writer)
    source.set_state(RECONNECTING, "connection lost")
    assert console.state == "reconnecting" and console.reason == "connection lost"
    source.set_state(CONNECTED, "connected again")
    assert writer.events[-1] == "resume"
    assert console.write(b"x")


def test_source_down_ends_writers_and_keeps_serving_output(tmp_path: Path) -> None:
    """A guest gone for good ends writers, tells followers; its output stays."""
    console = make_console(tmp_path)
    source = console.source
    assert isinstance(source, FakeSource)
    follower = Follower(console, reads=False)
    console.subscribe(follower)
    writer = Writer()
    console.add_writer(writer)
    source.emit(b"last words\n")
    source.set_state(DOWN, "qemu went away")
    assert writer.events == ["down"]
    # Followers are told, and end once they have what is retained.
    assert follower.down and not follower.closed
    assert console.read(0, 100).data == b"last words\n"
    assert console.stats()["state"] == "down"


def test_stop_ends_streams_then_closes_log_once_source_stopped(tmp_path: Path) -> None:
    """stop() ends followers and writers at once; the log closes after the source."""
    clock = Clock()
    console = make_console(tmp_path, source=FakeSource(clock, stop_delay=5))
    follower = Follower(console)
    writer = Writer()
    console.subscribe(follower)
    console.add_writer(writer)
    console.sourceData(b"bye")
    stopped = console.stop()
    assert follower.why == "destroyed" and writer.events == ["closed: destroyed"]
    assert console.stats()["readers"] == 0 and console.stats()["writers"] == 0
    assert console.write(b"x") is False
    assert not stopped.called
    assert console.log is not None
    assert console.log.read(0, 10).data == b"bye"  # still open
    clock.advance(5)
    assert stopped.called
    with pytest.raises(ValueError, match="closed"):
        console.log.read(0, 10)


def test_stats_and_full_status_say_what_is_there(tmp_path: Path) -> None:
    """getVmStats and list(fullStatus) fields come from the console's counters."""
    console = make_console(tmp_path, ring_bytes=8, log_file_bytes=8, keep=1)
    console.sourceData(b"0123456789abcdefghij")
    console.write_all(b"in")
    stats = console.stats()
    assert stats["state"] == "connected"
    assert (stats["firstOffset"], stats["nextOffset"]) == (8, 20)
    assert stats["ringFirstOffset"] == 12
    assert (stats["bytesIn"], stats["bytesOut"]) == (20, 2)
    assert stats["logBytes"] == 12
    assert None not in stats.values()
    full = console.full_status()
    assert full["console"] == UNIX.to_wire()
    assert full["source"] == {"type": "fake", "state": "connected"}
    assert (full["firstOffset"], full["nextOffset"]) == (8, 20)
    assert console.summary() == {"vmId": "vm1", "status": "connected"}


# -- the registry ------------------------------------------------------------


class Factory:
    """Builds consoles on fake sources, like make_console_factory does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: dict[str, Console] = {}

    def __call__(self, vm_id: str, spec: ConsoleSpec, fresh: bool = False) -> Console:
        log = ConsoleLog(self.root / "consoles" / vm_id, 1024, 1)
        console = Console(
            vm_id, spec, FakeSource(), Ring(1024, start=log.end), log, Clock()
        )
        self.made[vm_id] = console
        return console


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry.json", Factory(tmp_path), {"demo": ["x"]})


def on_disk(registry_path: Path) -> dict[str, Any]:
    """The registry the files describe: the snapshot and the journal."""
    state = registryfile.read(registry_path)
    assert state is not None and not state.problems
    return state.as_json()


def test_create_starts_and_persists(registry: Registry, tmp_path: Path) -> None:
    """create starts the console and journals it, no temp file left."""
    console = registry.create("vm-1", UNIX)
    assert console.state == "connected"
    assert registry.get("vm-1") is console and registry.ids() == ["vm-1"]
    assert on_disk(tmp_path / "registry.json") == {
        "version": 1,
        "consoles": {"vm-1": UNIX.to_wire()},
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "consoles",
        "registry.journal",
    ]


def test_duplicate_create_is_code_4_and_changes_nothing(
    registry: Registry, tmp_path: Path
) -> None:
    """A second create of a vmId is EXIST; the first console and the file stay."""
    first = registry.create("vm-1", UNIX)
    before = (tmp_path / "registry.journal").read_bytes()
    other = ConsoleSpec(type="tcp", host="127.0.0.1", port=4555)
    with pytest.raises(StatusError) as info:
        registry.create("vm-1", other)
    assert info.value.code == Code.EXIST
    assert registry.get("vm-1") is first and first.spec == UNIX
    assert (tmp_path / "registry.journal").read_bytes() == before
    assert list(registry._factory.made) == ["vm-1"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("vm_id", ["../etc", "", "a" * 65, "a\x00b", "-x", "a/b"])
def test_create_refuses_a_malformed_vm_id_before_any_path(
    registry: Registry, tmp_path: Path, vm_id: str
) -> None:
    """The registry itself refuses a bad vmId (MissParam) before making a file."""
    with pytest.raises(StatusError) as info:
        registry.create(vm_id, UNIX)
    assert info.value.code == Code.MISS_PARAM
    assert len(registry) == 0
    assert list(tmp_path.iterdir()) == []


def test_unknown_vm_id_is_code_1(registry: Registry) -> None:
    """get and destroy of an unknown vmId are noVM."""
    for call in (registry.get, registry.destroy):
        with pytest.raises(StatusError) as info:
            call("nobody")
        assert info.value.code == Code.NO_VM


def test_destroy_stops_and_forgets(registry: Registry, tmp_path: Path) -> None:
    """destroy stops the console's source and removes it from the file."""
    console = registry.create("vm-1", UNIX)
    registry.create("vm-2", UNIX)
    fired: list[object] = []
    registry.destroy("vm-1").addBoth(fired.append)
    assert fired == [None]
    assert isinstance(console.source, FakeSource) and console.source.stopping
    assert console.closed
    assert registry.ids() == ["vm-2"]
    assert list(on_disk(tmp_path / "registry.json")["consoles"]) == ["vm-2"]


def test_registry_that_cannot_be_saved_changes_nothing(tmp_path: Path) -> None:
    """If the file cannot be written, create and destroy fail (16) and undo."""
    factory = Factory(tmp_path)
    registry = Registry(tmp_path / "state" / "registry.json", factory)
    (tmp_path / "state").mkdir()
    registry.create("vm-1", UNIX)
    (tmp_path / "state" / "registry.journal").unlink()
    (tmp_path / "state").rmdir()  # now no file can be written there
    with pytest.raises(StatusError) as info:
        registry.create("vm-2", UNIX)
    assert info.value.code == Code.UNEXPECTED
    assert registry.ids() == ["vm-1"]
    if "vm-2" in factory.made:  # built, but never started
        assert factory.made["vm-2"].source.sink is None  # type: ignore[attr-defined]
    with pytest.raises(StatusError) as info:
        registry.destroy("vm-1")
    assert info.value.code == Code.UNEXPECTED
    assert registry.ids() == ["vm-1"]
    assert not factory.made["vm-1"].closed


def test_load_restores_every_console_and_skips_bad_entries(
    tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    """load() restarts what the file names; bad entries are logged and skipped."""
    path = tmp_path / "registry.json"
    first = Registry(path, Factory(tmp_path), {"demo": ["x"]})
    first.create("vm-1", UNIX)
    first.create("vm-2", ConsoleSpec(type="spawn", command="demo"))
    data = on_disk(path)
    data["consoles"]["../evil"] = UNIX.to_wire()
    data["consoles"]["vm-3"] = {"type": "pty", "path": "relative"}
    path.write_text(json.dumps(data))
    (tmp_path / "registry.journal").unlink()
    # The configuration no longer names "demo": vm-2 cannot come back.
    factory = Factory(tmp_path)
    second = Registry(path, factory, {})
    second.load()
    assert second.ids() == ["vm-1"]
    assert second.get("vm-1").state == "connected"
    assert not (tmp_path / "evil").exists()
    assert sorted(factory.made) == ["vm-1"]
    skipped = [
        e for e in log_events if e.get("log_namespace") == "vdsmconsole.registry"
    ]
    assert sum(e.get("log_level") == LogLevel.error for e in skipped) == 3


def test_restart_continues_offsets_and_serves_old_bytes(tmp_path: Path) -> None:
    """After a restart offsets continue from the log, and old ones read from it."""
    config = Config(
        state_dir=tmp_path, ring_bytes=64, log_file_bytes=100, log_keep_files=5
    )
    reactor = MemoryReactorClock()  # a unix source that never connects
    path = tmp_path / "registry.json"
    registry = Registry(path, make_console_factory(config, reactor))
    console = registry.create("vm-1", UNIX)
    assert console.state == "connecting"
    before = pattern(0, 300)
    console.sourceData(before)
    stopped: list[object] = []
    registry.stop_all().addBoth(stopped.append)
    assert stopped and console.closed

    again = Registry(path, make_console_factory(config, reactor))
    again.load()
    restored = again.get("vm-1")
    assert restored is not console and restored.spec == UNIX
    assert (restored.ring.start, restored.end, restored.first_offset) == (300, 300, 0)
    assert restored.read(0, 1000).data == before
    restored.sourceData(b"after")
    offset, collected = 295, b""
    while offset < restored.end:  # the log up to the ring, then the ring
        result = restored.read(offset, 1000)
        assert result.lost == 0
        collected += result.data
        offset = result.next_offset
    assert collected == before[295:] + b"after"
    assert (tmp_path / "consoles" / "vm-1").is_dir()
    again.stop_all()


def read_all(console: Console, offset: int) -> tuple[int, bytes, int]:
    """(first offset, every byte to the end, bytes lost) as a client reads them."""
    first, out, lost = None, b"", 0
    while offset < console.end:
        result = console.read(offset, 1000)
        first = result.offset if first is None else first
        out, lost = out + result.data, lost + result.lost
        offset = result.next_offset
    return (offset if first is None else first), out, lost


def registered(
    tmp_path: Path, **settings: Any
) -> tuple[Registry, Console, Callable[[], Console]]:
    """A registry with console vm-1 (a unix source that never connects), and
    how to start the server again on the same state directory."""
    config = Config(state_dir=tmp_path, ring_bytes=64, log_file_bytes=100, **settings)
    reactor = MemoryReactorClock()
    path = tmp_path / "registry.json"
    registry = Registry(path, make_console_factory(config, reactor))
    return (
        registry,
        registry.create("vm-1", UNIX),
        lambda: restart(config, path, reactor),
    )


def restart(config: Config, path: Path, reactor: Any) -> Console:
    again = Registry(path, make_console_factory(config, reactor))
    again.load()
    console = again.get("vm-1")
    assert console is not None
    return console


def test_offsets_are_never_reused_after_a_crash_cut_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host crash lost the log's tail: the restart carries on past every offset
    handed out before it, and a read there says what was lost."""
    _, console, start_again = registered(tmp_path, log_keep_files=5)
    console.sourceData(pattern(0, 250))
    handed_out = console.end
    # The host crashed: no stop, the page cache lost the last 50 bytes of the
    # log, and the restart is in the host's next boot.
    last = max((tmp_path / "consoles" / "vm-1").glob("*.log"))
    os.truncate(last, last.stat().st_size - 50)
    next_boot = tmp_path / "boot_id"
    next_boot.write_text("7a1e2f3d-0000-4c53-9e0c-6f1d2a3b4c5d\n")
    monkeypatch.setattr(offsetmark, "_BOOT_ID", next_boot)

    restored = start_again()
    assert restored.end >= handed_out
    restored.sourceData(b"new text")
    # Whoever held offset 200 is told the bytes from there are gone, and never
    # given the new text as if it had been at 200.
    result = restored.read(200, 1000)
    assert result.lost == restored.end - len(b"new text") - 200
    assert result.data == b"new text"
    assert restored.read(0, 200).data == pattern(0, 200)


def test_a_clean_restart_leaves_no_gap(tmp_path: Path) -> None:
    registry, console, start_again = registered(tmp_path)
    console.sourceData(pattern(0, 250))
    registry.stop_all()
    restored = start_again()
    assert restored.end == 250
    restored.sourceData(b"more")
    assert read_all(restored, 240) == (240, pattern(240, 10) + b"more", 0)


def test_offsets_only_in_memory_are_not_reused_after_a_restart(
    tmp_path: Path,
) -> None:
    """The log could not be written (disk full) for a while: after a restart the
    offsets the ring handed out meanwhile are not handed out again."""
    registry, console, start_again = registered(tmp_path)
    console.sourceData(pattern(0, 50))
    assert console.log is not None

    def disk_full(fd: int, data: BytesLike) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    console.log._write = disk_full
    console.sourceData(pattern(50, 40))
    assert console.stats()["logError"]
    assert console.end == 90
    registry.stop_all()
    restored = start_again()
    assert restored.end == 90
    assert restored.read(0, 1000).data == pattern(0, 50)
    restored.sourceData(b"after")
    assert read_all(restored, 50) == (90, b"after", 40)


def test_a_server_crash_resumes_exactly(tmp_path: Path) -> None:
    """The process died (same boot): nothing was lost, so no gap, no loss."""
    _, console, start_again = registered(tmp_path)
    console.sourceData(pattern(0, 250))
    restored = start_again()  # no stop
    assert restored.end == 250
    restored.sourceData(b"more")
    assert read_all(restored, 200) == (200, pattern(200, 50) + b"more", 0)
