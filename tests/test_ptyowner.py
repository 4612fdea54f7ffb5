"""Who holds a pty's master, and why a restored pty console trusts only that.

A ``pty`` console records the process holding its pty's master (pid and start
time) when it is first attached.  After a restart the registry brings the
console back, and its path is reopened only if that same process still holds
the master of that pty number: the kernel hands ``/dev/pts/N`` to the next pty
at once, so the path alone may now be another guest's console.

The /proc scan runs against a fake /proc tree and against the real one with a
real pty; the restore runs the real registry, console and source on the real
reactor, with the guest (the master's holder) in a child process so that it
can go away while the test process opens the recycled pty.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import termios
import warnings
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from tests.fakeproc import fake_process
from vdsmconsole.core import ptyowner, registryfile
from vdsmconsole.core.console import Console, ConsoleDown
from vdsmconsole.core.interfaces import SourceState
from vdsmconsole.core.ptyowner import (
    PtyOwner,
    find_pty_owner,
    master_indexes,
    owner_holds,
    process_start,
    pts_index,
)
from vdsmconsole.core.registry import Registry
from vdsmconsole.server.config import Config
from vdsmconsole.server.policy import SourcePolicy
from vdsmconsole.server.service import make_console_factory
from vdsmconsole.sources.pty import PtySource
from vdsmconsole.spec import ConsoleSpec, NotAllowed
from vdsmconsole.testing import PtyGuest, RecordingSink, queued, wait_until

Gen = Generator[Deferred[Any], Any, None]
QEMU = "/usr/bin/qemu-system-x86_64"

# -- a fake /proc ------------------------------------------------------------


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """A fake /proc: qemu 100 holds pts 5, qemu 200 pts 7 (container ptmx)."""
    root = tmp_path / "proc"
    fake_process(root, 100, 5000, {0: ("/dev/null", None), 9: ("/dev/ptmx", 5)})
    fake_process(
        root,
        200,
        6000,
        {3: ("/dev/pts/ptmx", 7), 4: ("/dev/pts/7", None)},
        comm="qemu (vm) 2)",
    )
    # A regular file with a tty-index-looking fdinfo is not a master.
    fake_process(root, 300, 7000, {5: ("/var/log/x", 5)})
    (root / "self").mkdir()
    (root / "400").mkdir()  # a process we may not look into
    return root


def test_fake_proc_finds_the_holder_of_each_index(proc: Path) -> None:
    """The scan names the pid and start time holding each pts number's master."""
    assert find_pty_owner(5, proc) == PtyOwner(100, 5000)
    assert find_pty_owner(7, proc) == PtyOwner(200, 6000)
    assert find_pty_owner(6, proc) is None
    assert master_indexes(300, proc) == set()
    assert master_indexes(400, proc) == set()


def test_start_time_is_field_22_even_after_an_odd_command_name(proc: Path) -> None:
    """A command name with spaces and parentheses does not shift field 22."""
    assert process_start(200, proc) == 6000
    assert process_start(400, proc) is None
    assert process_start(999, proc) is None


def test_several_holders_the_first_started_is_the_owner(proc: Path) -> None:
    """A master inherited across fork: the process started first is the owner."""
    fake_process(proc, 50, 5500, {1: ("/dev/ptmx", 5)})
    assert find_pty_owner(5, proc) == PtyOwner(100, 5000)


def test_owner_holds_only_for_the_same_process_and_index(proc: Path) -> None:
    """Same pid and start holding the index: yes; another start, index or pid: no."""
    assert owner_holds(PtyOwner(100, 5000), 5, proc)
    assert not owner_holds(PtyOwner(100, 4999), 5, proc)  # the pid was reused
    assert not owner_holds(PtyOwner(100, 5000), 7, proc)
    assert not owner_holds(PtyOwner(999, 5000), 5, proc)  # gone


def test_a_remembered_holder_is_checked_by_its_descriptor(proc: Path) -> None:
    """After one scan, a burst of creates checks each holder by the one
    descriptor the scan found, and scans again when that no longer holds."""
    assert find_pty_owner(5, proc) == PtyOwner(100, 5000)  # scans
    assert find_pty_owner(5, proc) == PtyOwner(100, 5000)  # checks fd 9
    # The master moved to another descriptor (closed and dup'ed): the check
    # of fd 9 fails, a new scan finds it by fd 11.
    (proc / "100" / "fd" / "9").unlink()
    os.symlink("/dev/ptmx", proc / "100" / "fd" / "11")
    (proc / "100" / "fdinfo" / "11").write_text("tty-index:\t5\n")
    assert find_pty_owner(5, proc) == PtyOwner(100, 5000)
    # pts 5 went to another process: never the remembered one.
    (proc / "100" / "fd" / "11").unlink()
    fake_process(proc, 600, 9000, {3: ("/dev/ptmx", 5)})
    assert find_pty_owner(5, proc) == PtyOwner(600, 9000)


