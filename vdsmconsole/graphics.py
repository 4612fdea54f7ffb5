"""A VM's graphics endpoints (VNC, SPICE, RDP): their description as
``create`` takes it, for both sides.  Pure: no I/O.

``create`` params may carry ``graphics``: a list of ``{type, host, port}``
or ``{type, path}`` (a unix socket, as qemu's ``-vnc unix:PATH`` makes),
at most one of each type.  A ``vnc`` endpoint may carry a ``password``: the
server completes the VNC authentication itself and never returns, logs or
hands the password to a client (``public()`` leaves it out, ``repr`` hides
it).  Only ``vnc`` takes a password: a SPICE ticket or RDP credentials
would have to reach the viewer, which is what keeping it here avoids.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vdsmconsole.spec import GRAPHICS_TYPES, SpecError, parse_port

__all__ = ["GraphicsEndpoint", "MAX_PASSWORD_CHARS", "parse_graphics"]

MAX_PASSWORD_CHARS = 64  # VNC authentication uses the first 8 bytes


@dataclass(frozen=True)
class GraphicsEndpoint:
    """Where one graphical console of a VM answers."""

    type: str  # vnc, spice or rdp
    host: str = ""
    port: int = 0
    path: str = ""  # a unix socket instead of host and port
    password: str = field(default="", repr=False, compare=False)

    @property
    def address(self) -> str:
        """For logs and errors: ``host:port`` or the socket path."""
        if self.path:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def public(self) -> dict[str, Any]:
        """What list(fullStatus) and getVmStats show: never the password."""
        if self.path:
            return {"type": self.type, "path": self.path}
        return {"type": self.type, "host": self.host, "port": self.port}

    def to_persist(self) -> dict[str, Any]:
        """What the registry file keeps (with the password: mode 0600)."""
        entry = self.public()
        if self.password:
            entry["password"] = self.password
        return entry


def _endpoint(desc: object) -> GraphicsEndpoint:
    if not isinstance(desc, Mapping):
        raise SpecError("each graphics endpoint must be a struct")
    kind = desc.get("type")
    if kind not in GRAPHICS_TYPES:
        raise SpecError(
            f"graphics type must be one of {', '.join(GRAPHICS_TYPES)}, "
            f"not {reprlib.repr(kind)}"
        )
    password = desc.get("password", "")
    if not isinstance(password, str) or "\x00" in password:
        raise SpecError("a graphics password must be a string")
    if len(password) > MAX_PASSWORD_CHARS:
        raise SpecError(f"a graphics password has at most {MAX_PASSWORD_CHARS} chars")
    if password and kind != "vnc":
        raise SpecError(f"only vnc endpoints take a password, not {kind}")
    path = desc.get("path")
    if path is not None:
        if "host" in desc or "port" in desc:
            raise SpecError(f"{kind} endpoint: either path or host and port")
        if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
            raise SpecError(f"{kind} endpoint path must be absolute")
        return GraphicsEndpoint(kind, path=path, password=password)
    host = desc.get("host")
    if not isinstance(host, str) or not host or "\x00" in host or "/" in host:
        raise SpecError(f"{kind} endpoint needs a host and port, or a path")
    port = parse_port(desc.get("port"), f"{kind} endpoint port")
    return GraphicsEndpoint(kind, host=host, port=port, password=password)


def parse_graphics(value: object) -> tuple[GraphicsEndpoint, ...]:
    """Validate ``create``'s ``graphics``; raise SpecError if malformed."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise SpecError("graphics must be an array of endpoints")
    endpoints = tuple(_endpoint(desc) for desc in value)
    types = [e.type for e in endpoints]
    for kind in GRAPHICS_TYPES:
        if types.count(kind) > 1:
            raise SpecError(f"at most one {kind} endpoint per VM")
    return endpoints
