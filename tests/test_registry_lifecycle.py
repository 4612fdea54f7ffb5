"""A vmId's life in the registry: destroy, create again, shutdown; no sockets.

A destroyed console leaves the registry at once, but its vmId is free again
only once it has stopped (a spawned guest may take seconds): two consoles of
one vmId never run at once.  A console created again shows only its own
guest's output, at offsets above every offset the old one handed out.
"""

from __future__ import annotations

import errno
import json
import os
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from vdsmconsole.core import jsonfile, registryfile
from vdsmconsole.core.console import Console
from vdsmconsole.core.consolelog import ConsoleLog
from vdsmconsole.core.interfaces import SourceSink
from vdsmconsole.core.offsetmark import MARK_FILE, OffsetMark
from vdsmconsole.core.ptyowner import PtyOwner
from vdsmconsole.core.registry import Registry
from vdsmconsole.core.ring import Ring
from vdsmconsole.graphics import GraphicsEndpoint
from vdsmconsole.server.config import Config
from vdsmconsole.server.rpc import ConsoleRPC
from vdsmconsole.server.service import build_context, make_console_factory
from vdsmconsole.spec import ConsoleSpec
from vdsmconsole.status import Code, StatusError
from vdsmconsole.testing import UNIX_SPEC as UNIX
from vdsmconsole.testing import FakeSource, pattern

STOP_SECONDS = 5  # as a spawned guest that ignores SIGTERM

URL = "https://localhost/RPC2"


