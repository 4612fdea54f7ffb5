"""libvirt discovery against libvirt's own ``test:///default`` driver: the
watcher thread with libvirt's event loop, its events handed to a stand-in
reactor, applied to a real registry (consoles on fakes); and the domain XML
parser on the shapes qemu's driver writes."""

from __future__ import annotations

import queue
import threading
import time
import uuid as uuidmod
from pathlib import Path

import pytest

from vdsmconsole.core.console import Console
from vdsmconsole.core.interfaces import SourceState
from vdsmconsole.core.registry import Registry
from vdsmconsole.core.ring import Ring
from vdsmconsole.graphics import GraphicsEndpoint
from vdsmconsole.server.audit import AuditLog
from vdsmconsole.server.config import Config
from vdsmconsole.server.libvirt.discovery import LibvirtDiscovery
from vdsmconsole.server.libvirt.domxml import parse_domain
from vdsmconsole.server.policy import SourcePolicy
from vdsmconsole.spec import ConsoleSpec
from vdsmconsole.status import Code, StatusError
from vdsmconsole.testing import FakeSource

libvirt = pytest.importorskip("libvirt")
from vdsmconsole.server.libvirt.watcher import LibvirtWatcher  # noqa: E402

TEST_URI = "test:///default"


def domain_xml(name: str, uuid: str, socket: str, vnc_port: int = 5901) -> str:
    return f"""<domain type='test'>
  <name>{name}</name><uuid>{uuid}</uuid><memory>1024</memory>
  <os><type>hvm</type></os>
  <devices>
    <serial type='unix'><source mode='bind' path='{socket}'/>
      <target port='0'/></serial>
    <graphics type='vnc' port='{vnc_port}' autoport='no' listen='127.0.0.1'/>
  </devices>
</domain>"""


class StandInReactor:
    """callFromThread queues; the test runs the queue on its own thread, as
    the reactor would."""

    def __init__(self) -> None:
        self.calls: queue.Queue = queue.Queue()
        self.thread = threading.current_thread()

    def callFromThread(self, f, *args) -> None:
        assert threading.current_thread() is not self.thread
        self.calls.put((f, args))

    def run_until(self, condition, timeout: float = 10.0, what: str = "it") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}")
            try:
                f, args = self.calls.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            f(*args)


class Discovered:
    """The registry and discovery of one test, the watcher thread on
    test:///default, and a read-write connection for the test to act."""

    def __init__(self, tmp_path: Path) -> None:
        self.reactor = StandInReactor()
        self.registry = Registry(None, self.console)
        self.sources: list[FakeSource] = []
        config = Config(state_dir=tmp_path)
        self.audit = AuditLog(tmp_path / "audit.log")
        self.records: list = []
        self.audit.listeners.append(lambda e, f: self.records.append((e, f)))
        self.discovery = LibvirtDiscovery(
            self.registry,
            SourcePolicy.from_config(config),
            self.audit,
            tmp_path / "libvirt.json",
            self.reactor,
            self.source,
        )
        self.connection = libvirt.open(TEST_URI)
        self.watcher: LibvirtWatcher | None = None

    def source(self, spec: ConsoleSpec, owner: object = None) -> FakeSource:
        self.sources.append(FakeSource())
        return self.sources[-1]

    def console(self, vm_id: str, spec: ConsoleSpec, **_: object) -> Console:
        return Console(vm_id, spec, self.source(spec), Ring(1024), None, None)

    def start(self) -> None:
        self.watcher = LibvirtWatcher(TEST_URI, self.discovery.deliver, 0.05, 0.2)
        self.watcher.start()
        self.reactor.run_until(lambda: self.watcher.connected.is_set(), what="connect")
        self.reactor.run_until(lambda: self.reactor.calls.empty(), what="the sync")

    def define(self, name: str, socket: str, uuid: str | None = None, port=5901):
        uuid = uuid or str(uuidmod.uuid4())
        domain = self.connection.defineXML(domain_xml(name, uuid, socket, port))
        return domain

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher.join(5)
            assert not self.watcher.is_alive()
        self.connection.close()


