"""What the resources share: configuration, registry, audit, authorization, TLS,
console tokens.

It lives below everything that uses it (rpc, streams, the service that
assembles them), so that none of them imports the module above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vdsmconsole.core.registry import Registry
from vdsmconsole.server.audit import AuditLog
from vdsmconsole.server.authz import Authorizer
from vdsmconsole.server.config import Config
from vdsmconsole.server.graphicsprobe import GraphicsProbe
from vdsmconsole.server.policy import SourcePolicy
from vdsmconsole.server.tls.reload import ServerTLS
from vdsmconsole.server.tokens.store import TokenStore


@dataclass
class ServerContext:
    """What the resources share: configuration, registry, audit, clock, and
    what consoles may point at."""

    config: Config
    reactor: Any
    registry: Registry = field(init=False)
    audit: AuditLog = field(init=False)
    tokens: TokenStore = field(init=False)  # console tokens (remoteConsole)
    port: int = 0
    web_port: int = 0  # the [web] listener's, once listening (0: off)
    tls: ServerTLS | None = None
    authz: Authorizer = field(default_factory=Authorizer)
    policy: SourcePolicy = field(default_factory=SourcePolicy)
    # Whether graphics endpoints answer (None: shown as not answering).
    graphics_probe: GraphicsProbe | None = None
    # The Prometheus registry and collector (server/metrics/setup.py).
    metrics: Any = None
    # libvirt discovery, when [libvirt] uri is set (server/libvirt/).
    libvirt: Any = None