def test_a_burst_checks_a_restored_owner_by_one_descriptor(
    proc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guest holding many masters: after the scan, checking that it still
    holds one (the source's check at attach) reads one descriptor, not all."""
    fake_process(proc, 700, 7700, {10 + i: ("/dev/ptmx", 20 + i) for i in range(50)})
    guest = PtyOwner(700, 7700)
    assert find_pty_owner(20, proc) == guest  # the scan of a burst's first create
    read: list[str] = []
    real = ptyowner._master_index

    def counted(pid: int, fd: str, root: Path) -> int | None:
        read.append(fd)
        return real(pid, fd, root)

    monkeypatch.setattr(ptyowner, "_master_index", counted)
    for i in range(50):
        assert find_pty_owner(20 + i, proc) == guest
        assert owner_holds(guest, 20 + i, proc)
    assert len(read) == 2 * 50
    # Without a scan that saw it, all of its descriptors are looked at.
    read.clear()
    assert owner_holds(PtyOwner(100, 5000), 5, proc)
    assert not owner_holds(guest, 5, proc)
    assert len(read) >= 50


def test_a_burst_refuses_a_pty_whose_holder_changed(proc: Path) -> None:
    """Within a burst (one scan), a pty number that passed to another process,
    or whose holder's pid was reused, is never credited to the remembered one."""
    fake_process(
        proc, 700, 7700, {10: ("/dev/ptmx", 20), 11: ("/dev/ptmx", 21)}, exe=QEMU
    )
    guest = PtyOwner(700, 7700)
    assert find_pty_owner(20, proc) == guest
    # pts 21 is closed by the guest and handed to a shell at once.
    (proc / "700" / "fd" / "11").unlink()
    fake_process(proc, 800, 8800, {3: ("/dev/ptmx", 21)}, exe="/bin/bash")
    assert not owner_holds(guest, 21, proc)
    assert find_pty_owner(21, proc) == PtyOwner(800, 8800)
    with pytest.raises(NotAllowed, match="held by pid 800"):
        SourcePolicy(proc=proc).check_owner(PtyOwner(800, 8800), "/dev/pts/21")
    # The guest exits and its pid comes back as another process holding
    # pts 20 by the same descriptor number: another start, not the guest.
    shutil.rmtree(proc / "700")
    fake_process(proc, 700, 9900, {10: ("/dev/ptmx", 20)}, exe="/bin/bash")
    assert not owner_holds(guest, 20, proc)
    assert find_pty_owner(20, proc) == PtyOwner(700, 9900)


def test_unreadable_proc_finds_nobody(tmp_path: Path) -> None:
    """No /proc at all: no owner, nothing raised."""
    assert find_pty_owner(5, tmp_path / "no-proc") is None
    assert not owner_holds(PtyOwner(1, 1), 5, tmp_path / "no-proc")


@pytest.mark.parametrize(
    ("value", "owner"),
    [
        ({"pid": 12, "start": 34}, PtyOwner(12, 34)),
        (None, None),
        ({}, None),
        ({"pid": 12}, None),
        ({"pid": "12", "start": 34}, None),
        ({"pid": True, "start": 34}, None),
        ({"pid": 0, "start": 34}, None),
        ({"pid": 12, "start": -1}, None),
        ([12, 34], None),
    ],
)
def test_owner_from_the_registry_file(value: object, owner: PtyOwner | None) -> None:
    """A recorded owner is read back; anything malformed is no owner."""
    assert PtyOwner.from_json(value) == owner
    if owner is not None:
        assert owner.to_json() == value


def test_pts_index_of_paths() -> None:
    """Only /dev/pts/N paths have a pts number."""
    assert pts_index("/dev/pts/12") == 12
    assert pts_index("/dev/pts/ptmx") is None
    assert pts_index("/dev/tty1") is None
    assert pts_index("/dev/pts/12/x") is None


def test_real_proc_finds_this_process_for_its_own_pty() -> None:
    """A real os.openpty(): the scan of /proc names this process, until it closes."""
    master, slave = os.openpty()
    try:
        index = pts_index(os.ttyname(slave))
        assert index is not None
        assert index in master_indexes(os.getpid())
        me = PtyOwner(os.getpid(), process_start(os.getpid()) or -1)
        assert find_pty_owner(index) == me
        assert owner_holds(me, index)
    finally:
        os.close(master)
    try:
        assert not owner_holds(me, index)
        assert find_pty_owner(index) in (None, me) and index not in master_indexes(
            os.getpid()
        )
    finally:
        os.close(slave)


# -- the source ----------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_source_records_its_owner_at_first_attach() -> Gen:
    """A pty attached at create names the master's holder in describe()."""
    guest = PtyGuest(reactor)
    try:
        source = PtySource(guest.path, reactor)
        source.start(RecordingSink())
        assert source.state is SourceState.CONNECTED
        assert source.owner == PtyOwner(os.getpid(), process_start(os.getpid()) or 0)
        facts = source.describe()
        assert facts["ownerPid"] == os.getpid()
        assert None not in facts.values()
        yield source.stop()
    finally:
        guest.close()


@pytest_twisted.inlineCallbacks
def test_source_without_a_visible_owner_attaches_but_records_nothing(
    tmp_path: Path,
) -> Gen:
    """At create a holder that cannot be seen is no reason to refuse; ownerPid 0."""
    guest = PtyGuest(reactor)
    try:
        source = PtySource(guest.path, reactor, proc=tmp_path)  # an empty /proc
        source.start(RecordingSink())
        assert source.state is SourceState.CONNECTED
        assert source.owner is None and source.describe()["ownerPid"] == 0
        yield source.stop()
    finally:
        guest.close()


def cooked(fd: int) -> bool:
    """True while nobody put this tty in raw mode (what attaching does)."""
    lflag = termios.tcgetattr(fd)[3]
    return bool(lflag & termios.ICANON) and bool(lflag & termios.ECHO)


def test_restored_source_without_owner_never_opens_the_path() -> None:
    """Restored with no recorded owner: down with the reason, the tty untouched."""
    guest = PtyGuest(reactor)
    try:
        source = PtySource(guest.path, reactor, restored=True, owner=None)
        sink = RecordingSink()
        source.start(sink)
        assert source.state is SourceState.DOWN
        ((state, reason),) = sink.states
        assert "no owner of" in reason and f"not reopening {guest.path}" in reason
        assert source.describe()["lastError"] == reason
        assert cooked(guest.slave)
        assert source.write(b"x") is False
    finally:
        guest.close()


# -- the registry across a restart -------------------------------------------

HOLDER = r"""
import os
master, slave = os.openpty()
print(os.ttyname(slave), flush=True)
while True:
    data = os.read(master, 4096)
    if not data:
        break
    os.write(master, data.upper())
"""


class Holder:
    """A guest in a child process: holds a pty's master, answers in upper case.

    It keeps the slave open too, so that its reads never see EIO while no
    console is attached.
    """

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER], stdout=subprocess.PIPE
        )
        assert self.process.stdout is not None
        self.path = self.process.stdout.readline().decode().strip()
        assert pts_index(self.path) is not None, self.path

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """The guest goes away: its master is closed once it has exited."""
        self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def holder() -> Iterator[Holder]:
    h = Holder()
    yield h
    h.kill()