class SlowToStop:
    """Builds consoles whose source takes STOP_SECONDS of ``clock`` to stop."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.made: list[Console] = []

    def __call__(self, vm_id: str, spec: ConsoleSpec, fresh: bool = False) -> Console:
        source = FakeSource(self.clock, stop_delay=STOP_SECONDS)
        console = Console(vm_id, spec, source, Ring(1024), None, self.clock)
        self.made.append(console)
        return console


def test_a_destroyed_vm_id_is_free_only_once_its_console_stopped() -> None:
    """Until the old console has stopped: lookups say noVM, create says exist,
    when_free waits; then create makes a new console."""
    clock = Clock()
    registry = Registry(None, SlowToStop(clock))
    old = registry.create("vm-1", UNIX)
    destroyed = registry.destroy("vm-1")
    assert registry.find("vm-1") is None and registry.ids() == []
    with pytest.raises(StatusError) as info:
        registry.create("vm-1", UNIX)
    assert info.value.code == Code.EXIST
    free = registry.when_free("vm-1")
    clock.advance(STOP_SECONDS - 0.1)
    assert not destroyed.called and not free.called
    clock.advance(0.1)
    assert destroyed.called and free.called
    new = registry.create("vm-1", UNIX)
    assert new is not old and registry.get("vm-1") is new
    assert registry.when_free("vm-2").called  # a vmId never destroyed


def test_rpc_create_waits_for_the_old_console_to_stop(tmp_path: Path) -> None:
    """create over RPC, while the old console of the vmId still stops, is
    answered Done once it has stopped (not exist, and not alongside it)."""
    clock = Clock()
    context = build_context(Config(state_dir=tmp_path), clock)
    factory = SlowToStop(clock)
    context.registry = Registry(None, factory)
    stub = StubTreq(ConsoleRPC(context))

    def call(method: str, *params: object) -> list:
        """A call whose status code appears in the list once it is answered."""
        body = xmlrpc.client.dumps(params, method).encode()
        d = stub.post(URL, data=body, headers={"Content-Type": "text/xml"})
        d.addCallback(stub.content)
        d.addCallback(lambda xml: xmlrpc.client.loads(xml)[0][0]["status"]["code"])
        answers: list = []
        d.addBoth(answers.append)
        return answers

    # In the state directory, which the [sources] policy always allows.
    path = str(tmp_path / "x.sock")
    spec = {"vmId": "vm-1", "console": {"type": "unix", "path": path}}
    assert call("create", spec) == [0]
    destroyed = call("destroy", "vm-1")
    created = call("create", spec)
    stub.flush()
    assert (destroyed, created) == ([], [])
    assert len(factory.made) == 1
    clock.advance(STOP_SECONDS)
    stub.flush()
    assert (destroyed, created) == ([0], [0])
    assert len(factory.made) == 2 and factory.made[0].closed


def test_stop_all_waits_for_consoles_still_stopping() -> None:
    """A server stopping right after a destroy waits for that console too, and
    a create that was waiting for it starts no console nothing would stop."""
    clock = Clock()
    factory = SlowToStop(clock)
    registry = Registry(None, factory)
    registry.create("vm-1", UNIX)
    registry.create("vm-2", UNIX)
    registry.destroy("vm-1")
    created: list = []
    registry.when_free("vm-1").addCallback(
        lambda _: registry.create("vm-1", UNIX)
    ).addErrback(lambda f: created.append(f.value))
    clock.advance(1)
    stopped = registry.stop_all()
    clock.advance(STOP_SECONDS - 1)
    assert not stopped.called  # vm-2 began to stop a second later
    assert isinstance(created[0], StatusError) and len(factory.made) == 2
    clock.advance(1)
    assert stopped.called


def test_a_console_created_again_shows_only_its_own_output(tmp_path: Path) -> None:
    """destroy, create the same vmId: no byte of the old guest is served, its
    log is gone, and the new offsets start where the old ones ended; a
    restart of the server then brings back the new console as it was."""
    config = Config(
        state_dir=tmp_path, ring_bytes=64, log_file_bytes=100, log_keep_files=5
    )
    reactor = MemoryReactorClock()  # a unix source that never connects
    path = tmp_path / "registry.json"
    registry = Registry(path, make_console_factory(config, reactor))
    old = registry.create("vm-1", UNIX)
    old.sourceData(pattern(0, 300))
    registry.destroy("vm-1")
    assert old.closed
    directory = tmp_path / "consoles" / "vm-1"
    assert OffsetMark(directory / MARK_FILE).saved == 300

    new = registry.create("vm-1", UNIX)
    assert (new.first_offset, new.end) == (300, 300)
    assert sorted(p.name for p in directory.iterdir()) == [MARK_FILE]
    result = new.read(0, 1000)
    assert (result.offset, result.data, result.lost) == (300, b"", 300)
    new.sourceData(b"new guest")
    result = new.read(0, 1000)
    assert (result.offset, result.data, result.lost) == (300, b"new guest", 300)
    assert new.stats()["firstOffset"] == 300
    registry.stop_all()

    again = Registry(path, make_console_factory(config, reactor))
    again.load()
    restored = again.get("vm-1")
    assert (restored.first_offset, restored.end) == (300, 309)
    assert restored.read(0, 1000).data == b"new guest"
    again.stop_all()


def test_discard_empties_the_log_and_the_next_append_starts_there(
    tmp_path: Path,
) -> None:
    """ConsoleLog.discard deletes every segment; appends go on at their offset,
    and what lies below them reads as lost."""
    log = ConsoleLog(tmp_path / "log", 100, 3)
    log.append(0, pattern(0, 250))
    log.discard()
    assert (log.start, log.end, log.disk_bytes()) == (0, 0, 0)
    assert list((tmp_path / "log").iterdir()) == []
    log.append(250, b"after")
    assert (log.start, log.end) == (250, 255)
    result = log.read(0, 100)
    assert (result.offset, result.data, result.lost) == (250, b"after", 250)
    log.close()


# -- the registry's files: a snapshot and a journal ----------------------------

OWNER = PtyOwner(4242, 777)
PTY = ConsoleSpec(type="pty", path="/dev/pts/9")
SPAWN = ConsoleSpec(type="spawn", command="demo")
VNC = GraphicsEndpoint("vnc", host="127.0.0.1", port=5901, password="pw-1")
RDP = GraphicsEndpoint("rdp", host="localhost", port=3389)


class OwnedSource(FakeSource):
    """A pty source's owner as the registry reads it: known once attached
    (``start``), or the one a restore recorded."""

    def __init__(self, owner: PtyOwner | None) -> None:
        super().__init__()
        self.owner = owner

    def start(self, sink: SourceSink) -> None:
        super().start(sink)
        self.owner = self.owner or OWNER


class SpawnSource(FakeSource):
    """A spawn console's source: running with a pid; counts describe calls."""

    described = 0

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid

    def describe(self) -> dict[str, Any]:
        SpawnSource.described += 1
        return {"type": "spawn", "running": True, "pid": self.pid}


class Counted(Console):
    """A console that counts reads of its spec (every console's, in a loop
    over all of them)."""

    reads = 0

    @property  # type: ignore[override]
    def spec(self) -> ConsoleSpec:
        Counted.reads += 1
        return self._spec

    @spec.setter
    def spec(self, spec: ConsoleSpec) -> None:
        self._spec = spec


