"""Start libvirt discovery when ``[libvirt] uri`` is set."""

from __future__ import annotations

from typing import Any

from vdsmconsole.server.libvirt.discovery import LibvirtDiscovery
from vdsmconsole.server.libvirt.watcher import LibvirtWatcher

__all__ = ["start_libvirt"]


def start_libvirt(config: Any, context: Any, reactor: Any) -> LibvirtWatcher | None:
    """The watcher thread, started, its discovery on ``context.libvirt``;
    None when discovery is off.  Call after the registry is loaded."""
    if not config.libvirt_uri:
        return None
    discovery = LibvirtDiscovery(
        context.registry,
        context.policy,
        context.audit,
        config.state_dir / "libvirt.json",
        reactor,
    )
    context.libvirt = discovery
    watcher = LibvirtWatcher(
        config.libvirt_uri,
        discovery.deliver,
        config.reconnect_initial,
        config.reconnect_max,
    )
    watcher.start()
    return watcher
