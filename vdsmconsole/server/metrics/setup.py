"""Put the metrics together: a registry with the server's collector and the
process's, ``/metrics`` on the port, the plain loopback listener."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.registry import CollectorRegistry
from twisted.logger import Logger
from twisted.web import resource, server

from vdsmconsole.server.http.resources import NOT_FOUND
from vdsmconsole.server.metrics.collector import ServerCollector
from vdsmconsole.server.metrics.events import EventCounts
from vdsmconsole.server.metrics.resource import METRICS_SEGMENT, MetricsResource
from vdsmconsole.server.metrics.rpccalls import RpcCalls

__all__ = ["ServerMetrics", "install_metrics", "listen_plain"]

log = Logger(namespace="vdsmconsole.metrics")
# A plain listener's idle connection (a scraper keeps one open) is closed after.
PLAIN_IDLE_SECONDS = 120


@dataclass
class ServerMetrics:
    registry: CollectorRegistry
    collector: ServerCollector

    def watch_port(self, factory: Any) -> None:
        """Count the TLS port's refusals (its LimitedTLSFactory)."""
        self.collector.port_factory = factory


def install_metrics(
    root: resource.Resource, site: Any, context: Any, rpc_calls: RpcCalls
) -> ServerMetrics:
    """Collect from ``context`` and ``site``; serve ``/metrics`` on ``root``."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    events = EventCounts()
    context.audit.listeners.append(events)
    collector = ServerCollector(
        context, site, rpc_calls, events, context.config.metrics_console_series
    )
    registry.register(collector)
    # mypy does not see zope's @implementer(IResource) on Resource.
    root.putChild(METRICS_SEGMENT, MetricsResource(registry, context))  # type: ignore[arg-type]
    return ServerMetrics(registry, collector)


class _PlainRoot(resource.Resource):
    def __init__(self, metrics: MetricsResource) -> None:
        super().__init__()
        self.metrics = metrics

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        return self.metrics if path == METRICS_SEGMENT else NOT_FOUND


class QuietSite(server.Site):
    """No access log: a scrape every 15 s would fill the journal."""

    def log(self, request: Any) -> None:
        pass


def listen_plain(metrics: ServerMetrics, bind: str, port: int, reactor: Any) -> Any:
    """The plain HTTP listener with only ``/metrics`` (the caller checked that
    ``bind`` is a loopback address); raises CannotListenError."""
    root = _PlainRoot(MetricsResource(metrics.registry))
    site = QuietSite(root, reactor=reactor)
    site.displayTracebacks = False
    site.timeOut = PLAIN_IDLE_SECONDS
    listening = reactor.listenTCP(port, site, interface=bind)
    log.info(
        "metrics listening on {bind}:{port} (plain HTTP, /metrics)",
        bind=bind,
        port=listening.getHost().port,
    )
    return listening
