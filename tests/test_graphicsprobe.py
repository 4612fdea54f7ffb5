"""The graphics probe: connects driven by a memory reactor and its clock.

No sockets: ``MemoryReactorClock`` records each connect, and the test decides
whether it is made, refused, or never answers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from vdsmconsole.core.registry import Registry
from vdsmconsole.graphics import GraphicsEndpoint
from vdsmconsole.server.graphicsprobe import GraphicsProbe
from vdsmconsole.server.policy import SourcePolicy
from vdsmconsole.server.vmview import graphics

VNC = GraphicsEndpoint("vnc", host="127.0.0.1", port=5901, password="pw-secret")
SPICE = GraphicsEndpoint("spice", path="/var/lib/libvirt/qemu/g/spice.sock")


def no_console(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("graphics-only VMs build no console")


def setup(**kwargs: Any) -> tuple[Registry, GraphicsProbe, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    registry = Registry(None, no_console)
    probe = GraphicsProbe(registry, reactor, **kwargs)
    probe.watch(registry)
    probe.start()
    return registry, probe, reactor


def connect(factory: Any) -> StringTransport:
    """The connect is made: the probe must close it at once."""
    transport = StringTransport()
    factory.buildProtocol(None).makeConnection(transport)
    return transport


def refuse(factory: Any) -> None:
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))


def test_created_vm_is_probed_at_once_and_the_connect_closed() -> None:
    """create starts a TCP and a unix connect; a made connect answers and is
    closed at once, a refused one does not answer."""
    registry, probe, reactor = setup()
    registry.create("gfx", None, graphics=[VNC, SPICE])
    assert [c[:2] for c in reactor.tcpClients] == [("127.0.0.1", 5901)]
    assert [c[0] for c in reactor.unixClients] == [SPICE.path]
    assert not probe.answers("gfx", VNC)  # not known yet: does not answer
    transport = connect(reactor.tcpClients[0][2])
    assert transport.disconnecting or transport.disconnected
    refuse(reactor.unixClients[0][1])
    assert probe.answers("gfx", VNC) and not probe.answers("gfx", SPICE)
    assert graphics(registry, probe, "gfx") == [
        {"type": "vnc", "host": "127.0.0.1", "port": 5901, "answers": True},
        {"type": "spice", "path": SPICE.path, "answers": False},
    ]


def test_an_endpoint_that_never_answers_is_given_up_after_the_timeout() -> None:
    """A connect with no answer counts as not answering after ``timeout`` and
    its connector is told to stop."""
    registry, probe, reactor = setup(timeout=2.0)
    registry.create("gfx", None, graphics=[VNC])
    connect(reactor.tcpClients[0][2])
    reactor.advance(30)  # the next refresh
    assert probe.answers("gfx", VNC)
    reactor.advance(1.9)
    assert probe.answers("gfx", VNC)  # still the last answer while probing
    reactor.advance(0.1)
    assert not probe.answers("gfx", VNC)
    assert reactor.connectors[-1]._disconnected  # type: ignore[attr-defined]


def test_many_vms_are_probed_a_few_at_a_time() -> None:
    """1000 VMs: never more than ``concurrency`` connects in flight; each
    finished probe lets the next start; all are probed once, not twice,
    even when a refresh comes while they are still queued."""
    registry, probe, reactor = setup(concurrency=8, interval=1.0, timeout=60)
    for n in range(1000):
        registry.create(f"vm-{n}", None, graphics=[VNC])
    assert len(reactor.tcpClients) == 8
    for done in range(1000):
        assert len(reactor.tcpClients) - done <= 8  # in flight
        refuse(reactor.tcpClients[done][2])
        reactor.advance(0.01)  # refreshes come meanwhile: nothing twice
    assert probe.probes == len(reactor.tcpClients) <= 1008
    assert len({c[2].key for c in reactor.tcpClients[:1000]}) == 1000


def test_refresh_probes_again_and_sees_a_change() -> None:
    """Every ``interval`` each endpoint is probed again: a server that went
    away stops answering."""
    registry, probe, reactor = setup(interval=30)
    registry.create("gfx", None, graphics=[VNC])
    connect(reactor.tcpClients[0][2])
    assert probe.answers("gfx", VNC)
    reactor.advance(29)
    assert len(reactor.tcpClients) == 1
    reactor.advance(1)
    assert len(reactor.tcpClients) == 2
    refuse(reactor.tcpClients[1][2])
    assert not probe.answers("gfx", VNC)


def test_destroy_forgets_and_drops_a_late_answer() -> None:
    """After destroy the VM's answers are gone and a probe still running
    when it was destroyed is not recorded (not even for a new VM)."""
    registry, probe, reactor = setup()
    registry.create("gfx", None, graphics=[VNC])
    connect(reactor.tcpClients[0][2])
    reactor.advance(30)
    registry.destroy("gfx")
    assert not probe.answers("gfx", VNC)
    registry.create("gfx", None, graphics=[VNC])
    connect(reactor.tcpClients[1][2])  # the old VM's probe answers late
    assert not probe.answers("gfx", VNC)
    refuse(reactor.tcpClients[2][2])
    assert not probe.answers("gfx", VNC)


def test_a_refused_endpoint_is_never_probed(tmp_path: Any) -> None:
    """A restored endpoint the configuration no longer allows: no connect,
    listed with the reason."""
    far = GraphicsEndpoint("rdp", host="10.9.9.9", port=3389)
    Registry(tmp_path / "registry.json", no_console).create("g", None, graphics=[far])
    reactor = MemoryReactorClock()
    registry = Registry(tmp_path / "registry.json", no_console, {}, SourcePolicy())
    probe = GraphicsProbe(registry, reactor)
    probe.watch(registry)
    registry.load()
    probe.start()
    reactor.advance(3600)
    assert reactor.tcpClients == []
    [shown] = graphics(registry, probe, "g")
    assert shown["answers"] is False and "tcp_endpoints" in shown["reason"]


def test_stop_gives_up_running_probes_and_starts_none() -> None:
    """After stop: running probes are abandoned, no refresh, no new connect."""
    registry, probe, reactor = setup()
    registry.create("gfx", None, graphics=[VNC])
    probe.stop()
    assert reactor.connectors[0]._disconnected  # type: ignore[attr-defined]
    registry.create("other", None, graphics=[VNC])
    reactor.advance(3600)
    assert len(reactor.tcpClients) == 1
