"""The source for a validated console description."""

from __future__ import annotations

from vdsmconsole.core.interfaces import ConsoleSource
from vdsmconsole.core.ptyowner import PtyOwner
from vdsmconsole.sources.options import Reactor, SourceOptions
from vdsmconsole.sources.pty import PtySource
from vdsmconsole.sources.sockets import TcpSource, UnixSource
from vdsmconsole.sources.spawn import SpawnSource
from vdsmconsole.spec import ConsoleSpec


def make_source(
    spec: ConsoleSpec,
    options: SourceOptions,
    reactor: Reactor,
    *,
    restored: bool = False,
    owner: PtyOwner | None = None,
) -> ConsoleSource:
    """The source for a validated console description (not started yet).

    ``restored``: the console comes back from the registry after a restart;
    a pty is then reopened only if ``owner`` (recorded when it was first
    attached) still holds it.
    """
    if spec.type == "pty":
        return PtySource(spec.path, reactor, options, restored=restored, owner=owner)
    if spec.type == "unix":
        return UnixSource(spec.path, options, reactor)
    if spec.type == "tcp":
        return TcpSource(spec.host, spec.port, options, reactor)
    if spec.type == "spawn":
        return SpawnSource(spec.command, options, reactor)
    raise ValueError(f"unknown console source type {spec.type!r}")