class Files:
    """Builds consoles on fake sources and remembers what each was given."""

    def __init__(self) -> None:
        self.given: dict[str, dict[str, Any]] = {}

    def __call__(self, vm_id: str, spec: ConsoleSpec, **kwargs: Any) -> Console:
        self.given[vm_id] = kwargs
        source: FakeSource
        if spec.type == "pty":
            source = OwnedSource(kwargs.get("owner"))
        elif spec.type == "spawn":
            source = SpawnSource(1000 + len(self.given))
        else:
            source = FakeSource()
        return Counted(vm_id, spec, source, Ring(1024), None, Clock())


def files_registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry.json", Files(), {"demo": ["x"]})


def journal_lines(tmp_path: Path) -> list[dict[str, Any]]:
    data = (tmp_path / "registry.journal").read_bytes()
    return [json.loads(line) for line in data.splitlines()]


def described(registry: Registry) -> dict[str, Any]:
    """What a registry holds, as comparable values."""
    return {
        vm: (
            None if registry.find(vm) is None else registry.get(vm).spec,
            registry.graphics(vm),
            getattr(getattr(registry.find(vm), "source", None), "owner", None),
        )
        for vm in registry.ids()
    }


def restarted(tmp_path: Path) -> Registry:
    again = files_registry(tmp_path)
    again.load()
    return again


def test_each_change_appends_one_line_and_a_restart_replays_them(
    tmp_path: Path,
) -> None:
    """create, the pty owner's re-save, replace_graphics and destroy each
    append one line (the snapshot is not rewritten); a new registry on the
    files has every VM, endpoint and owner."""
    registry = files_registry(tmp_path)
    registry.create("tcp", UNIX, graphics=[VNC])
    assert len(journal_lines(tmp_path)) == 1
    registry.create("pty", PTY)  # its owner is known once attached: 2 lines
    assert journal_lines(tmp_path)[1:] == [
        {"vm": "pty", "console": PTY.to_wire()},
        {"vm": "pty", "console": {**PTY.to_wire(), "owner": OWNER.to_json()}},
    ]
    registry.create("gfx", None, graphics=[RDP])
    registry.replace_graphics("tcp", [RDP])
    registry.replace_graphics("gfx", [])  # no graphics left: the VM is gone
    registry.create("gone", UNIX)
    registry.destroy("gone")
    assert journal_lines(tmp_path)[-4:] == [
        {"vm": "tcp", "console": UNIX.to_wire(), "graphics": [RDP.to_persist()]},
        {"vm": "gfx", "gone": True},
        {"vm": "gone", "console": UNIX.to_wire()},
        {"vm": "gone", "gone": True},
    ]
    assert len(journal_lines(tmp_path)) == 8
    assert not (tmp_path / "registry.json").exists()
    expected = described(registry)
    assert expected == {"pty": (PTY, (), OWNER), "tcp": (UNIX, (RDP,), None)}
    again = restarted(tmp_path)
    assert described(again) == expected
    assert again._factory.given["pty"] == {"restored": True, "owner": OWNER}  # type: ignore[attr-defined]


def test_load_compacts_and_a_compacted_registry_loads_the_same(
    tmp_path: Path,
) -> None:
    """load replays the journal, then leaves the registry in the snapshot
    alone (the journal empty); that snapshot loads the same again."""
    registry = files_registry(tmp_path)
    registry.create("a", UNIX, graphics=[VNC])
    registry.create("b", PTY)
    registry.destroy("a")
    registry.create("a", None, graphics=[RDP])
    expected = described(registry)
    again = restarted(tmp_path)
    assert described(again) == expected
    assert (tmp_path / "registry.journal").read_bytes() == b""
    assert described(restarted(tmp_path)) == expected


def test_after_stop_all_the_snapshot_alone_describes_everything(
    tmp_path: Path,
) -> None:
    """A clean stop compacts: registry.json alone, as an older server reads
    it (no journal), restores every VM, endpoint and owner."""
    registry = files_registry(tmp_path)
    registry.create("a", UNIX, graphics=[VNC])
    registry.create("b", PTY)
    registry.create("c", None, graphics=[RDP])
    expected = described(registry)
    registry.stop_all()
    assert (tmp_path / "registry.journal").read_bytes() == b""
    (tmp_path / "registry.journal").unlink()
    snapshot = json.loads((tmp_path / "registry.json").read_text())
    assert snapshot["consoles"]["b"]["owner"] == OWNER.to_json()
    assert described(restarted(tmp_path)) == expected