@pytest.fixture
def lv(tmp_path):
    discovered = Discovered(tmp_path)
    yield discovered
    discovered.stop()


SOCKET = "/var/lib/libvirt/qemu/channel/target/{}.serial"


def test_a_started_domain_is_registered_by_uuid(lv):
    """Within the events of ``start``: its serial console and VNC under its
    UUID, an audit record by ``libvirt``, and its name kept."""
    lv.start()
    domain = lv.define("lv-start", SOCKET.format("a"))
    uuid = domain.UUIDString()
    assert not lv.registry.has_vm(uuid)  # defined only: nothing to attach to
    domain.create()
    lv.reactor.run_until(lambda: lv.registry.has_vm(uuid), what="registration")
    assert lv.registry.get(uuid).spec == ConsoleSpec("unix", path=SOCKET.format("a"))
    assert lv.registry.graphics(uuid) == (GraphicsEndpoint("vnc", "127.0.0.1", 5901),)
    assert (
        "create",
        {
            "vmId": uuid,
            "name": "lv-start",
            "console": {"type": "unix", "path": SOCKET.format("a")},
            "graphics": [{"type": "vnc", "host": "127.0.0.1", "port": 5901}],
        },
    ) in lv.records
    assert lv.discovery.alias(uuid) == "lv-start"
    assert lv.discovery.alias("not-libvirts") == ""
    domain.destroy()
    domain.undefine()


def test_undefine_removes_and_stop_keeps(lv):
    """A stopped domain's VM stays (its console shows it down); undefining
    the domain destroys the VM."""
    lv.start()
    domain = lv.define("lv-undefine", SOCKET.format("b"))
    uuid = domain.UUIDString()
    domain.create()
    lv.reactor.run_until(lambda: lv.registry.has_vm(uuid), what="registration")
    domain.destroy()
    domain.undefine()
    lv.reactor.run_until(lambda: not lv.registry.has_vm(uuid), what="removal")
    assert uuid not in lv.discovery.managed


class Follower:
    """A console subscriber that records how its stream would end."""

    def __init__(self) -> None:
        self.ended: list[str] = []

    def dataAvailable(self) -> None:
        pass

    def consoleDown(self) -> None:
        self.ended.append("down")

    def consoleClosed(self, why: str) -> None:
        self.ended.append(why)


def test_a_restart_elsewhere_reattaches_and_followers_carry_on(lv):
    """A domain's guest going down keeps its followers; started again on
    another console and VNC port, the same console reads the new source,
    its offsets carry on, and its graphics are the new ones."""
    lv.start()
    uuid = str(uuidmod.uuid4())
    domain = lv.define("lv-restart", SOCKET.format("c1"), uuid)
    domain.create()
    lv.reactor.run_until(lambda: lv.registry.has_vm(uuid), what="registration")
    console = lv.registry.get(uuid)
    follower = Follower()
    console.subscribe(follower)
    first = lv.sources[-1]
    first.emit(b"first boot\n")
    domain.destroy()
    first.set_state(SourceState.DOWN, "pty closed")  # what the pty does
    assert follower.ended == [] and console.state == "down"
    domain = lv.define("lv-restart", SOCKET.format("c2"), uuid, port=5902)
    domain.create()
    lv.reactor.run_until(lambda: lv.sources[-1] is not first, what="the new source")
    assert lv.registry.get(uuid) is console and console.state == "connected"
    assert console.spec.path == SOCKET.format("c2")
    assert lv.registry.graphics(uuid)[0].port == 5902
    lv.sources[-1].emit(b"second boot\n")
    assert console.end == len(b"first boot\nsecond boot\n")
    assert follower.ended == []
    assert any(e == "reattach" and f["vmId"] == uuid for e, f in lv.records)
    domain.destroy()
    domain.undefine()
    lv.reactor.run_until(lambda: not lv.registry.has_vm(uuid), what="removal")
    assert follower.ended == ["destroyed"]


