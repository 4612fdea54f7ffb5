"""Server configuration: a TOML file, then command-line flags on top.

Every key, its type and its default live in ``FIELDS`` below; the example file
``contrib/vdsmconsole.conf.example`` documents the same keys, and a test keeps
the two in step.  A bad file or value raises ``ConfigError`` naming the key,
which the command line turns into one line and exit status 2.
"""

from __future__ import annotations

import ipaddress
import math
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vdsmconsole.server.authz import ROLES
from vdsmconsole.server.policy import (
    DEFAULT_PTY_OWNERS,
    DEFAULT_TCP_ENDPOINTS,
    DEFAULT_UNIX_DENIED,
    DEFAULT_UNIX_PATHS,
    SourcePolicy,
)
from vdsmconsole.server.web.origin import normal_origin
from vdsmconsole.sources.options import (
    COALESCE_DELAY,
    INTERACTIVE_WINDOW,
    MAX_COALESCE_DELAY,
    MAX_INTERACTIVE_WINDOW,
)
from vdsmconsole.spec import DEFAULT_PORT

DEFAULT_PKI = "/etc/pki/vdsm"
DEFAULT_WEB_PORT = 6100  # ovirt-websocket-proxy's


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message names the key."""


@dataclass(frozen=True)
class Config:
    bind: str = "0.0.0.0"  # noqa: S104 - the management port serves the network
    port: int = DEFAULT_PORT
    # The demo's: when ``port`` is taken at listen time, any free port instead
    # (a probe before listening would race another program for the port).
    any_port_if_busy: bool = False
    state_dir: Path = Path("/var/lib/vdsmconsole")
    ca_file: Path = Path(DEFAULT_PKI, "certs/cacert.pem")
    cert_file: Path = Path(DEFAULT_PKI, "certs/vdsmcert.pem")
    key_file: Path = Path(DEFAULT_PKI, "keys/vdsmkey.pem")
    # A CRL file (PEM or DER) from the CA; "" means no revocation checking.
    crl_file: str = ""
    require_client_usage: bool = True
    expiry_warning_days: int = 30
    rpc_max_body: int = 1024 * 1024
    shutdown_timeout: float = 5.0
    handshake_timeout: float = 10.0
    header_timeout: float = 30.0
    first_request_timeout: float = 10.0
    max_connections_per_address: int = 1024
    max_connections_per_identity: int = 2048
    descriptor_reserve: int = 128
    ring_bytes: int = 1024 * 1024
    log_file_bytes: int = 8 * 1024 * 1024
    log_keep_files: int = 3
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    client_buffer_bytes: int = 256 * 1024
    # A quiet console's output may wait this long (sources/options.py).
    coalesce_delay: float = COALESCE_DELAY
    interactive_window: float = INTERACTIVE_WINDOW
    spawn_commands: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    unix_paths: tuple[str, ...] = DEFAULT_UNIX_PATHS
    unix_denied: tuple[str, ...] = DEFAULT_UNIX_DENIED
    tcp_endpoints: tuple[str, ...] = DEFAULT_TCP_ENDPOINTS
    pty_owners: tuple[str, ...] = DEFAULT_PTY_OWNERS
    # identity pattern -> role, in file order; None: every certificate is admin
    authorization: Mapping[str, str] | None = None
    # The [web] listener for browsers (server/web/): off unless enabled.
    web_enabled: bool = False
    web_port: int = DEFAULT_WEB_PORT
    web_any_port_if_busy: bool = False  # the demo's only: not a file key
    web_bind: str = ""  # "": the [server] bind address
    web_allowed_origins: tuple[str, ...] = ()  # (): the listener's own name
    web_assets: str = ""  # the directory tools/assets.sh installed into
    websocket_max_message: int = 1024 * 1024
    websocket_ping_interval: float = 30.0
    websocket_ping_timeout: float = 30.0
    # The plain /metrics listener: off (0) unless a port is set; loopback only.
    metrics_bind: str = "127.0.0.1"
    metrics_port: int = 0
    # Consoles with vm_id series of their own (the others: totals only).
    metrics_console_series: int = 500
    # libvirt discovery: "" (off) or a URI such as "qemu:///system".
    libvirt_uri: str = ""

    def with_pki(self, pki_dir: Path) -> Config:
        """Point the three TLS files at a directory in VDSM's layout."""
        return replace(
            self,
            ca_file=pki_dir / "certs/cacert.pem",
            cert_file=pki_dir / "certs/vdsmcert.pem",
            key_file=pki_dir / "keys/vdsmkey.pem",
        )

    @property
    def crl_path(self) -> Path | None:
        """The CRL file, or None when revocation is not checked."""
        return Path(self.crl_file) if self.crl_file else None


