"""A vmId's life in the registry: destroy, create again, shutdown; no sockets.

A destroyed console leaves the registry at once, but its vmId is free again
only once it has stopped (a spawned guest may take seconds): two consoles of
one vmId never run at once.  A console created again shows only its own
guest's output, at offsets above every offset the old one handed out.
"""

from __future__ import annotations

import xmlrpc.client
from pathlib import Path

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from tests.test_console import UNIX, FakeSource, pattern
from tests.test_rpc_unit import URL
from vdsmconsole.config import Config
from vdsmconsole.console import Console, make_console_factory
from vdsmconsole.consolelog import ConsoleLog
from vdsmconsole.offsetmark import MARK_FILE, OffsetMark
from vdsmconsole.registry import Registry
from vdsmconsole.ring import Ring
from vdsmconsole.rpc import ConsoleRPC
from vdsmconsole.server import build_context
from vdsmconsole.spec import ConsoleSpec
from vdsmconsole.status import Code, StatusError

STOP_SECONDS = 5  # as a spawned guest that ignores SIGTERM


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