def test_the_journal_stays_below_max_256_and_the_vms(tmp_path: Path) -> None:
    """However many changes, the journal holds at most max(256, VMs) records:
    a few VMs changed 700 times, then 400 VMs (more than 256)."""
    registry = files_registry(tmp_path)
    longest = 0
    for _ in range(350):
        registry.create("vm", UNIX)
        registry.destroy("vm")
        longest = max(longest, len(journal_lines(tmp_path)))
    assert longest == 256
    for n in range(400):
        registry.create(f"vm-{n}", UNIX)
        assert len(journal_lines(tmp_path)) <= max(256, len(registry))
    assert described(restarted(tmp_path)) == described(registry)


def test_compaction_costs_o1_per_change_with_many_vms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more VMs than 256 the journal may grow to their number: 600 VMs
    changed 1200 times write the whole snapshot twice, not every 256
    changes (an O(VMs) write every O(1) changes)."""
    registry = files_registry(tmp_path)
    for n in range(600):
        registry.create(f"vm-{n}", UNIX)
    writes: list[Path] = []
    write = registryfile.write_snapshot
    monkeypatch.setattr(
        registryfile, "write_snapshot", lambda p, t: (writes.append(p), write(p, t))
    )
    for n in range(1200):
        registry.replace_graphics(f"vm-{n % 600}", [VNC] if n < 600 else [])
        if n % 25 == 0:
            assert len(journal_lines(tmp_path)) <= 600
    assert len(writes) == 2
    assert described(restarted(tmp_path)) == described(registry)


class Crash(Exception):
    """The process dies here: the files stay as they are."""


def crash(*args: object) -> None:
    raise Crash


@pytest.mark.parametrize("step", ["before the rename", "before the truncation"])
def test_a_crash_in_compaction_restarts_to_the_same_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """A compaction cut short before the snapshot's rename (the old snapshot
    and the journal), or after it but before the journal is emptied (the new
    snapshot and records it holds already): a restart has the same VMs."""
    registry = files_registry(tmp_path)
    registry.create("old", UNIX)
    registry.save()
    registry.create("a", UNIX, graphics=[VNC])
    registry.create("b", PTY)
    registry.destroy("old")
    registry.create("c", None, graphics=[RDP])
    registry.replace_graphics("c", [VNC])
    if step == "before the rename":
        monkeypatch.setattr(jsonfile.os, "replace", crash)
    else:
        monkeypatch.setattr(registryfile.Journal, "clear", crash)
    with pytest.raises(Crash):
        registry.save()
    monkeypatch.undo()
    assert (tmp_path / "registry.journal").stat().st_size > 0
    assert described(restarted(tmp_path)) == described(registry)


class FullDisk:
    """The journal's write: half the line, then no space left."""

    def __call__(self, fd: int, data: bytes) -> int:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_write_error_rolls_back_and_a_later_create_still_persists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal append that fails half-way: create and destroy answer
    "cannot persist the registry" and change nothing; once the disk has
    room, a create persists and a restart restores it (the half line is
    gone, not glued to the next)."""
    registry = files_registry(tmp_path)
    registry.create("a", UNIX)
    journal = registry._file.journal
    assert journal is not None
    monkeypatch.setattr(journal, "_write", FullDisk())
    for call, args in ((registry.create, ("b", UNIX)), (registry.destroy, ("a",))):
        with pytest.raises(StatusError) as info:
            call(*args)  # type: ignore[operator]
        assert info.value.code == Code.UNEXPECTED
        assert "cannot persist the registry" in info.value.message
        assert registry.ids() == ["a"] and registry.get("a").state == "connected"
    monkeypatch.undo()
    registry.create("c", UNIX, graphics=[VNC])
    assert len(journal_lines(tmp_path)) == 2
    assert described(restarted(tmp_path)) == described(registry)


def test_spawned_pids_looks_only_at_spawn_consoles(tmp_path: Path) -> None:
    """spawned_pids looks at the spawn consoles only (not at every console,
    on every create), and follows create, destroy and load."""
    registry = files_registry(tmp_path)
    for n in range(50):
        registry.create(f"unix-{n}", UNIX)
    registry.create("s1", SPAWN)
    registry.create("s2", SPAWN)
    Counted.reads = SpawnSource.described = 0
    assert registry.spawned_pids() == {1051, 1052}
    assert SpawnSource.described == 2 and Counted.reads <= 2
    registry.destroy("s1")
    assert registry.spawned_pids() == {1052}
    again = restarted(tmp_path)
    Counted.reads = SpawnSource.described = 0
    assert len(again.spawned_pids()) == 1 and SpawnSource.described == 1
    assert Counted.reads <= 1
