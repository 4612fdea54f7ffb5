"""Assemble the server: configuration -> registry, site, TLS port; stop gracefully.

``ConsoleService`` is a Twisted service, so ``vdsmconsole serve`` and the
``twistd`` plugin share it.  Stopping it stops listening at once, lets calls in
flight finish (up to ``shutdown_timeout``), then closes what is left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from vdsmconsole.audit import AuditLog
from vdsmconsole.config import Config
from vdsmconsole.registry import Registry
from vdsmconsole.rpc import ConsoleRPC
from vdsmconsole.site import ConsoleSite, Root
from vdsmconsole.tls import server_options, tls_factory

log = Logger(namespace="vdsmconsole.server")


class StartupError(Exception):
    """The server cannot start; the message says why in one line."""


@dataclass
class ServerContext:
    """What the resources share: configuration, registry, audit, clock."""

    config: Config
    reactor: Any
    registry: Registry = field(init=False)
    audit: AuditLog = field(init=False)
    port: int = 0


def prepare_state_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o750)
        (path / "consoles").mkdir(exist_ok=True, mode=0o750)
    except OSError as e:
        raise StartupError(f"cannot create state directory {path}: {e.strerror}") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"state directory {path} is not writable")


def build_context(config: Config, reactor: Any) -> ServerContext:
    from vdsmconsole.console import make_console_factory

    prepare_state_dir(config.state_dir)
    context = ServerContext(config=config, reactor=reactor)
    context.audit = AuditLog(config.state_dir / "audit.log")
    context.registry = Registry(
        config.state_dir / "registry.json",
        make_console_factory(config, reactor),
        config.spawn_commands,
    )
    return context


def build_site(context: ServerContext) -> ConsoleSite:
    from vdsmconsole.streams import install_streams

    rpc = ConsoleRPC(context)
    root = Root(rpc)
    site = ConsoleSite(root, context)
    install_streams(site, root, context)
    return site


class ConsoleService(Service):
    """The whole server as one Twisted service."""

    def __init__(self, config: Config, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.context: ServerContext | None = None
        self.site: ConsoleSite | None = None
        self.listening: Any = None

    def startService(self) -> None:
        """Listen; raise StartupError (one line) if anything is missing."""
        options = server_options(
            self.config.ca_file, self.config.cert_file, self.config.key_file
        )
        self.context = build_context(self.config, self.reactor)
        self.site = build_site(self.context)
        try:
            self.listening = self.reactor.listenTCP(
                self.config.port,
                tls_factory(options, self.site),  # type: ignore[arg-type]
                interface=self.config.bind,
            )
        except Exception as e:  # noqa: BLE001 - CannotListenError and friends
            raise StartupError(
                f"cannot listen on {self.config.bind}:{self.config.port}: {e}"
            ) from None
        self.context.port = self.listening.getHost().port
        self.context.registry.load()
        super().startService()
        log.info(
            "vdsmconsole listening on {bind}:{port}",
            bind=self.config.bind,
            port=self.context.port,
        )

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self.listening is not None:
            yield self.listening.stopListening()
        assert self.site is not None and self.context is not None
        deadline = self.reactor.seconds() + self.config.shutdown_timeout * 0.8
        # Let RPC calls in flight finish; endless streams are cut below.
        while self._rpc_in_flight() and self.reactor.seconds() < deadline:
            yield _later(self.reactor, 0.05)
        yield self.context.registry.stop_all()
        self.context.audit.close()
        log.info("vdsmconsole stopped")

    def _rpc_in_flight(self) -> bool:
        assert self.site is not None
        return any(not _is_stream(r) for r in self.site.inFlight)


def _is_stream(request: Any) -> bool:
    return bool(request.earlyPath.startswith(b"/consoleStream/"))


def _later(reactor: Any, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
