"""What a console may point at: the trust model of ``create``, enforced.

An admin registers guest consoles; it is trusted to name a guest's serial
console, not to reach whatever the host can reach.  Without a check a ``tcp``
console reads and writes any service the host can connect to (and its
``lastError`` scans ports), a ``unix`` one any socket (libvirt's own, the
container runtime's), and a ``pty`` one any terminal: a user's login terminal
put in raw mode, the password typed there handed to viewers.
``docs/security.rst`` states the model; this module enforces it, from the
configuration's ``[sources]`` section:

- ``unix``: the path as given (normalised) and its real path (symlinks
  resolved) both match an allowed glob and no denied one; the server's state
  directory is always allowed.
- ``tcp``: the host and port match an allowed endpoint pattern; an address is
  compared as an address (``127.0.0.0/8``), a name as a name.
- ``pty``: exactly ``/dev/pts/N`` (no symlink, no ``ptmx``), a pty device,
  whose master is held by a process whose executable is allowed, or by a
  process that a ``spawn`` console of this server started.
- graphics endpoints (VNC, SPICE, RDP): a ``{host, port}`` one as a ``tcp``
  target, a ``{path}`` one as a ``unix`` target.

Everything here is plain functions over the filesystem and ``/proc`` (the
root is injectable): no reactor.  ``RefusedSource`` is what a console
restored from the registry gets when its entry is no longer allowed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed

from vdsmconsole.core.interfaces import SourceSink, SourceState
from vdsmconsole.core.ptyowner import (
    PROC,
    PtyOwner,
    find_pty_owner,
    process_start,
    pts_index,
    read_proc_file,
)
from vdsmconsole.graphics import GraphicsEndpoint
from vdsmconsole.spec import ConsoleSpec, NoSuchSource, NotAllowed

__all__ = [
    "Endpoint",
    "NoSuchSource",
    "NotAllowed",
    "RefusedSource",
    "SourcePolicy",
    "glob_regex",
]

# [sources]'s defaults: what a console may point at (docs/security.rst
# explains it).  Sockets: where libvirt and qemu put guests'
# chardevs, and oVirt's serial console sockets; not /run/libvirt itself, where
# libvirt's own control sockets live.
DEFAULT_UNIX_PATHS = (
    "/var/lib/libvirt/qemu/**",
    "/run/libvirt/qemu/**",
    "/var/run/libvirt/qemu/**",
    "/run/ovirt-vmconsole-console/**",
    "/var/run/ovirt-vmconsole-console/**",
)
# Within those: a guest's QMP/HMP monitor (control of qemu; "migrate exec:"
# runs a command) and its guest agent (guest-exec).
DEFAULT_UNIX_DENIED = ("**/monitor.sock", "**/*.monitor", "**/org.qemu.guest_agent.*")
DEFAULT_TCP_ENDPOINTS = ("127.0.0.0/8:*", "[::1]:*", "localhost:*")
DEFAULT_PTY_OWNERS = ("qemu-system-*", "qemu-kvm")
# Unix98 pty slaves (devpts) are character devices with these majors.
_PTY_SLAVE_MAJORS = range(136, 144)
# A host name pattern: letters, digits, dots, dashes and wildcards.
_HOST_GLOB = re.compile(r"[A-Za-z0-9.*?-]*[A-Za-z0-9.-][A-Za-z0-9.*?-]*")
# How far up from a pty's holder a spawned console's child is looked for.
_MAX_ANCESTORS = 32


# -- patterns --------------------------------------------------------------------


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob: ``*`` and ``?`` within one path component, ``**`` across."""
    parts = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            parts.append(".*")
            i += 2
            continue
        char = pattern[i]
        parts.append(
            "[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char)
        )
        i += 1
    return re.compile("".join(parts), re.DOTALL)


