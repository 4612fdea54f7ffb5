"""A local TCP port for a tunnel: each connection to it its own tunnel.

What ``vdsmconsole-client tunnel VMID --protocol P`` runs: a native viewer
(``vncviewer``, ``remote-viewer``, ``xfreerdp``, ``socat`` for serial)
connects to the local port, and that connection is spliced to a fresh
``CONNECT`` tunnel (``Tunnel.splice``: backpressure both ways).  The local
side is not read until its tunnel is open, and is closed with the line the
server refused it with (to ``on_error``) when the tunnel cannot be opened.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from vdsmconsole.client.errors import ClientError
from vdsmconsole.client.tunnel import Tunnel

__all__ = ["TunnelPort", "viewer_hint"]


def viewer_hint(protocol: str, host: str, port: int) -> str:
    """How a usual native viewer of ``protocol`` is pointed at host:port."""
    netloc = f"[{host}]" if ":" in host else host
    if protocol == "vnc":
        return f"vncviewer {netloc}::{port}"  # '::' means a port, not a display
    if protocol == "spice":
        return f"remote-viewer spice://{netloc}:{port}"
    if protocol == "rdp":
        return f"xfreerdp /v:{netloc}:{port}"
    return f"socat -,raw,echo=0 tcp:{netloc}:{port}"


class _LocalSide(Protocol):
    """One local connection: held (not read) until its tunnel is open."""

    def __init__(self, owner: TunnelPort) -> None:
        self.owner = owner
        self.tunnel: Tunnel | None = None
        self.opening: defer.Deferred[Tunnel] | None = None
        self.gone = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.pauseProducing()  # nothing to send it to yet
        self.owner.sides.add(self)
        self.opening = defer.maybeDeferred(self.owner.open)
        self.opening.addCallbacks(self._opened, self._refused)

    def _opened(self, tunnel: Tunnel) -> None:
        self.opening = None
        if self.gone:
            tunnel.close()
            return
        self.tunnel = tunnel
        transport: Any = self.transport
        tunnel.splice(transport)
        transport.resumeProducing()

    def _refused(self, reason: Failure) -> None:
        self.opening = None
        if self.gone:
            return  # the viewer left first (and the opening was cancelled)
        transport: Any = self.transport
        peer = transport.getPeer()
        error = reason.value
        text = str(error) if isinstance(error, ClientError) else repr(error)
        self.owner.on_error(f"tunnel for {peer.host}:{peer.port}: {text}")
        transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        self.owner.sides.discard(self)
        if self.tunnel is not None:
            self.tunnel.close()
        if self.opening is not None:
            self.opening.cancel()


class TunnelPort:
    """Listens on ``host:port`` (0: any free port); ``stop()`` stops
    listening and closes every connection and its tunnel.

    ``open`` opens one tunnel (``ConsoleClient.tunnel`` with the VM and the
    protocol bound); ``on_error`` gets one line for each tunnel that could
    not be opened.
    """

    def __init__(
        self,
        reactor: Any,
        open_tunnel: Callable[[], defer.Deferred[Tunnel]],
        protocol: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        on_error: Callable[[str], object] = lambda line: None,
    ) -> None:
        self.open = open_tunnel
        self.protocol = protocol
        self.on_error = on_error
        self.sides: set[_LocalSide] = set()
        factory = Factory()
        factory.buildProtocol = lambda addr: _LocalSide(self)  # type: ignore[method-assign]
        self.listening: Any = reactor.listenTCP(port, factory, interface=host)
        address = self.listening.getHost()
        self.host: str = address.host
        self.port: int = address.port

    def describe(self) -> str:
        """One line a user (and a script) can use: where, and a viewer's way."""
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        hint = viewer_hint(self.protocol, self.host, self.port)
        return f"listening on {netloc}:{self.port} ({hint})"

    def stop(self) -> defer.Deferred[None]:
        for side in list(self.sides):
            transport: Any = side.transport
            transport.loseConnection()
            if side.tunnel is not None:
                side.tunnel.close()
        stopped: defer.Deferred[None] = defer.maybeDeferred(
            self.listening.stopListening
        )
        return stopped