def new_registry(state: Path) -> Registry:
    config = Config(state_dir=state)
    return Registry(state / "registry.json", make_console_factory(config, reactor))


def retained(console: Console) -> bytes:
    """Everything the console retains: the log up to the ring, then the ring."""
    data, offset = b"", console.first_offset
    while offset < console.end:
        result = console.read(offset, 1 << 20)
        data += result.data
        offset = result.next_offset
    return data


def round_trip(console: Console, text: bytes) -> Deferred[None]:
    """Type ``text``; the guest's upper-case answer reaches the console."""
    console.write_all(text)
    return wait_until(lambda: text.upper() in retained(console), f"{text!r} back")


@pytest_twisted.inlineCallbacks
def test_restart_reattaches_while_the_owner_still_holds_the_pty(
    tmp_path: Path, holder: Holder
) -> Gen:
    """Owner alive across a restart: the console reattaches and data flows."""
    first = new_registry(tmp_path)
    console = first.create("vm-1", ConsoleSpec(type="pty", path=holder.path))
    assert console.state == "connected"
    state = registryfile.read(tmp_path / "registry.json")
    assert state is not None
    entry = state.consoles["vm-1"]
    assert entry == {
        "type": "pty",
        "path": holder.path,
        "owner": {"pid": holder.pid, "start": process_start(holder.pid)},
    }
    assert console.full_status()["console"] == {"type": "pty", "path": holder.path}
    assert console.full_status()["source"]["ownerPid"] == holder.pid
    yield round_trip(console, b"before restart")
    yield first.stop_all()

    again = new_registry(tmp_path)
    again.load()
    restored = again.get("vm-1")
    assert restored is not console and restored.state == "connected"
    assert restored.source.describe()["ownerPid"] == holder.pid
    yield round_trip(restored, b"after restart")
    assert retained(restored).startswith(b"BEFORE RESTART")
    yield again.stop_all()