def test_hand_and_libvirt_consoles_side_by_side(lv):
    """A VM registered by hand under a domain's UUID is left alone; one that
    libvirt registered refuses create and destroy by hand with notAllowed."""
    lv.start()
    hand = str(uuidmod.uuid4())
    lv.registry.create(hand, ConsoleSpec("unix", path="/run/elsewhere.sock"))
    mine = lv.define("lv-hand", SOCKET.format("d"), hand)
    theirs = lv.define("lv-theirs", SOCKET.format("e"))
    mine.create()
    theirs.create()
    other = theirs.UUIDString()
    lv.reactor.run_until(lambda: lv.registry.has_vm(other), what="registration")
    assert lv.registry.get(hand).spec.path == "/run/elsewhere.sock"
    assert hand not in lv.discovery.managed
    lv.discovery.refuse_by_hand(hand, "stop")  # by hand: no refusal
    with pytest.raises(StatusError) as refused:
        lv.discovery.refuse_by_hand(other, "stop or undefine")
    assert refused.value.code == Code.NOT_ALLOWED
    assert "lv-theirs" in str(refused.value)
    for domain in (mine, theirs):
        domain.destroy()
        domain.undefine()


def test_sync_at_connect(lv, tmp_path):
    """Connecting registers domains already running and destroys the VMs
    libvirt registered (libvirt.json) whose domain is gone meanwhile."""
    gone = str(uuidmod.uuid4())
    lv.registry.create(gone, ConsoleSpec("unix", path=SOCKET.format("gone")))
    lv.discovery.managed.add(gone)
    domain = lv.define("lv-sync", SOCKET.format("f"))
    domain.create()
    lv.start()
    uuid = domain.UUIDString()
    assert lv.registry.has_vm(uuid)
    assert not lv.registry.has_vm(gone)
    again = LibvirtDiscovery(
        lv.registry, None, lv.audit, tmp_path / "libvirt.json", lv.reactor
    )
    assert again.managed == {uuid} | {u for u in lv.discovery.managed if u != uuid}
    domain.destroy()
    domain.undefine()


def test_refused_by_sources_is_not_registered(lv):
    """A serial socket outside [sources] unix_paths is not attached (an
    audit record says why); the domain's allowed graphics still are."""
    lv.start()
    domain = lv.define("lv-refused", "/etc/not-a-guest.sock")
    domain.create()
    uuid = domain.UUIDString()
    lv.reactor.run_until(lambda: lv.registry.has_vm(uuid), what="registration")
    assert lv.registry.find(uuid) is None
    assert any(e == "refused" and f["vmId"] == uuid for e, f in lv.records)
    domain.destroy()
    domain.undefine()


def test_unreachable_libvirt_is_retried_with_backoff(tmp_path):
    """A connection that fails is retried after a delay that doubles up to
    the maximum; nothing is delivered meanwhile."""
    delivered = []
    watcher = LibvirtWatcher(
        f"test://{tmp_path}/missing.xml", lambda *a: delivered.append(a), 0.5, 2.0
    )
    delays = []
    for _ in range(4):
        before = time.monotonic()
        watcher._connect()
        delays.append(round(watcher.retry_at - before, 1))
    assert delays == [0.5, 1.0, 2.0, 2.0]
    assert delivered == [] and watcher.connection is None


QEMU_XML = """<domain type='kvm' id='3'>
  <name>guest1</name><uuid>0b0bd8f5-6a5b-4c3e-9d0f-53a6f1a8a101</uuid>
  <devices>
    <serial type='unix'><source mode='connect' path='/run/out.sock'/>
      <target port='1'/></serial>
    <serial type='pty'><source path='/dev/pts/7'/><target port='0'/></serial>
    <console type='pty' tty='/dev/pts/7'><source path='/dev/pts/7'/></console>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>
    <graphics type='spice' tlsPort='5930' autoport='no'>
      <listen type='address' address='0.0.0.0'/></graphics>
  </devices>
</domain>"""


