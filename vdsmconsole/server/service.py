"""Assemble the server: configuration -> registry, site, TLS port; stop gracefully.

``ConsoleService`` is a Twisted service, so ``vdsmconsole serve`` and the
``twistd`` plugin share it.  Stopping it stops listening at once, lets calls in
flight finish (up to ``shutdown_timeout``), then closes what is left.
``reload()`` (what SIGHUP calls) re-reads the TLS files for new connections.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task, tcp
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from vdsmconsole.core.console import Console
from vdsmconsole.core.consolelog import ConsoleLog
from vdsmconsole.core.interfaces import ConsoleSource
from vdsmconsole.core.offsetmark import MARK_FILE, OffsetMark
from vdsmconsole.core.ptyowner import PtyOwner
from vdsmconsole.core.registry import Registry
from vdsmconsole.core.ring import Ring
from vdsmconsole.server.audit import AuditLog
from vdsmconsole.server.authz import Authorizer
from vdsmconsole.server.config import Config
from vdsmconsole.server.connlimits import (
    ConnectionLimits,
    LimitedTLSFactory,
    raise_open_file_limit,
)
from vdsmconsole.server.context import ServerContext
from vdsmconsole.server.graphicsprobe import GraphicsProbe
from vdsmconsole.server.http.endings import begin_shutdown
from vdsmconsole.server.http.resources import Root
from vdsmconsole.server.http.routes import is_stream_target
from vdsmconsole.server.http.site import ConsoleRequest, ConsoleSite, SiteLimits
from vdsmconsole.server.libvirt.setup import start_libvirt
from vdsmconsole.server.metrics.setup import install_metrics, listen_plain
from vdsmconsole.server.policy import RefusedSource, SourcePolicy
from vdsmconsole.server.rpc import ConsoleRPC
from vdsmconsole.server.streams.resource import install_streams
from vdsmconsole.server.systemd import Notifier
from vdsmconsole.server.tls.files import TLSFiles
from vdsmconsole.server.tls.reload import ServerTLS
from vdsmconsole.server.tokens.connectinfo import install_connect_info
from vdsmconsole.server.tokens.setup import make_token_store, revoker, start_tokens
from vdsmconsole.server.tunnels.resource import install_tunnels
from vdsmconsole.server.tunnels.tunnel import cut_tunnels
from vdsmconsole.server.web.listener import build_web_site, listen_web
from vdsmconsole.sources.factory import make_source
from vdsmconsole.sources.options import SourceOptions
from vdsmconsole.spec import ConsoleSpec
from vdsmconsole.transports import EagerServer

log = Logger(namespace="vdsmconsole.server")
EXPIRY_CHECK_SECONDS = 24 * 3600
# Where console marks make their next reservation ahead (offsetmark.py): an
# fdatasync off the reactor.  Shared by every console; threads on first use.
MARK_WRITER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="offset-mark")


class StartupError(Exception):
    """The server cannot start; the message says why in one line."""


def prepare_state_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o750)
        (path / "consoles").mkdir(exist_ok=True, mode=0o750)
    except OSError as e:
        raise StartupError(f"cannot create state directory {path}: {e.strerror}") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"state directory {path} is not writable")


def make_console_factory(config: Config, reactor: Any) -> Callable[..., Console]:
    options = SourceOptions(
        reconnect_initial=config.reconnect_initial,
        reconnect_max=config.reconnect_max,
        spawn_commands=dict(config.spawn_commands),
        coalesce_delay=config.coalesce_delay,
        interactive_window=config.interactive_window,
    )

    def factory(
        vm_id: str,
        spec: ConsoleSpec,
        *,
        restored: bool = False,
        owner: PtyOwner | None = None,
        refused: str = "",
        fresh: bool = False,
    ) -> Console:
        """``restored``/``owner``: a pty console the registry brings back;
        ``refused``: why its target is no longer allowed (it stays down).

        ``fresh``: a new console (``create``), not one a restart brings back:
        it shows only its own guest's output, so the log a previous console
        of this vmId left is deleted; its offsets carry on above every offset
        that one handed out, so that none is ever reused for the vmId.
        """
        # vm_id was validated before it got here; it is safe as a path part.
        directory = config.state_dir / "consoles" / vm_id
        console_log = ConsoleLog(
            directory, config.log_file_bytes, config.log_keep_files
        )
        mark = OffsetMark(directory / MARK_FILE, ahead=MARK_WRITER)
        if fresh:
            start = max(console_log.end, mark.saved)
            console_log.discard()
        else:
            # Past every offset handed out before: the log's end, or further
            # when a crash cut the log's tail or the log could not be written.
            start = mark.resume_offset(console_log.end)
        ring = Ring(config.ring_bytes, start=start)
        if refused:
            source: ConsoleSource = RefusedSource(spec, refused, owner)
        else:
            source = make_source(spec, options, reactor, restored=restored, owner=owner)
        return Console(vm_id, spec, source, ring, console_log, reactor, mark)

    return factory


def build_context(config: Config, reactor: Any) -> ServerContext:
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
    context.tokens = make_token_store(config.state_dir, reactor)
    context.registry.destroyed.append(revoker(context.tokens, context.audit))
    context.graphics_probe = GraphicsProbe(context.registry, reactor)
    context.graphics_probe.watch(context.registry)
    return context


def site_limits(config: Config) -> SiteLimits:
    return SiteLimits(
        max_body_bytes=config.rpc_max_body,
        handshake_timeout=config.handshake_timeout,
        header_timeout=config.header_timeout,
        client_buffer_bytes=config.client_buffer_bytes,
    )


def build_site(context: ServerContext) -> ConsoleSite:
    rpc = ConsoleRPC(context)
    root = Root(rpc)
    site = ConsoleSite(root, context.reactor, site_limits(context.config))
    install_streams(site, root, context)
    install_connect_info(root, context)
    install_tunnels(site, root, context)
    context.metrics = install_metrics(root, site, context, rpc.calls)
    return site


class ConsoleService(Service):
    """The whole server as one Twisted service."""

    def __init__(
        self, config: Config, reactor: Any = None, notifier: Notifier | None = None
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.context: ServerContext | None = None
        self.site: ConsoleSite | None = None
        self.listening: Any = None
        self.metrics_listening: Any = None  # the plain /metrics listener
        self._libvirt: Any = None  # the libvirt watcher thread, if any
        self.tls: ServerTLS | None = None
        self.web_site: ConsoleSite | None = None
        self.web_listening: Any = None
        self._expiry_check: task.LoopingCall | None = None
        self._token_pruning: task.LoopingCall | None = None
        # systemd's NOTIFY_SOCKET, read (and taken out of the environment)
        # at start, before a spawned console could inherit it.
        self.notifier = notifier

    def startService(self) -> None:
        """Listen; raise StartupError (one line) if anything is missing.

        systemd hears READY=1 once the port listens and the registry is
        loaded, as the reactor runs (at once if it already does).
        """
        config = self.config
        if self.notifier is None:
            self.notifier = Notifier.from_environment(self.reactor)
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
            self.listening = self._listen(factory)
        except Exception as e:  # noqa: BLE001 - CannotListenError and friends
            raise StartupError(
                f"cannot listen on {self.config.bind}:{self.config.port}: {e}"
            ) from None
        if isinstance(self.listening, tcp.Port):
            # Accepted connections send small writes at once (transports.py).
            self.listening.transport = EagerServer
        self.context.port = self.listening.getHost().port
        if config.web_enabled:
            self._listen_web()
        self.context.metrics.watch_port(factory)
        if config.metrics_port:
            try:
                self.metrics_listening = listen_plain(
                    self.context.metrics,
                    config.metrics_bind,
                    config.metrics_port,
                    self.reactor,
                )
            except Exception as e:  # noqa: BLE001 - CannotListenError and friends
                self._stop_listening()
                raise StartupError(
                    f"cannot listen on {config.metrics_bind}:{config.metrics_port} "
                    f"for metrics: {e}"
                ) from None
        self.context.registry.load()
        self._libvirt = start_libvirt(config, self.context, self.reactor)
        self._token_pruning = start_tokens(self.context.tokens, self.reactor)
        if self.context.graphics_probe is not None:
            self.context.graphics_probe.start()
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
        self.reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        assert self.notifier is not None and self.context is not None
        if self.running:
            self.notifier.ready(
                f"listening on {self.config.bind}:{self.context.port}, "
                f"{len(self.context.registry)} consoles"
            )

    def _listen_web(self) -> None:
        """The [web] listener for browsers (server/web/)."""
        assert self.context is not None and self.tls is not None
        config = self.config
        self.web_site = build_web_site(self.context, site_limits(config))
        limits = connection_limits(config, self.reactor)
        try:
            try:
                self.web_listening = listen_web(
                    self.context, self.web_site, self.tls, limits
                )
            except CannotListenError:
                if not config.web_any_port_if_busy:  # the demo's: any free port
                    raise
                self.web_listening = listen_web(
                    self.context, self.web_site, self.tls, limits, port=0
                )
        except Exception as e:  # noqa: BLE001 - CannotListenError and friends
            self._stop_listening()
            raise StartupError(
                f"cannot listen on {config.web_bind or config.bind}:"
                f"{config.web_port} for [web]: {e}"
            ) from None
        self.context.web_port = self.web_listening.getHost().port
        log.info(
            "vdsmconsole web listening on {bind}:{port}",
            bind=config.web_bind or config.bind,
            port=self.context.web_port,
        )
        if not config.web_assets or not os.path.isdir(config.web_assets):
            # Pages would answer 503; say it once now, not only per request.
            log.warn(
                "[web] assets {assets!r} is not a directory: the console pages "
                "answer 503 until tools/assets.sh installs them there",
                assets=config.web_assets,
            )

    def _stop_listening(self) -> None:
        """A listener could not listen: the server does not start, so the ones
        already open close too (nothing is left half up, in a process that
        goes on: twistd, a test)."""
        for port in (self.web_listening, self.listening):
            if port is not None:
                port.stopListening()
        self.web_listening = self.listening = None

    def reload(self, why: str = "SIGHUP") -> bool:
        """Re-read certificate, key, CA and CRL for new connections (SIGHUP).

        Established connections keep the context they started with; a file
        that does not load is one log line and the previous context stays.
        """
        if self.tls is None or not self.running:
            return False
        return self.tls.reload(why)

    def _listen(self, factory: Any) -> Any:
        bind = self.config.bind
        try:
            return self.reactor.listenTCP(self.config.port, factory, interface=bind)
        except CannotListenError:
            if not self.config.any_port_if_busy:
                raise
            return self.reactor.listenTCP(0, factory, interface=bind)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self.notifier is not None:
            self.notifier.stopping("stopping")
        if self._libvirt is not None:
            self._libvirt.stop()  # sees it within WAKE_MS, closes its connection
        for looping in (self._expiry_check, self._token_pruning):
            if looping is not None and looping.running:
                looping.stop()
        assert self.site is not None and self.context is not None
        # From now on no new request: those on open connections get 503
        # (HTTP/1.1, then closed) or a GOAWAY (HTTP/2), so that no client
        # attaches to a console that is about to stop (see endings.py).
        begin_shutdown(self.site)
        if self.web_site is not None:
            begin_shutdown(self.web_site)
        if self.web_listening is not None:
            yield self.web_listening.stopListening()
        if self.listening is not None:
            yield self.listening.stopListening()
        if self.metrics_listening is not None:
            yield self.metrics_listening.stopListening()
        deadline = self.reactor.seconds() + self.config.shutdown_timeout * 0.8
        # Let RPC calls in flight finish; endless streams are cut below (not
        # ended: their consoles come back with the server).
        while self._rpc_in_flight() and self.reactor.seconds() < deadline:
            yield _later(self.reactor, 0.05)
        cut_tunnels(self.site)  # as streams are cut: their consoles come back
        if self.web_site is not None:
            cut_tunnels(self.web_site)  # graphics websockets (websockets/graphics.py)
        if self.context.graphics_probe is not None:
            self.context.graphics_probe.stop()
        yield self.context.registry.stop_all()
        self.context.audit.close()
        if self.notifier is not None:
            self.notifier.close()
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


def _is_stream(request: ConsoleRequest) -> bool:
    return is_stream_target(request.earlyPath)


def _later(reactor: Any, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
