"""``GET /metrics``: the scrape, on the TLS port for any certificate whose
role may read (viewer and up), and on the plain loopback listener.

The text format Prometheus asks for, or OpenMetrics when its ``Accept``
says so (prometheus_client's ``choose_encoder``).  A scrape runs the
collectors in the reactor, so it sees one consistent moment of the server.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry
from twisted.web import resource

from vdsmconsole.identity import identity_of
from vdsmconsole.server.authz import Permission
from vdsmconsole.server.http.resources import MethodsMixin, answer
from vdsmconsole.spec import METRICS_PATH

__all__ = ["METRICS_SEGMENT", "MetricsResource"]

METRICS_SEGMENT = METRICS_PATH.strip("/").encode("ascii")


class MetricsResource(MethodsMixin, resource.Resource):
    """The scrape.  ``context``: the server's, to check the caller's role
    (None on the plain listener, which only loopback reaches)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry, context: Any = None) -> None:
        super().__init__()
        self.registry = registry
        self.context = context

    def render_GET(self, request: Any) -> bytes:
        if request.postpath not in ([], [b""]):
            return answer(request, 404, "not found")
        if self.context is not None:
            identity = identity_of(request)
            if not self.context.authz.allows(identity, Permission.READ):
                self.context.audit.record("denied", identity, path=METRICS_PATH)
                return answer(request, 403, f"{identity} may not read metrics")
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(
            accept.decode("latin-1") if accept else ""
        )
        body = encoder(self.registry)
        request.setResponseCode(200)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body
