"""The wire's vocabulary, for both sides: the port and paths, the XML-RPC
methods and their parameters, and the validation of vmIds and console
descriptions.

Nothing here does I/O.  Everything that later touches a path or starts a
process has passed through these functions first; the server's
introspection and the client's command line read the methods from here.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

VM_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SOURCE_TYPES = ("pty", "unix", "tcp", "spawn")
# Remote consoles: the graphics a VM may have, and what a token or a tunnel
# may name (the serial console, or one of its graphics).
GRAPHICS_TYPES = ("vnc", "spice", "rdp")
REMOTE_PROTOCOLS = ("serial", *GRAPHICS_TYPES)

DEFAULT_PORT = 54321  # VDSM's management port
RPC_PATH = "/RPC2"
STREAM_PATH = "/consoleStream/"  # then the vmId
TUNNEL_PATH = "/consoleTunnel/"  # then the vmId; CONNECT ...?protocol=P
CONNECT_INFO_PATH = "/os-console-auth-tokens/"  # then the token (Nova's shape)
METRICS_PATH = "/metrics"  # Prometheus' scrape (server/metrics/)
DEFAULT_TOKEN_TTL = 600  # seconds, as Nova's [consoleauth] token_ttl
MAX_TOKEN_TTL = 7 * 24 * 3600
# secrets.token_urlsafe(32): 32 random bytes, 43 URL-safe characters.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
DEFAULT_READ_BYTES = 64 * 1024  # consoleRead's maxBytes when not given

REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One parameter of an XML-RPC method: name, XML-RPC type, default."""

    name: str
    type: str  # boolean, int, string, base64, array or struct
    default: object = REQUIRED


# The methods and their parameters, in wire order.  Every answer is a struct.
METHODS: dict[str, tuple[Param, ...]] = {
    "ping": (),
    "getVdsCapabilities": (),
    "list": (Param("fullStatus", "boolean", False), Param("vmList", "array", ())),
    "create": (Param("params", "struct"),),
    "destroy": (Param("vmId", "string"),),
    "getVmStats": (Param("vmId", "string"),),
    "getAllVmStats": (),
    "consoleRead": (
        Param("vmId", "string"),
        Param("offset", "int", 0),
        Param("maxBytes", "int", DEFAULT_READ_BYTES),
    ),
    "consoleWrite": (Param("vmId", "string"), Param("data", "base64")),
    "remoteConsole": (
        Param("vmId", "string"),
        Param("protocol", "string"),
        Param("params", "struct", {}),
    ),
    "revokeConsoleTokens": (Param("vmId", "string"),),
    "consoleConnectInfo": (Param("token", "string"),),
}


def method_signatures(method: str) -> list[list[str]]:
    """What ``system.methodSignature`` answers for ``method``: the answer's
    type, then the parameters, once for each number of them it accepts."""
    params = METHODS[method]
    required = sum(1 for p in params if p.default is REQUIRED)
    return [
        ["struct", *(p.type for p in params[:n])]
        for n in range(required, len(params) + 1)
    ]


class SpecError(ValueError):
    """A vmId or console description is missing or malformed."""


class NotAllowed(ValueError):
    """The configuration does not let a console point there."""


class NoSuchSource(ValueError):
    """The console's target does not exist, or is not what its type says."""


def is_valid_vm_id(value: object) -> bool:
    """True for 1-64 letters, digits, '.', '_', '-', starting alphanumeric."""
    return isinstance(value, str) and VM_ID_PATTERN.fullmatch(value) is not None


def validate_vm_id(value: object) -> str:
    if not is_valid_vm_id(value):
        # reprlib: a huge bad vmId is not echoed back whole.
        raise SpecError(f"invalid vmId {reprlib.repr(value)}")
    assert isinstance(value, str)
    return value


@dataclass(frozen=True)
class ConsoleSpec:
    """Where a guest console lives.  Exactly the fields its type needs are set."""

    type: str
    path: str = ""
    host: str = ""
    port: int = 0
    command: str = ""

    def to_wire(self) -> dict[str, Any]:
        """The description as create() takes it and list(fullStatus) shows it."""
        if self.type in ("pty", "unix"):
            return {"type": self.type, "path": self.path}
        if self.type == "tcp":
            return {"type": "tcp", "host": self.host, "port": self.port}
        return {"type": "spawn", "command": self.command}


def parse_port(port: object, what: str = "console port") -> int:
    """A TCP port, 1-65535, given as an int or a decimal string."""
    if isinstance(port, str) and port.isascii() and port.isdigit() and len(port) < 6:
        port = int(port)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise SpecError(f"{what} must be 1-65535, not {reprlib.repr(port)}")
    return port


def is_valid_token(value: object) -> bool:
    """The shape of a console token (not whether it is known)."""
    return isinstance(value, str) and TOKEN_PATTERN.fullmatch(value) is not None


def _require_str(desc: Mapping[str, Any], key: str, kind: str) -> str:
    value = desc.get(key)
    if not isinstance(value, str) or not value or "\x00" in value:
        raise SpecError(f"console type {kind!r} needs a non-empty string {key!r}")
    return value


def parse_console_spec(
    desc: object, spawn_commands: Mapping[str, object] = {}
) -> ConsoleSpec:
    """Validate a console description from create(); raise SpecError if bad.

    ``spawn_commands`` names the commands the configuration allows; a spawn
    console refers to one by name and never carries an argv.
    """
    if not isinstance(desc, Mapping):
        raise SpecError("console description must be a struct")
    kind = desc.get("type")
    if kind not in SOURCE_TYPES:
        raise SpecError(
            f"console type must be one of {', '.join(SOURCE_TYPES)}, not {kind!r}"
        )
    if kind in ("pty", "unix"):
        path = _require_str(desc, "path", kind)
        if not path.startswith("/"):
            raise SpecError(f"console path must be absolute, not {path!r}")
        return ConsoleSpec(type=kind, path=path)
    if kind == "tcp":
        host = _require_str(desc, "host", kind)
        return ConsoleSpec(type="tcp", host=host, port=parse_port(desc.get("port")))
    command = _require_str(desc, "command", "spawn")
    if command not in spawn_commands:
        raise SpecError(f"spawn command {command!r} is not named in the configuration")
    return ConsoleSpec(type="spawn", command=command)
