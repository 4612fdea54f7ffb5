"""What every tunnel shares: who it is for, its log lines and audit records,
its place among the site's open tunnels (cut when the server stops)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from vdsmconsole.identity import PeerIdentity
from vdsmconsole.server.audit import AuditLog
from vdsmconsole.server.tunnels.takeover import ViewerLink

log = Logger(namespace="vdsmconsole.tunnels")

# After a close, how long a side that reads nothing may hold its connection.
CLOSE_GRACE = 15.0


def abort_if_open(transport: Any) -> None:
    """Cut a connection still open after its grace (a peer not reading)."""
    if getattr(transport, "connected", False) and not getattr(
        transport, "disconnected", False
    ):
        transport.abortConnection()


@dataclass(frozen=True)
class TunnelGrant:
    """An admitted tunnel: for whom, to what, with which role."""

    identity: PeerIdentity
    vm_id: str
    protocol: str
    role: str
    token_used: bool = False


class Tunnel:
    """One open tunnel; subclasses move the bytes.

    ``opened`` and ``closed`` write one audit record each (the audit log
    writes it to the server's log too): identity, vmId, protocol, role and,
    on close, the bytes each way and why it ended.
    """

    def __init__(
        self, link: ViewerLink, grant: TunnelGrant, audit: AuditLog, site: Any
    ) -> None:
        self.link = link
        self.grant = grant
        self.audit = audit
        self.site = site
        self.done = False
        self.isOpen = False  # answered 200 and audited as open
        self.why = ""

    def opened(self, **fields: Any) -> None:
        self.isOpen = True
        self.site.tunnels.add(self)
        self.link.whenLost(lambda: self.close("the viewer closed"))
        grant = self.grant
        self.audit.record(
            "tunnel-open",
            grant.identity,
            vmId=grant.vm_id,
            protocol=grant.protocol,
            role=grant.role,
            token=grant.token_used,
            **fields,
        )

    def close(self, why: str) -> None:
        """End the tunnel (once): both sides close after what is in flight."""
        if self.done:
            return
        self.done = True
        self.why = why
        self.site.tunnels.discard(self)
        self.release()
        self.link.close()
        if not self.isOpen:
            return  # refused before it opened: its answer said why
        self.site.reactor.callLater(CLOSE_GRACE, self._abortViewer)
        grant = self.grant
        self.audit.record(
            "tunnel-close",
            grant.identity,
            vmId=grant.vm_id,
            protocol=grant.protocol,
            bytesToViewer=self.link.sent,
            bytesFromViewer=self.link.received,
            why=why,
            **self.closeFields(),
        )

    def _abortViewer(self) -> None:
        if not self.link.gone:
            self.link.abort()

    def cut(self) -> None:
        """The server stops: close both sides now."""
        self.link.abort()
        self.close("the server is stopping")

    def release(self) -> None:
        """Let go of what the subclass holds (the endpoint, the console)."""

    def closeFields(self) -> dict[str, Any]:
        """What the subclass adds to the close record."""
        return {}


def cut_tunnels(site: Any) -> None:
    """Cut every open tunnel of ``site`` (the server stops)."""
    for tunnel in list(site.tunnels):
        tunnel.cut()


def close_vm_tunnels(site: Any, vm_id: str) -> None:
    """Close the tunnels of a destroyed VM (a serial one ends with its console)."""
    for tunnel in list(site.tunnels):
        if tunnel.grant.vm_id == vm_id:
            tunnel.close("the VM was destroyed")
