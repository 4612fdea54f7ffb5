"""Which host name and URL a console answer points the caller at.

The caller reached this server by some name: the one in its ``Host`` header
(HTTP/2's ``:authority``), when that is a valid host name or address, is the
name it can reach the tunnel by too.  Anything else there (empty, a port
alone, characters no host name has) is not echoed: the answer names the
local address the connection arrived at instead.  Pure apart from reading
the request.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import quote

from vdsmconsole.spec import TUNNEL_PATH

__all__ = ["request_host", "tunnel_path", "tunnel_url", "url_host"]

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_HOST_PORT = re.compile(r"(?P<host>\[[^\]]*\]|[^:\[\]]*)(?::(?P<port>[0-9]{1,5}))?")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def valid_host(text: str) -> bool:
    """A DNS host name (RFC 1123 labels) or an IPv4/IPv6 address, bare."""
    if _is_ip(text):
        return True
    name = text.removesuffix(".")
    return (
        0 < len(name) <= 253
        and not _is_ip(name)
        and all(_LABEL.fullmatch(label) for label in name.split("."))
    )


def host_from_header(value: bytes | None) -> str | None:
    """The host part of a Host header if it is a valid name or address."""
    if not value:
        return None
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    found = _HOST_PORT.fullmatch(text)
    if found is None:
        return None
    host = found.group("host")
    if host.startswith("["):
        host = host[1:-1]
        return host if ":" in host and _is_ip(host) else None
    return host if valid_host(host) and ":" not in host else None


def request_host(request: Any) -> str:
    """The host the caller used (Host header), else the connection's local address."""
    host = host_from_header(request.getHeader(b"host"))
    if host is not None:
        return host
    return str(request.getHost().host)


def url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def tunnel_path(vm_id: str, protocol: str) -> str:
    """``/consoleTunnel/<vmId>?protocol=P``: where this server tunnels a console."""
    return f"{TUNNEL_PATH}{quote(vm_id, safe='')}?protocol={protocol}"


def tunnel_url(host: str, port: int, vm_id: str, protocol: str, token: str) -> str:
    """The URL remoteConsole answers: the tunnel, with the token."""
    return (
        f"https://{url_host(host)}:{port}{tunnel_path(vm_id, protocol)}&token={token}"
    )