def _path_globs(patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        if not pattern.startswith("/") and not pattern.startswith("**"):
            raise ValueError(f"{pattern!r} is not an absolute path glob")
        compiled.append(glob_regex(pattern))
    return tuple(compiled)


def _ports(text: str, pattern: str) -> tuple[int, int]:
    if text == "*":
        return 1, 65535
    low, dash, high = text.partition("-")
    try:
        first, last = int(low), int(high if dash else low)
    except ValueError:
        first = last = 0
    if not (
        low.isdigit() and (not dash or high.isdigit()) and 0 < first <= last < 65536
    ):
        raise ValueError(f"{pattern!r}: port must be *, N or N-M within 1-65535")
    return first, last


@dataclass(frozen=True)
class Endpoint:
    """One allowed ``host:port`` pattern.

    Host: ``*`` (any), an address or network (``127.0.0.0/8``, ``[::1]``,
    ``[fd00::/8]``), or a host name glob (``localhost``, ``*.guests.lan``).
    Port: ``*``, ``N`` or ``N-M``.
    """

    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    name: re.Pattern[str] | None
    ports: tuple[int, int]

    @classmethod
    def parse(cls, pattern: str) -> Endpoint:
        host, colon, port = pattern.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{pattern!r}: expected host:port")
        ports = _ports(port, pattern)
        if host == "*":
            return cls(None, None, ports)
        bracketed = host.startswith("[") and host.endswith("]")
        if bracketed:
            host = host[1:-1]
        try:
            return cls(ipaddress.ip_network(host, strict=False), None, ports)
        except ValueError:
            if bracketed or not _HOST_GLOB.fullmatch(host):
                raise ValueError(
                    f"{pattern!r}: {host!r} is neither an address nor a host name"
                ) from None
        return cls(None, glob_regex(host.lower()), ports)

    def matches(self, host: str, port: int) -> bool:
        if not self.ports[0] <= port <= self.ports[1]:
            return False
        if self.network is None and self.name is None:
            return True
        address = _address(host)
        if address is None:
            return self.name is not None and bool(
                self.name.fullmatch(host.lower().rstrip("."))
            )
        return self.network is not None and address in self.network


def _address(
    host: str,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` names literally; None for a name to resolve."""
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        # ::ffff:10.0.0.1 reaches 10.0.0.1: judge it as that.
        return address.ipv4_mapped
    return address


# -- the policy --------------------------------------------------------------------


def _owner_globs(
    patterns: Iterable[str],
) -> tuple[tuple[bool, re.Pattern[str]], ...]:
    """(whole path?, glob) each: a pattern with a slash matches the path."""
    compiled = []
    for pattern in patterns:
        if not pattern or pattern.endswith("/"):
            raise ValueError(f"{pattern!r} is not an executable name or path glob")
        compiled.append(("/" in pattern, glob_regex(pattern)))
    return tuple(compiled)


@dataclass(frozen=True)
class SourcePolicy:
    """The ``[sources]`` section, compiled.  Bad patterns raise ValueError."""

    unix_paths: tuple[str, ...] = DEFAULT_UNIX_PATHS
    unix_denied: tuple[str, ...] = DEFAULT_UNIX_DENIED
    tcp_endpoints: tuple[str, ...] = DEFAULT_TCP_ENDPOINTS
    pty_owners: tuple[str, ...] = DEFAULT_PTY_OWNERS
    state_dir: str = ""
    """Always allowed for unix sockets (the server's own directory)."""
    proc: Path = PROC
    _allowed: tuple[re.Pattern[str], ...] = field(init=False, repr=False)
    _denied: tuple[re.Pattern[str], ...] = field(init=False, repr=False)
    _endpoints: tuple[Endpoint, ...] = field(init=False, repr=False)
    _owners: tuple[tuple[bool, re.Pattern[str]], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        compiled = {
            "_allowed": _path_globs(self.unix_paths),
            "_denied": _path_globs(self.unix_denied),
            "_endpoints": tuple(Endpoint.parse(p) for p in self.tcp_endpoints),
            "_owners": _owner_globs(self.pty_owners),
        }
        for name, value in compiled.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_config(cls, config: Any) -> SourcePolicy:
        return cls(
            unix_paths=tuple(config.unix_paths),
            unix_denied=tuple(config.unix_denied),
            tcp_endpoints=tuple(config.tcp_endpoints),
            pty_owners=tuple(config.pty_owners),
            state_dir=os.path.realpath(config.state_dir),
        )

    # -- create -------------------------------------------------------------

    def check(
        self, spec: ConsoleSpec, spawned: Collection[int] = ()
    ) -> PtyOwner | None:
        """Raise NotAllowed or NoSuchSource unless ``create`` may register
        ``spec``; for a pty, the process holding its master.

        ``spawned``: pids of the children this server's spawn consoles run.
        """
        if spec.type == "unix":
            self.check_unix(spec.path)
        elif spec.type == "tcp":
            self.check_tcp(spec.host, spec.port)
        elif spec.type == "pty":
            return self.check_pty(spec.path, spawned)
        # spawn: only commands the configuration names get this far.
        return None

    def check_graphics(self, endpoint: GraphicsEndpoint) -> None:
        """Raise NotAllowed unless a graphics endpoint is allowed: as a tcp
        or unix console target is (``create`` and restore)."""
        if endpoint.path:
            self.check_unix(endpoint.path)
        else:
            self.check_tcp(endpoint.host, endpoint.port)

    def check_unix(self, path: str) -> None:
        # Both: the path as given is what each reconnect opens, its real path
        # what it reaches today.  normpath: "/allowed/../elsewhere" is judged
        # as where it leads.
        for candidate in dict.fromkeys(
            [os.path.normpath(path), os.path.realpath(path)]
        ):
            shown = (
                repr(path) if candidate == path else f"{path!r} (that is {candidate!r})"
            )
            if any(glob.fullmatch(candidate) for glob in self._denied):
                raise NotAllowed(f"unix socket {shown} matches [sources] unix_denied")
            if not self._socket_allowed(candidate):
                raise NotAllowed(f"unix socket {shown} is not in [sources] unix_paths")

    def _socket_allowed(self, path: str) -> bool:
        if self.state_dir and path.startswith(self.state_dir.rstrip("/") + "/"):
            return True
        return any(glob.fullmatch(path) for glob in self._allowed)

    def check_tcp(self, host: str, port: int) -> None:
        if not any(rule.matches(host, port) for rule in self._endpoints):
            raise NotAllowed(
                f"tcp endpoint {host!r} port {port} is not in [sources] tcp_endpoints"
            )

    def check_pty(self, path: str, spawned: Collection[int] = ()) -> PtyOwner:
        index = self.pty_index(path)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise NoSuchSource(f"pty {path!r} does not exist") from None
        except OSError as e:
            raise NoSuchSource(f"pty {path!r}: {e.strerror}") from None
        if not stat.S_ISCHR(info.st_mode) or os.major(info.st_rdev) not in (
            _PTY_SLAVE_MAJORS
        ):
            raise NoSuchSource(f"{path!r} is not a pty")
        owner = find_pty_owner(index, self.proc)
        if owner is None:
            raise NotAllowed(
                f"no process holding the master of {path} can be seen; a pty "
                "console needs its holder (qemu) to be known"
            )
        self.check_owner(owner, path, spawned)
        return owner

    def pty_index(self, path: str) -> int:
        """N for exactly ``/dev/pts/N``: not a link to it, not ptmx."""
        index = pts_index(path)
        real = os.path.realpath(path)
        if real != path and pts_index(real) is not None:
            raise NotAllowed(f"{path!r} is a symbolic link to {real}; name the pty")
        if index is None or real != path:
            raise NotAllowed(f"a pty console must be /dev/pts/N, not {path!r}")
        return index

    def check_owner(
        self, owner: PtyOwner, path: str, spawned: Collection[int] = ()
    ) -> None:
        exe = process_exe(owner.pid, self.proc)
        if exe and self._owner_allowed(exe):
            return
        if spawned and _descends_from(owner.pid, set(spawned), self.proc):
            return
        # repr: an executable's name is anyone's choice, newlines included.
        holder = repr(exe) if exe else "executable unknown"
        raise NotAllowed(
            f"{path} is held by pid {owner.pid} ({holder}), "
            "which is not in [sources] pty_owners nor started by a spawn console"
        )

    def _owner_allowed(self, exe: str) -> bool:
        name = os.path.basename(exe)
        return any(
            glob.fullmatch(exe if whole else name) for whole, glob in self._owners
        )

    # -- restore ------------------------------------------------------------

    def check_restored(self, spec: ConsoleSpec, owner: PtyOwner | None) -> None:
        """Raise NotAllowed if a registry entry is no longer allowed.

        A pty is judged by its path and, while the recorded owner still runs,
        by that owner's executable; whether the owner still holds the pty is
        the source's own check (it then stays down, saying so).
        """
        if spec.type == "pty":
            self.pty_index(spec.path)
            if owner is not None and process_start(owner.pid, self.proc) == owner.start:
                self.check_owner(owner, spec.path)
        elif spec.type in ("unix", "tcp"):
            self.check(spec)


def process_exe(pid: int, proc: Path = PROC) -> str:
    """The executable of ``pid`` ("" if it cannot be seen)."""
    try:
        exe = os.readlink(f"{proc}/{pid}/exe")
    except OSError:
        return ""
    # A binary replaced by an upgrade while qemu runs: still that program.
    return exe.removesuffix(" (deleted)")


def _parent(pid: int, proc: Path) -> int:
    try:
        text = read_proc_file(f"{proc}/{pid}/stat")
    except OSError:
        return 0
    fields = text[text.rfind(")") + 1 :].split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0


def _descends_from(pid: int, ancestors: set[int], proc: Path) -> bool:
    """Whether ``pid`` is one of ``ancestors`` or below one of them."""
    for _ in range(_MAX_ANCESTORS):
        if pid in ancestors:
            return True
        if pid <= 1:
            return False
        pid = _parent(pid, proc)
    return False


# -- a restored console that is no longer allowed -----------------------------------


class RefusedSource:
    """Stands in for the source of a restored console whose target the
    configuration no longer allows: down with the reason, never opened or
    connected.  It keeps a pty's recorded owner, so that the entry is saved
    unchanged and comes back if the configuration allows it again."""

    def __init__(self, spec: ConsoleSpec, why: str, owner: PtyOwner | None) -> None:
        self.kind = spec.type
        self.state = SourceState.DOWN
        self.owner = owner
        self._spec = spec
        self._why = why

    def start(self, sink: SourceSink) -> None:
        sink.sourceStateChanged(SourceState.DOWN, self._why)

    def write(self, data: bytes) -> bool:
        return False

    def pauseReading(self) -> None:
        pass

    def resumeReading(self) -> None:
        pass

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = self._spec.to_wire()
        facts.update(state=self.state.value, reason=self._why, lastError=self._why)
        return facts
