"""The web listener's site and port (``[web] enabled = true``).

The same site class as the mTLS port (its header limits, deadlines and
graceful stop), with the web root: pages, websockets and assets only.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

from vdsmconsole.server.connlimits import LimitedTLSFactory
from vdsmconsole.server.context import ServerContext
from vdsmconsole.server.http.site import ConsoleSite, SiteLimits
from vdsmconsole.server.tls.reload import ServerTLS
from vdsmconsole.server.tunnels.tunnel import close_vm_tunnels
from vdsmconsole.server.web.resources import WebRoot
from vdsmconsole.server.web.tls import WebTLS
from vdsmconsole.transports import EagerServer


class WebSite(ConsoleSite):
    """ALPN offers HTTP/1.1 only: browsers' websockets need it (no RFC 8441)."""

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]


def build_web_site(context: ServerContext, limits: SiteLimits) -> ConsoleSite:
    site = WebSite(WebRoot(context), context.reactor, limits)
    # A destroyed VM's graphics websockets close, as its tunnels do.
    context.registry.destroyed.append(lambda vm_id: close_vm_tunnels(site, vm_id))
    return site


def listen_web(
    context: ServerContext,
    site: ConsoleSite,
    tls: ServerTLS,
    limits: Any,
    port: int | None = None,
) -> Any:
    """Listen on ``[web] bind:port`` (bind "" is ``[server] bind``; ``port``
    None is ``[web] port``)."""
    config = context.config
    factory = LimitedTLSFactory(WebTLS(tls), site, limits, context.reactor)
    bind = config.web_bind or config.bind
    port = config.web_port if port is None else port
    listening = context.reactor.listenTCP(port, factory, interface=bind)
    if isinstance(listening, tcp.Port):
        # Accepted connections send small writes at once (transports.py), as
        # the mTLS port's do: a keystroke's echo or a pointer's update to a
        # browser without another reactor round.
        listening.transport = EagerServer
    return listening