@pytest_twisted.inlineCallbacks
def test_restart_after_the_owner_went_away_leaves_the_console_down(
    tmp_path: Path, holder: Holder
) -> Gen:
    """Owner gone across a restart: down with the reason, the recycled pty untouched."""
    first = new_registry(tmp_path)
    first.create("vm-1", ConsoleSpec(type="pty", path=holder.path))
    yield first.stop_all()
    holder.kill()

    opened: list[tuple[int, int]] = []
    try:
        # The kernel hands out the lowest free number: keep the others open
        # until the guest's old one comes round to this process.
        for _ in range(64):
            master, slave = os.openpty()
            opened.append((master, slave))
            if os.ttyname(slave) == holder.path:
                break
        recycled = [p for p in opened if os.ttyname(p[1]) == holder.path]
        if not recycled:
            warnings.warn(f"{holder.path} was not handed out again", stacklevel=1)

        again = new_registry(tmp_path)
        again.load()
        restored = again.get("vm-1")
        assert restored.state == "down"
        assert restored.reason == (
            f"pty owner {holder.pid} is gone; not reopening {holder.path} by "
            "path: create the console again with the new path"
        )
        facts = restored.source.describe()
        assert facts["ownerPid"] == holder.pid and facts["lastError"] == facts["reason"]
        with pytest.raises(ConsoleDown):
            restored.write_all(b"hello\n")
        for master, slave in recycled:
            # Never opened: no raw mode set, and what "another guest" prints
            # stays queued for its own reader.
            assert cooked(slave)
            os.write(master, b"intruder\n")
            yield wait_until(lambda s=slave: queued(s) == 9, "queued")
            for _ in range(3):
                yield wait_until(lambda: True, "a reactor turn")
            assert queued(slave) == 9
        assert b"intruder" not in retained(restored)
        # Saved again, the entry keeps the owner: the next start refuses too.
        again.save()
        entry = json.loads((tmp_path / "registry.json").read_text())["consoles"]
        assert entry["vm-1"]["owner"]["pid"] == holder.pid
        yield again.stop_all()
    finally:
        for pair in opened:
            for fd in pair:
                os.close(fd)


@pytest_twisted.inlineCallbacks
def test_registry_file_without_owner_restores_the_pty_down(tmp_path: Path) -> Gen:
    """An entry written before owners were recorded: loads, stays down, unopened."""
    guest = PtyGuest(reactor)
    try:
        (tmp_path / "registry.json").write_text(
            json.dumps(
                {"version": 1, "consoles": {"old": {"type": "pty", "path": guest.path}}}
            )
        )
        registry = new_registry(tmp_path)
        registry.load()
        console = registry.get("old")
        assert console.state == "down"
        assert "no owner of" in console.reason
        assert f"not reopening {guest.path} by path" in console.reason
        assert cooked(guest.slave)
        yield registry.stop_all()
    finally:
        guest.close()


# -- the real server and a real qemu -------------------------------------------


@pytest.fixture
def qemu_guests(tmp_path: Path) -> Iterator[Any]:
    """qemu guests for one test, every one stopped at teardown."""
    from tests.qemuguest import qemu_guest_pool

    yield from qemu_guest_pool(tmp_path / "qemu")


@pytest.mark.e2e
@pytest.mark.qemu
def test_e2e_restart_reattaches_live_qemu_and_not_a_dead_one(
    server_factory: Any, qemu_guests: Any
) -> None:
    """Real server and qemu: restarted while qemu runs, reattached; qemu gone, down."""
    from tests.consolehelp import (
        ConsoleReader,
        attach_paused_guest,
        config,
        full_status,
        open_files,
        qemu_marker,
        stats,
    )
    from tests.qemuguest import require_qemu

    require_qemu()
    server = server_factory(config())
    guest = qemu_guests.start("pty", paused=True)
    path, pid = guest.pty_path, guest.pid
    reader = attach_paused_guest(server, guest, "vm")
    qemu_marker(server, reader)
    assert full_status(server, "vm")["source"]["ownerPid"] == pid
    server.stop()

    again = server_factory(config())  # same state directory
    status = full_status(again, "vm")
    assert status["status"] == "connected", status
    assert status["source"]["ownerPid"] == pid
    qemu_marker(
        again, ConsoleReader(again, "vm", start=stats(again, "vm")["nextOffset"])
    )
    again.stop()

    guest.stop()  # the guest goes away while the server is down
    third = server_factory(config())
    status = full_status(third, "vm")
    assert status["status"] == "down", status
    assert status["reason"] == (
        f"pty owner {pid} is gone; not reopening {path} by path: "
        "create the console again with the new path"
    )
    assert path not in open_files(third)
