"""What ``list``, ``getVmStats`` and ``getAllVmStats`` show of a VM: its
serial console's facts and its graphics endpoints, never a password.

A VM with a serial console has that console's status.  A graphics-only VM
has no console state to show: its status is ``up`` when any of its
endpoints answers the probe (``graphicsprobe``), else ``down``.  Every VM's
full status and stats carry ``graphics``: ``[{type, host, port} | {type,
path}, answers}]`` (empty without graphics), plus ``reason`` on an endpoint
the configuration no longer allows.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from vdsmconsole.core.console import Console
from vdsmconsole.core.registry import Registry
from vdsmconsole.server.graphicsprobe import GraphicsProbe
from vdsmconsole.xmlrpcwire import Marshalled, marshal

GRAPHICS_UP = "up"
GRAPHICS_DOWN = "down"


def graphics(
    registry: Registry, probe: GraphicsProbe | None, vm_id: str
) -> list[dict[str, Any]]:
    """The VM's endpoints as they are shown: no password; noVM if unknown."""
    shown = []
    for endpoint in registry.graphics(vm_id):
        entry = endpoint.public()
        entry["answers"] = probe is not None and probe.answers(vm_id, endpoint)
        refused = registry.refusal(vm_id, endpoint.type)
        if refused:
            entry["reason"] = refused
        shown.append(entry)
    return shown


def _status(shown: list[dict[str, Any]]) -> str:
    return GRAPHICS_UP if any(e["answers"] for e in shown) else GRAPHICS_DOWN


def summary(
    registry: Registry, probe: GraphicsProbe | None, vm_id: str
) -> dict[str, Any] | None:
    """``{vmId, status}``; None for a vmId that is not registered."""
    console = registry.find(vm_id)
    if console is not None:
        return console.summary()
    if not registry.has_vm(vm_id):
        return None
    return {"vmId": vm_id, "status": _status(graphics(registry, probe, vm_id))}


# console -> (its state, its summary's XML): a list of 1000 VMs marshals only
# those whose state changed since the last list.  Weak: a destroyed console's
# entry goes with it.
_SUMMARIES: WeakKeyDictionary[Console, tuple[str, Marshalled]] = WeakKeyDictionary()


def summary_xml(
    registry: Registry, probe: GraphicsProbe | None, vm_id: str
) -> Marshalled | None:
    """``summary``, already marshalled (``list``'s answer as it goes out)."""
    console = registry.find(vm_id)
    if console is None:
        shown = summary(registry, probe, vm_id)
        return None if shown is None else marshal(shown)
    state = console.state
    held = _SUMMARIES.get(console)
    if held is None or held[0] != state:
        held = _SUMMARIES[console] = (state, marshal(console.summary()))
    return held[1]


def full_status(
    registry: Registry, probe: GraphicsProbe | None, vm_id: str
) -> dict[str, Any] | None:
    """Everything ``list(fullStatus=True)`` shows; None if not registered."""
    if not registry.has_vm(vm_id):
        return None
    shown = graphics(registry, probe, vm_id)
    console = registry.find(vm_id)
    if console is None:
        return {"vmId": vm_id, "status": _status(shown), "graphics": shown}
    return dict(console.full_status(), graphics=shown)


def stats(
    registry: Registry, probe: GraphicsProbe | None, vm_id: str
) -> dict[str, Any]:
    """``getVmStats``'s entry; noVM for an unknown vmId."""
    shown = graphics(registry, probe, vm_id)  # raises noVM
    console = registry.find(vm_id)
    if console is None:
        return {"vmId": vm_id, "state": _status(shown), "graphics": shown}
    return dict(console.stats(), graphics=shown)
