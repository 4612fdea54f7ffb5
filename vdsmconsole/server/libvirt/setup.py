"""Start libvirt discovery when ``[libvirt] uri`` is set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vdsmconsole.core.interfaces import ConsoleSource
from vdsmconsole.core.ptyowner import PtyOwner
from vdsmconsole.server.libvirt.discovery import LibvirtDiscovery
from vdsmconsole.server.libvirt.watcher import LibvirtWatcher
from vdsmconsole.sources.factory import make_source
from vdsmconsole.sources.options import SourceOptions
from vdsmconsole.spec import ConsoleSpec

__all__ = ["source_factory", "start_libvirt"]


def source_factory(
    config: Any, reactor: Any
) -> Callable[[ConsoleSpec, PtyOwner | None], ConsoleSource]:
    """New sources for consoles that move (a domain restarted elsewhere)."""
    options = SourceOptions(
        reconnect_initial=config.reconnect_initial,
        reconnect_max=config.reconnect_max,
        spawn_commands=dict(config.spawn_commands),
        coalesce_delay=config.coalesce_delay,
        interactive_window=config.interactive_window,
    )

    def sources(spec: ConsoleSpec, owner: PtyOwner | None) -> ConsoleSource:
        # A pty with its owner checked now opens only if that qemu holds it.
        restored = owner is not None
        return make_source(spec, options, reactor, restored=restored, owner=owner)

    return sources


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
        source_factory(config, reactor),
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
