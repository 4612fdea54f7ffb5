"""Assemble the server: configuration -> registry, site, TLS port; stop gracefully.

``ConsoleService`` is a Twisted service, so ``vdsmconsole serve`` and the
``twistd`` plugin share it.  Stopping it stops listening at once, lets calls in
flight finish (up to ``shutdown_timeout``), then closes what is left.
``reload()`` (what SIGHUP calls) re-reads the TLS files for new connections.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task, tcp
from twisted.logger import Logger

from vdsmconsole.audit import AuditLog
from vdsmconsole.authz import Authorizer
from vdsmconsole.config import Config
from vdsmconsole.connlimits import (
    ConnectionLimits,
    LimitedTLSFactory,
    raise_open_file_limit,
)
from vdsmconsole.endings import begin_shutdown
from vdsmconsole.policy import SourcePolicy
from vdsmconsole.registry import Registry
from vdsmconsole.routes import is_stream_target
from vdsmconsole.rpc import ConsoleRPC
from vdsmconsole.site import ConsoleSite, Root
from vdsmconsole.tls import ServerTLS, TLSFiles
from vdsmconsole.transports import EagerServer

log = Logger(namespace="vdsmconsole.server")
EXPIRY_CHECK_SECONDS = 24 * 3600


class StartupError(Exception):
    """The server cannot start; the message says why in one line."""


@dataclass
class ServerContext:
    """What the resources share: configuration, registry, audit, clock, and
    what consoles may point at."""

    config: Config
    reactor: Any
    registry: Registry = field(init=False)
    audit: AuditLog = field(init=False)
    port: int = 0
    tls: ServerTLS | None = None
    authz: Authorizer = field(default_factory=Authorizer)
    policy: SourcePolicy = field(default_factory=SourcePolicy)


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
    context = ServerContext(
        config=config,
        reactor=reactor,
        authz=Authorizer.from_mapping(config.authorization),
        policy=SourcePolicy.from_config(config),
    )
    context.audit = AuditLog(config.state_dir / "audit.log")
    context.registry = Registry(
        config.state_dir / "registry.json",
        make_console_factory(config, reactor),
        config.spawn_commands,
        context.policy,
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
        self.tls: ServerTLS | None = None
        self._expiry_check: task.LoopingCall | None = None

    def startService(self) -> None:
        """Listen; raise StartupError (one line) if anything is missing."""
        config = self.config
        files = TLSFiles(config.ca_file, config.cert_file, config.key_file)
        self.tls = ServerTLS(
            replace(files, crl=config.crl_path),
            self.reactor,
            require_client_usage=config.require_client_usage,
            expiry_warning_days=config.expiry_warning_days,
        )
        self.context = build_context(self.config, self.reactor)
        self.context.tls = self.tls
        self.site = build_site(self.context)
        factory = LimitedTLSFactory(
            self.tls, self.site, connection_limits(config, self.reactor), self.reactor
        )
        try:
            self.listening = self.reactor.listenTCP(
                self.config.port, factory, interface=self.config.bind
            )
        except Exception as e:  # noqa: BLE001 - CannotListenError and friends
            raise StartupError(
                f"cannot listen on {self.config.bind}:{self.config.port}: {e}"
            ) from None
        if isinstance(self.listening, tcp.Port):
            # Accepted connections send small writes at once (transports.py).
            self.listening.transport = EagerServer
        self.context.port = self.listening.getHost().port
        self.context.registry.load()
        super().startService()
        log.info(
            "vdsmconsole listening on {bind}:{port}",
            bind=self.config.bind,
            port=self.context.port,
        )
        log.info("TLS: {summary}", summary=self.tls.current.summary())
        # At start, and once a day for a server that runs for months.
        self._expiry_check = task.LoopingCall(self.tls.warn_if_expiring)
        self._expiry_check.clock = self.reactor
        self._expiry_check.start(EXPIRY_CHECK_SECONDS, now=True)

    def reload(self, why: str = "SIGHUP") -> bool:
        """Re-read certificate, key, CA and CRL for new connections (SIGHUP).

        Established connections keep the context they started with; a file
        that does not load is one log line and the previous context stays.
        """
        if self.tls is None or not self.running:
            return False
        return self.tls.reload(why)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self._expiry_check is not None and self._expiry_check.running:
            self._expiry_check.stop()
        assert self.site is not None and self.context is not None
        # From now on no new request: those on open connections get 503
        # (HTTP/1.1, then closed) or a GOAWAY (HTTP/2), so that no client
        # attaches to a console that is about to stop (see endings.py).
        begin_shutdown(self.site)
        if self.listening is not None:
            yield self.listening.stopListening()
        deadline = self.reactor.seconds() + self.config.shutdown_timeout * 0.8
        # Let RPC calls in flight finish; endless streams are cut below (not
        # ended: their consoles come back with the server).
        while self._rpc_in_flight() and self.reactor.seconds() < deadline:
            yield _later(self.reactor, 0.05)
        yield self.context.registry.stop_all()
        self.context.audit.close()
        log.info("vdsmconsole stopped")

    def _rpc_in_flight(self) -> bool:
        assert self.site is not None
        return any(not _is_stream(r) for r in self.site.inFlight)


def connection_limits(config: Config, reactor: Any) -> ConnectionLimits:
    """The caps of the port, under the soft descriptor limit, raised first."""
    before, after = raise_open_file_limit()
    if after != before:
        log.info(
            "open file limit raised from {before} to {after}",
            before=before,
            after=after,
        )
    else:
        log.info("open file limit: {limit}", limit=after)
    return ConnectionLimits(
        reactor,
        per_address=config.max_connections_per_address,
        per_identity=config.max_connections_per_identity,
        reserve=config.descriptor_reserve,
        first_request_timeout=config.first_request_timeout,
        open_files=after,
    )


def _is_stream(request: Any) -> bool:
    return is_stream_target(request.earlyPath)


def _later(reactor: Any, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
