"""Whether each graphics endpoint answers: a cached probe, refreshed in the
background, so that no RPC ever waits for a connect.

A probe is a TCP or unix connect, closed as soon as it is made, given up
after ``timeout`` seconds.  An endpoint is probed when its VM is created or
restored (the registry's ``added`` hook) and again every ``interval``
seconds; at most ``concurrency`` probes run at once and an endpoint is
never queued twice, so a thousand VMs cost a steady trickle of connects, not
a thousand at once, and the work never grows beyond one probe per endpoint.
Until its first probe has finished an endpoint does not answer (``False``).
Endpoints the configuration no longer allows (restored refused) are never
probed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from twisted.internet import protocol, task
from twisted.logger import Logger

from vdsmconsole.graphics import GraphicsEndpoint

__all__ = ["GraphicsProbe", "GraphicsRegistry"]

log = Logger(namespace="vdsmconsole.graphicsprobe")

INTERVAL_SECONDS = 30.0
TIMEOUT_SECONDS = 2.0
CONCURRENCY = 8

Key = tuple[str, str]  # (vmId, endpoint type): one endpoint of a type per VM


class GraphicsRegistry(Protocol):
    """What the probe reads (``core.registry.Registry``)."""

    def ids(self) -> list[str]: ...
    def has_vm(self, vm_id: str) -> bool: ...
    def graphics(self, vm_id: str) -> tuple[GraphicsEndpoint, ...]: ...
    def refusal(self, vm_id: str, protocol: str) -> str: ...


class _Close(protocol.Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.abortConnection()
        self.factory.finish(True)


class _Attempt(protocol.ClientFactory):
    """One probe: reports once, True if the connect was made."""

    protocol = _Close
    noisy = False  # no "Starting factory" log line per probe

    def __init__(self, probe: GraphicsProbe, key: Key, endpoint: GraphicsEndpoint):
        self.probe = probe
        self.key = key
        self.endpoint = endpoint
        self.connector: Any = None
        self.timer: Any = None
        self.done = False

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.finish(False)

    def finish(self, answers: bool) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.probe._finished(self, answers)

    def give_up(self) -> None:
        self.finish(False)
        if self.connector is not None:
            self.connector.disconnect()


class GraphicsProbe:
    """(vmId, type) -> answers, kept fresh in the background."""

    def __init__(
        self,
        registry: GraphicsRegistry,
        reactor: Any,
        interval: float = INTERVAL_SECONDS,
        timeout: float = TIMEOUT_SECONDS,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.registry = registry
        self.reactor = reactor
        self.interval = interval
        self.timeout = timeout
        self.concurrency = concurrency
        self._answers: dict[Key, bool] = {}
        self._queue: dict[Key, GraphicsEndpoint] = {}  # in order of arrival
        self._running: dict[Key, _Attempt] = {}
        self._loop = task.LoopingCall(self.refresh)
        self._loop.clock = reactor
        self._stopped = False
        self.probes = 0  # started so far (tests, stats)

    # -- what the RPCs read: never waits -----------------------------------------

    def answers(self, vm_id: str, endpoint: GraphicsEndpoint) -> bool:
        return self._answers.get((vm_id, endpoint.type), False)

    # -- life -------------------------------------------------------------------

    def watch(self, registry: Any) -> None:
        """Probe a VM's endpoints when it is added, forget them when destroyed."""
        registry.added.append(self.vm_added)
        registry.destroyed.append(self.vm_destroyed)

    def start(self) -> None:
        """Refresh every ``interval`` (the first probes come from ``added``)."""
        if not self._loop.running:
            self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        self._stopped = True
        if self._loop.running:
            self._loop.stop()
        self._queue.clear()
        for attempt in list(self._running.values()):
            attempt.give_up()

    def vm_added(self, vm_id: str) -> None:
        self._enqueue(vm_id, self.registry.graphics(vm_id))
        self._pump()

    def vm_destroyed(self, vm_id: str) -> None:
        for table in (self._answers, self._queue, self._running):
            for key in [k for k in table if k[0] == vm_id]:
                del table[key]  # a running probe's answer is then dropped

    def refresh(self) -> None:
        """Queue every endpoint not queued or being probed already."""
        for vm_id in self.registry.ids():
            self._enqueue(vm_id, self.registry.graphics(vm_id))
        self._pump()

    # -- the work ---------------------------------------------------------------

    def _enqueue(self, vm_id: str, endpoints: Iterable[GraphicsEndpoint]) -> None:
        for endpoint in endpoints:
            key = (vm_id, endpoint.type)
            if key in self._running or self.registry.refusal(vm_id, endpoint.type):
                continue
            self._queue.setdefault(key, endpoint)

    def _pump(self) -> None:
        while (
            self._queue and len(self._running) < self.concurrency and not self._stopped
        ):
            key = next(iter(self._queue))
            endpoint = self._queue.pop(key)
            attempt = _Attempt(self, key, endpoint)
            self._running[key] = attempt
            self.probes += 1
            attempt.timer = self.reactor.callLater(self.timeout, attempt.give_up)
            try:
                attempt.connector = self._connect(endpoint, attempt)
            except Exception as e:  # noqa: BLE001 - e.g. a path too long for AF_UNIX
                log.debug("probe of {addr} failed: {err}", addr=endpoint.address, err=e)
                attempt.finish(False)

    def _connect(self, endpoint: GraphicsEndpoint, attempt: _Attempt) -> Any:
        # The reactor's own timeout too: it also closes a half-made connect.
        if endpoint.path:
            return self.reactor.connectUNIX(endpoint.path, attempt, self.timeout)
        return self.reactor.connectTCP(
            endpoint.host, endpoint.port, attempt, self.timeout
        )

    def _finished(self, attempt: _Attempt, answers: bool) -> None:
        if self._running.get(attempt.key) is attempt:
            del self._running[attempt.key]
            self._answers[attempt.key] = answers
        # A callback of the connect itself: start the next ones after it.
        self.reactor.callLater(0, self._pump)
