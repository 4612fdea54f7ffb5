"""unix and tcp chardevs: connected to, and retried with backoff when lost."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import ClientService
from twisted.internet import abstract
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import (
    Factory,
    Protocol,
    connectionDone,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from vdsmconsole.core.interfaces import SourceState
from vdsmconsole.sources.base import _log, _SourceBase
from vdsmconsole.sources.options import Reactor, SourceOptions, backoff_delay


class _StreamProtocol(Protocol):
    def __init__(self, source: _StreamSource) -> None:
        self._source = source

    def connectionMade(self) -> None:
        self._source._connected(self)

    def dataReceived(self, data: bytes) -> None:
        self._source._emitData(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._source._disconnected(self, reason)


class _StreamFactory(Factory):
    def __init__(self, source: _StreamSource) -> None:
        self._source = source

    def buildProtocol(self, addr: IAddress | None) -> _StreamProtocol:
        return _StreamProtocol(self._source)


@implementer(IStreamClientEndpoint)
class _WatchedEndpoint:
    """Counts connection attempts and remembers why they failed.

    ClientService retries on its own but keeps the failures to itself; an
    operator asking why a console is not connected wants them.
    """

    def __init__(self, endpoint: Any, source: _StreamSource) -> None:
        self._endpoint = endpoint
        self._source = source

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self._source._attempts += 1
        connecting: Deferred[IProtocol] = self._endpoint.connect(protocolFactory)
        return connecting.addErrback(self._failed)

    def _failed(self, failure: Failure) -> Failure:
        self._source._attemptFailed(failure)
        return failure


class _StreamSource(_SourceBase):
    """A qemu socket chardev (server=on) that we connect to, again and again."""

    def __init__(self, options: SourceOptions, reactor: Reactor) -> None:
        super().__init__(reactor, options)
        self._options = options
        self._service: ClientService | None = None
        self._protocol: _StreamProtocol | None = None
        self._attempts = 0
        self._failedInARow = 0
        self._connections = 0

    def _endpoint(self) -> Any:
        raise NotImplementedError

    def _where(self) -> str:
        raise NotImplementedError

    def _retryDelay(self, failedAttempts: int) -> float:
        return backoff_delay(
            failedAttempts, self._options.reconnect_initial, self._options.reconnect_max
        )

    def _start(self) -> None:
        self._setState(SourceState.CONNECTING, f"connecting to {self._where()}")
        # The ignores: implementer() is invisible to mypy without mypy-zope.
        self._service = ClientService(
            _WatchedEndpoint(self._endpoint(), self),  # type: ignore[arg-type]
            _StreamFactory(self),  # type: ignore[arg-type]
            retryPolicy=self._retryDelay,
            clock=self._reactor,
        )
        self._service.startService()

    def _connected(self, protocol: _StreamProtocol) -> None:
        transport = protocol.transport
        assert transport is not None
        if self._stopping:
            transport.abortConnection()
            return
        self._protocol = protocol
        self._connections += 1
        self._failedInARow = 0
        self._registerGate(transport)
        self._applyReading()
        self._setState(SourceState.CONNECTED, f"connected to {self._where()}")

    def _disconnected(self, protocol: _StreamProtocol, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._dropGate()
        self._lastError = f"connection lost: {reason.getErrorMessage()}"
        self._setState(SourceState.RECONNECTING, self._lastError)

    def _attemptFailed(self, failure: Failure) -> None:
        if self._stopping and failure.check(CancelledError):
            return
        self._failedInARow += 1
        self._lastError = f"cannot connect: {failure.getErrorMessage()}"
        _log.debug("{source}: {error}", source=self, error=self._lastError)

    def _writeTransport(self) -> Any:
        return None if self._protocol is None else self._protocol.transport

    def _applyReading(self) -> None:
        transport = self._writeTransport()
        if transport is None:
            return
        if self._holdReading:
            transport.pauseProducing()
        else:
            transport.resumeProducing()

    def _stop(self) -> None:
        if self._service is None:
            self._stopDone()
            return
        stopping = self._service.stopService()
        # stopService only asks for a clean close, which waits for input the
        # guest may never take; drop it instead.
        transport = self._writeTransport()
        if transport is not None:
            transport.abortConnection()
        stopping.addBoth(lambda _: self._stopDone())

    def _moreFacts(self) -> dict[str, Any]:
        return {
            "connectAttempts": self._attempts,
            "reconnectAttempts": self._failedInARow,
            "connections": self._connections,
        }


class UnixSource(_StreamSource):
    """qemu ``-chardev socket,path=...,server=on``."""

    kind = "unix"

    def __init__(self, path: str, options: SourceOptions, reactor: Reactor) -> None:
        super().__init__(options, reactor)
        self._path = path

    def _target(self) -> dict[str, Any]:
        return {"path": self._path}

    def _where(self) -> str:
        return self._path

    def _endpoint(self) -> Any:
        return UNIXClientEndpoint(
            self._reactor, self._path, timeout=self._options.connect_timeout
        )


class TcpSource(_StreamSource):
    """qemu ``-chardev socket,host=...,port=...,server=on``."""

    kind = "tcp"

    def __init__(
        self, host: str, port: int, options: SourceOptions, reactor: Reactor
    ) -> None:
        super().__init__(options, reactor)
        self._host = host
        self._port = port

    def _target(self) -> dict[str, Any]:
        return {"host": self._host, "port": self._port}

    def _where(self) -> str:
        return f"{self._host}:{self._port}"

    def _endpoint(self) -> Any:
        timeout = self._options.connect_timeout
        # An address (the usual case for a chardev) is connected to directly:
        # HostnameEndpoint would resolve it in a thread and report each
        # failure only after its 0.3 s attempt delay.
        if abstract.isIPAddress(self._host):
            return TCP4ClientEndpoint(
                self._reactor, self._host, self._port, timeout=timeout
            )
        if abstract.isIPv6Address(self._host):
            return TCP6ClientEndpoint(
                self._reactor, self._host, self._port, timeout=timeout
            )
        return HostnameEndpoint(self._reactor, self._host, self._port, timeout=timeout)