@pytest.mark.parametrize(
    ("xml", "console", "graphics"),
    [
        (
            QEMU_XML,
            ConsoleSpec("pty", path="/dev/pts/7"),
            (GraphicsEndpoint("spice", "127.0.0.1", 5930),),
        ),
        (
            QEMU_XML.replace("port='-1'", "port='5903'"),
            ConsoleSpec("pty", path="/dev/pts/7"),
            (
                GraphicsEndpoint("vnc", "127.0.0.1", 5903),
                GraphicsEndpoint("spice", "127.0.0.1", 5930),
            ),
        ),
        (
            QEMU_XML.replace(
                "<source path='/dev/pts/7'/><target port='0'/>",
                "<source mode='bind' host='127.0.0.1' service='4555'/>"
                "<protocol type='raw'/><target port='0'/>",
            ).replace("type='pty'><source mode", "type='tcp'><source mode"),
            ConsoleSpec("tcp", host="127.0.0.1", port=4555),
            (GraphicsEndpoint("spice", "127.0.0.1", 5930),),
        ),
        (
            QEMU_XML.replace("<source path='/dev/pts/7'/><target", "<target").replace(
                "autoport='yes' listen='127.0.0.1'/>",
                "autoport='no'><listen type='socket' socket='/run/vnc.sock'/>"
                "</graphics>",
            ),
            None,
            (
                GraphicsEndpoint("vnc", path="/run/vnc.sock"),
                GraphicsEndpoint("spice", "127.0.0.1", 5930),
            ),
        ),
    ],
    ids=["pty-autoport-pending", "pty-vnc", "tcp", "stopped-vnc-socket"],
)
def test_parse_domain(xml, console, graphics):
    """The first serial port by target (a unix socket qemu connects out to
    is not one to attach to), VNC and SPICE by port or socket, any-address
    listens reached on loopback, a port autoport has not picked skipped."""
    found = parse_domain(xml)
    assert (found.uuid, found.name) == (
        "0b0bd8f5-6a5b-4c3e-9d0f-53a6f1a8a101",
        "guest1",
    )
    assert found.console == console
    assert found.graphics == graphics


def test_parse_rejects_what_is_not_a_domain():
    """No UUID: not a domain; hostile XML (entities) is refused by defusedxml."""
    with pytest.raises(ValueError):
        parse_domain("<domain><name>x</name></domain>")
    with pytest.raises(Exception):  # noqa: B017 - defusedxml's own error type
        parse_domain("<!DOCTYPE d [<!ENTITY e 'x'>]><domain><uuid>&e;</uuid></domain>")


def test_rpc_create_and_destroy_of_a_libvirt_vm_are_refused(tmp_path):
    """Over RPC, destroy and create of a VM libvirt registered answer 103
    (notAllowed) naming the domain, and change nothing; a VM registered by
    hand is destroyed as ever."""
    import xmlrpc.client

    from treq.testing import StubTreq
    from twisted.internet.task import Clock

    from vdsmconsole.server.rpc import ConsoleRPC
    from vdsmconsole.server.service import build_context

    context = build_context(Config(state_dir=tmp_path), Clock())
    context.registry = Registry(
        None, lambda v, s, **_: Console(v, s, FakeSource(), Ring(64), None, None)
    )
    context.libvirt = LibvirtDiscovery(
        context.registry, context.policy, context.audit, None, None
    )
    context.registry.create("vm-lv", ConsoleSpec("unix", path="/run/a.sock"))
    context.registry.create("vm-hand", ConsoleSpec("unix", path="/run/b.sock"))
    context.libvirt.managed.add("vm-lv")
    context.libvirt.names["vm-lv"] = "guest7"
    stub = StubTreq(ConsoleRPC(context))

    def call(method: str, *params: object) -> dict:
        body = xmlrpc.client.dumps(params, method).encode()
        d = stub.post("https://localhost/RPC2", data=body)
        d.addCallback(stub.content)
        answers: list = []
        d.addCallback(lambda xml: answers.append(xmlrpc.client.loads(xml)[0][0]))
        stub.flush()
        return answers[0]

    refused = call("destroy", "vm-lv")
    assert refused["status"]["code"] == Code.NOT_ALLOWED
    assert "guest7" in refused["status"]["message"]
    assert context.registry.has_vm("vm-lv")
    spec = {"vmId": "vm-lv", "console": {"type": "unix", "path": "/run/c.sock"}}
    assert call("create", spec)["status"]["code"] == Code.NOT_ALLOWED
    assert call("destroy", "vm-hand")["status"]["code"] == Code.DONE
