"""What a libvirt domain's XML says about its consoles; pure, no libvirt.

A domain's first serial port (``<serial>``, the lowest target port) of type
``pty`` (its ``<source path>``, present while the domain runs), ``unix``
(``<source path>``) or ``tcp`` (``<source host service>``), and its
``<graphics>`` of type ``vnc`` or ``spice``: a TCP port (``port``, or
``tlsPort`` for a TLS-only SPICE, with the listen address; ``-1`` while
autoport has not picked one yet, skipped) or a unix socket (``socket``, or
``<listen type='socket'>``).  A listen address of ``0.0.0.0`` or ``::`` is
reached on loopback.  Passwords are not read (that needs the secure XML
flag, hence a privileged connection): VNC with a password is for the
domain's own clients here.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element  # noqa: S405 - types only

from defusedxml import ElementTree

from vdsmconsole.graphics import GraphicsEndpoint
from vdsmconsole.spec import ConsoleSpec

__all__ = ["DomainConsoles", "parse_domain"]

ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


@dataclass(frozen=True)
class DomainConsoles:
    uuid: str
    name: str
    console: ConsoleSpec | None
    graphics: tuple[GraphicsEndpoint, ...]


def parse_domain(xml: str) -> DomainConsoles:
    """The domain's UUID, name, serial console and graphics; ValueError if
    the XML has no UUID (not a domain)."""
    root = ElementTree.fromstring(xml)
    uuid = (root.findtext("uuid") or "").strip()
    if not uuid:
        raise ValueError("domain XML without a <uuid>")
    name = (root.findtext("name") or "").strip()
    devices = root.find("devices")
    if devices is None:
        return DomainConsoles(uuid, name, None, ())
    return DomainConsoles(
        uuid, name, _serial(devices.findall("serial")), _graphics(devices)
    )


def _port(value: str | None) -> int:
    try:
        port = int(value or "")
    except ValueError:
        return 0
    return port if 0 < port < 65536 else 0


def _target_port(serial: Element) -> int:
    target = serial.find("target")
    try:
        return int(target.get("port", "0")) if target is not None else 0
    except ValueError:
        return 0


def _serial(serials: list[Element]) -> ConsoleSpec | None:
    for serial in sorted(serials, key=_target_port):
        kind = serial.get("type", "")
        source = serial.find("source")
        if source is None:
            continue  # a pty of a domain that does not run: no path yet
        if kind == "unix" and source.get("mode", "bind") != "bind":
            continue  # qemu connects out to a server: nothing to attach to
        if kind in ("pty", "unix") and source.get("path"):
            return ConsoleSpec(type=kind, path=source.get("path", ""))
        if kind == "tcp" and source.get("mode", "bind") == "bind":
            port = _port(source.get("service"))
            if port:
                host = ANY_ADDRESS.get(source.get("host", ""), source.get("host", ""))
                return ConsoleSpec(type="tcp", host=host, port=port)
    return None


def _graphics(devices: Element) -> tuple[GraphicsEndpoint, ...]:
    found: dict[str, GraphicsEndpoint] = {}
    for graphics in devices.findall("graphics"):
        kind = graphics.get("type", "")
        if kind not in ("vnc", "spice") or kind in found:
            continue
        listen = graphics.find("listen")
        socket = graphics.get("socket") or (
            listen.get("socket") if listen is not None else None
        )
        if socket:
            found[kind] = GraphicsEndpoint(kind, path=socket)
            continue
        port = _port(graphics.get("port")) or _port(graphics.get("tlsPort"))
        if not port:
            continue
        address = graphics.get("listen")
        if address is None and listen is not None:
            address = listen.get("address")
        host = ANY_ADDRESS.get(address or "", address or "")
        found[kind] = GraphicsEndpoint(kind, host=host, port=port)
    return tuple(found.values())