# (section, key) -> (Config attribute, type).  One table for parsing and docs.
FIELDS: dict[tuple[str, str], tuple[str, type]] = {
    ("server", "bind"): ("bind", str),
    ("server", "port"): ("port", int),
    ("server", "state_dir"): ("state_dir", Path),
    ("server", "rpc_max_body"): ("rpc_max_body", int),
    ("server", "shutdown_timeout"): ("shutdown_timeout", float),
    ("server", "handshake_timeout"): ("handshake_timeout", float),
    ("server", "header_timeout"): ("header_timeout", float),
    ("server", "first_request_timeout"): ("first_request_timeout", float),
    ("server", "max_connections_per_address"): ("max_connections_per_address", int),
    ("server", "max_connections_per_identity"): ("max_connections_per_identity", int),
    ("server", "descriptor_reserve"): ("descriptor_reserve", int),
    ("tls", "ca"): ("ca_file", Path),
    ("tls", "cert"): ("cert_file", Path),
    ("tls", "key"): ("key_file", Path),
    ("tls", "crl"): ("crl_file", str),
    ("tls", "require_client_usage"): ("require_client_usage", bool),
    ("tls", "expiry_warning_days"): ("expiry_warning_days", int),
    ("console", "ring_bytes"): ("ring_bytes", int),
    ("console", "log_file_bytes"): ("log_file_bytes", int),
    ("console", "log_keep_files"): ("log_keep_files", int),
    ("console", "reconnect_initial"): ("reconnect_initial", float),
    ("console", "reconnect_max"): ("reconnect_max", float),
    ("console", "client_buffer_bytes"): ("client_buffer_bytes", int),
    ("console", "coalesce_delay"): ("coalesce_delay", float),
    ("console", "interactive_window"): ("interactive_window", float),
    ("sources", "unix_paths"): ("unix_paths", tuple),
    ("sources", "unix_denied"): ("unix_denied", tuple),
    ("sources", "tcp_endpoints"): ("tcp_endpoints", tuple),
    ("sources", "pty_owners"): ("pty_owners", tuple),
    ("web", "enabled"): ("web_enabled", bool),
    ("web", "port"): ("web_port", int),
    ("web", "bind"): ("web_bind", str),
    ("web", "allowed_origins"): ("web_allowed_origins", tuple),
    ("web", "assets"): ("web_assets", str),
    ("web", "max_message_bytes"): ("websocket_max_message", int),
    ("web", "ping_interval"): ("websocket_ping_interval", float),
    ("web", "ping_timeout"): ("websocket_ping_timeout", float),
    ("metrics", "bind"): ("metrics_bind", str),
    ("metrics", "port"): ("metrics_port", int),
    ("metrics", "console_series"): ("metrics_console_series", int),
    ("libvirt", "uri"): ("libvirt_uri", str),
}
# Keys that must be positive when set.
POSITIVE = {
    "rpc_max_body",
    "shutdown_timeout",
    "handshake_timeout",
    "header_timeout",
    "first_request_timeout",
    "max_connections_per_address",
    "max_connections_per_identity",
    "descriptor_reserve",
    "ring_bytes",
    "log_file_bytes",
    "reconnect_initial",
    "reconnect_max",
    "client_buffer_bytes",
    "websocket_max_message",
    "websocket_ping_interval",
    "websocket_ping_timeout",
}


