"""ConsoleService's start when a listener cannot listen: one StartupError,
and every port it had opened closed again (nothing left half up)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher

from vdsmconsole.server.config import Config
from vdsmconsole.server.service import ConsoleService, StartupError

MAIN, WEB, METRICS = 16100, 16101, 16102


class Port:
    """A listening port that records whether it was stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stopped = False

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", self.port)

    def stopListening(self) -> None:
        self.stopped = True


class Ports(MemoryReactorClock):
    """listenTCP as the real one answers: a taken port raises
    CannotListenError, every other one is opened and kept here."""

    def __init__(self, taken: int) -> None:
        super().__init__()
        self.taken = taken
        self.opened: dict[int, Port] = {}

    def listenTCP(self, port: int, factory: Any, backlog=50, interface="") -> Port:
        if port == self.taken:
            raise CannotListenError(interface, port, OSError(98, "in use"))
        self.opened[port] = Port(port)
        return self.opened[port]


def web_config(pki, tmp_path, **extra: Any) -> Config:
    """The main port and [web] on, on loopback, with the test PKI."""
    return Config(
        port=MAIN,
        bind="127.0.0.1",
        state_dir=tmp_path / "state",
        web_enabled=True,
        web_port=WEB,
        **extra,
    ).with_pki(pki.root)


def start(pki, tmp_path, taken: int) -> tuple[ConsoleService, Ports, str]:
    reactor = Ports(taken)
    config = web_config(pki, tmp_path, metrics_port=METRICS)
    service = ConsoleService(config, reactor)
    with pytest.raises(StartupError) as error:
        service.startService()
    return service, reactor, str(error.value)


def test_a_web_port_that_cannot_listen_closes_the_main_port(pki, tmp_path):
    """[web] cannot listen: one line naming it; the TLS port is closed again."""
    service, reactor, message = start(pki, tmp_path, taken=WEB)
    assert message.startswith(f"cannot listen on 127.0.0.1:{WEB} for [web]: ")
    assert "\n" not in message
    assert sorted(reactor.opened) == [MAIN]
    assert all(port.stopped for port in reactor.opened.values())
    assert not service.running


def test_a_metrics_port_that_cannot_listen_closes_the_web_port_too(pki, tmp_path):
    """[metrics] cannot listen after [web] listened: both ports close again."""
    service, reactor, message = start(pki, tmp_path, taken=METRICS)
    assert message.startswith(f"cannot listen on 127.0.0.1:{METRICS} for metrics: ")
    assert sorted(reactor.opened) == [MAIN, WEB]
    assert [p for p, port in reactor.opened.items() if not port.stopped] == []
    assert not service.running


@pytest.mark.parametrize("assets", ["", "missing"])
def test_web_assets_that_are_not_there_are_said_once_at_start(pki, tmp_path, assets):
    """[web] on with no assets directory: one warning at start names the fix."""
    reactor = Ports(taken=0)
    config = web_config(
        pki, tmp_path, web_assets=str(tmp_path / assets) if assets else ""
    )
    service = ConsoleService(config, reactor)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        service.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    try:
        lines = [formatEvent(e) for e in events if "assets" in e.get("log_format", "")]
        assert len(lines) == 1 and "tools/assets.sh" in lines[0]
    finally:
        service.stopService()