def _convert(name: str, kind: type, value: Any) -> Any:
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name}: expected a path string, got {value!r}")
        return Path(value)
    if kind is tuple:
        # A list of patterns; a lone string is a likely slip for a list of one.
        if not isinstance(value, list) or not all(
            isinstance(item, str) and item for item in value
        ):
            raise ConfigError(f"{name}: expected a list of non-empty strings")
        return tuple(value)
    if kind is bool:
        # Only TOML's true and false: 0, 1 or "yes" are more likely typos.
        if not isinstance(value, bool):
            raise ConfigError(
                f"{name}: expected true or false, got {type(value).__name__} {value!r}"
            )
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(
            f"{name}: expected {kind.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def check_values(config: Config) -> Config:
    """Range checks shared by the file and the command-line flags."""
    if not 0 <= config.port < 65536:
        raise ConfigError(f"server.port: must be 0-65535, got {config.port}")
    if not 0 <= config.web_port < 65536:
        raise ConfigError(f"web.port: must be 0-65535, got {config.web_port}")
    _check_origins(config.web_allowed_origins)
    if config.log_keep_files < 0:
        raise ConfigError("console.log_keep_files: must be 0 or more")
    if config.expiry_warning_days < 0:
        raise ConfigError("tls.expiry_warning_days: must be 0 or more")
    if not 0 <= config.metrics_port < 65536:
        raise ConfigError(f"metrics.port: must be 0-65535, got {config.metrics_port}")
    if not is_loopback(config.metrics_bind):
        raise ConfigError(
            f"metrics.bind: must be a loopback address (127.0.0.1, ::1), "
            f"got {config.metrics_bind!r}: the plain listener has no TLS"
        )
    if config.metrics_console_series < 0:
        raise ConfigError("metrics.console_series: must be 0 or more")
    # "not a <= x <= b" also refuses nan.
    if not 0 <= config.coalesce_delay <= MAX_COALESCE_DELAY:
        raise ConfigError(
            f"console.coalesce_delay: must be 0 to {MAX_COALESCE_DELAY} seconds "
            f"(0: never hold output), got {config.coalesce_delay!r}"
        )
    if not 0 <= config.interactive_window <= MAX_INTERACTIVE_WINDOW:
        raise ConfigError(
            f"console.interactive_window: must be 0 to {MAX_INTERACTIVE_WINDOW:.0f} "
            f"seconds, got {config.interactive_window!r}"
        )
    for (section, key), (attr, _kind) in FIELDS.items():
        value = getattr(config, attr)
        # nan and inf are valid TOML floats but never a sane size or time.
        if attr in POSITIVE and not (0 < value < math.inf):
            raise ConfigError(f"{section}.{key}: must be positive and finite")
    _check_sources(config)
    return config


def _check_origins(origins: tuple[str, ...]) -> None:
    for origin in origins:
        if normal_origin(origin) is None:
            raise ConfigError(
                f"web.allowed_origins: {origin!r} is not an origin "
                "(scheme://host[:port], https or http)"
            )


def is_loopback(address: str) -> bool:
    """An IPv4 or IPv6 loopback address (a name is not: it may resolve
    elsewhere tomorrow)."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _check_sources(config: Config) -> None:
    """Each [sources] pattern compiles (policy.SourcePolicy says why not)."""
    for key in ("unix_paths", "unix_denied", "tcp_endpoints", "pty_owners"):
        try:
            # One key at a time, so that the error names the key.
            SourcePolicy(**{key: getattr(config, key)})
        except ValueError as e:
            raise ConfigError(f"sources.{key}: {e}") from None


def parse_config(data: Mapping[str, Any], base: Config | None = None) -> Config:
    """Build a Config from parsed TOML; unknown keys are errors (typos matter)."""
    config = base or Config()
    changes: dict[str, Any] = {}
    known_sections = {section for section, _ in FIELDS} | {"spawn", "authorization"}
    for section, table in data.items():
        if section not in known_sections:
            raise ConfigError(f"{section}: unknown section")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{section}: expected a table")
        if section == "spawn":
            changes["spawn_commands"] = _parse_spawn(table)
            continue
        if section == "authorization":
            changes["authorization"] = _parse_authorization(table)
            continue
        for key, value in table.items():
            if (section, key) not in FIELDS:
                raise ConfigError(f"{section}.{key}: unknown key")
            attr, kind = FIELDS[section, key]
            changes[attr] = _convert(f"{section}.{key}", kind, value)
    return check_values(replace(config, **changes))


def _parse_authorization(table: Mapping[str, Any]) -> dict[str, str]:
    result = {}
    for pattern, role in table.items():
        if role not in ROLES:
            raise ConfigError(
                f"authorization.{pattern}: role must be one of "
                f"{', '.join(sorted(ROLES))}, not {role!r}"
            )
        result[pattern] = role
    return result


def _parse_spawn(table: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    commands = table.get("commands", {})
    extra = set(table) - {"commands"}
    if extra:
        raise ConfigError(f"spawn.{sorted(extra)[0]}: unknown key")
    if not isinstance(commands, Mapping):
        raise ConfigError("spawn.commands: expected a table of name = [argv...]")
    result = {}
    for name, argv in commands.items():
        if (
            not isinstance(argv, list)
            or not argv
            or not all(isinstance(a, str) and a for a in argv)
        ):
            raise ConfigError(
                f"spawn.commands.{name}: expected a non-empty list of strings"
            )
        result[name] = (installed_program(argv[0]), *argv[1:])
    return result


def installed_program(name: str) -> str:
    """A bare program name found beside the server's interpreter, made absolute.

    pip installs console scripts (``vdsmconsole-demoguest``) and the venv's
    ``python3`` beside the interpreter, in a directory a service manager's
    PATH lacks; any other bare name is left for PATH, as exec does.
    """
    beside = Path(sys.executable).parent / name
    if "/" not in name and beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    return name


def load_config(path: Path | None, base: Config | None = None) -> Config:
    """Read a TOML file (or just the defaults when ``path`` is None)."""
    if path is None:
        return check_values(base or Config())
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 ({e.reason})") from None
    return parse_config(data, base)
