"""The resource at ``/consoleStream/<vmId>``: admits a request, then hands it
to a ``Follower`` (GET), a ``BodyWriter`` (POST) or both (duplex)."""

from __future__ import annotations

from typing import Any

from twisted.web import resource, server

from vdsmconsole.core.console import Console
from vdsmconsole.core.interfaces import SourceState
from vdsmconsole.identity import identity_of
from vdsmconsole.server.authz import stream_permission
from vdsmconsole.server.context import ServerContext
from vdsmconsole.server.http.endings import END_HEADER, down_headers
from vdsmconsole.server.http.resources import MethodsMixin, Root, answer
from vdsmconsole.server.http.routes import is_stream_target
from vdsmconsole.server.http.site import ConsoleRequest, ConsoleSite
from vdsmconsole.server.streams.follower import Follower
from vdsmconsole.server.streams.input import BodyWriter
from vdsmconsole.server.streams.query import (
    BeyondEnd,
    QueryError,
    StreamQuery,
    parse_stream_query,
    resolve_start,
)
from vdsmconsole.server.websockets.admit import console_socket
from vdsmconsole.server.websockets.wire import is_websocket
from vdsmconsole.spec import is_valid_vm_id
from vdsmconsole.status import no_vm_message


class ConsoleStreamResource(MethodsMixin, resource.Resource):
    isLeaf = True

    def __init__(self, context: ServerContext, vm_id: bytes) -> None:
        super().__init__()
        self.context = context
        self.raw_vm_id = vm_id

    def _console(self) -> Console | None:
        try:
            vm_id = self.raw_vm_id.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not is_valid_vm_id(vm_id):
            return None
        return self.context.registry.find(vm_id)

    def _start(self, request: Any, console: Console, query: StreamQuery) -> int | None:
        """Headers for a stream; returns its start offset, or None after an error."""
        try:
            start, lost = resolve_start(query, console.first_offset, console.end)
        except BeyondEnd as e:
            request.write(answer(request, 416, str(e)))
            request.finish()
            return None
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-console-offset", b"%d" % start)
        request.setHeader(b"trailer", END_HEADER)
        if lost:
            request.setHeader(b"x-console-lost", b"%d" % lost)
        return start

    def _query(self, request: Any) -> StreamQuery | bytes:
        try:
            return parse_stream_query(request.args)
        except QueryError as e:
            return answer(request, 400, str(e))

    def _denied(self, request: Any) -> bytes | None:
        """403 unless the peer's role allows this method (and an audit line)."""
        identity = identity_of(request)
        if self.context.authz.allows(identity, stream_permission(request.method)):
            return None
        self.context.audit.record(
            "denied",
            identity,
            vmId=self.raw_vm_id.decode("utf-8", "replace"),
            method=request.method.decode("ascii", "replace"),
        )
        return answer(request, 403, f"{identity} may not do that")

    def _admit(self, request: Any) -> tuple[Console, StreamQuery] | bytes:
        """The console and query of a stream request, or the error to answer."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        console = self._console()
        if console is None:
            vm_id = self.raw_vm_id.decode("utf-8", "replace")
            if not is_valid_vm_id(vm_id):
                return answer(request, 404, no_vm_message())
            if self.context.registry.has_vm(vm_id):  # graphics only
                return answer(request, 404, f"VM {vm_id} has no serial console")
            return answer(request, 404, no_vm_message(vm_id))
        query = self._query(request)
        if isinstance(query, bytes):
            return query
        return console, query

    def render_HEAD(self, request: Any) -> bytes:
        admitted = self._admit(request)
        if isinstance(admitted, bytes):
            return admitted
        console, _ = admitted
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"x-console-offset", b"%d" % console.end)
        return b""

    def render_GET(self, request: Any) -> Any:
        admitted = self._admit(request)
        if isinstance(admitted, bytes):
            return admitted
        console, query = admitted
        if is_websocket(request):
            identity = identity_of(request)
            may_type = self.context.authz.allows(identity, stream_permission(b"POST"))
            return console_socket(
                self.context, request, console, query, identity, may_type
            )
        if query.duplex:
            return answer(request, 400, "duplex=1 needs POST")
        start = self._start(request, console, query)
        if start is None:
            return server.NOT_DONE_YET
        follower = Follower(request, console, start, query.follow)
        self._audit(request, console, "follow", follower, None)
        # Headers go out at once, before the guest says anything.
        request.write(b"")
        follower.start()
        return server.NOT_DONE_YET

    def render_POST(self, request: Any) -> Any:
        admitted = self._admit(request)
        if isinstance(admitted, bytes):
            return admitted
        console, query = admitted
        if console.closed or console.state == SourceState.DOWN:
            return answer(
                request, 503, f"console {console.vm_id} is down", down_headers()
            )
        follower = None
        if query.duplex:
            start = self._start(request, console, query)
            if start is None:
                return server.NOT_DONE_YET
            follower = Follower(request, console, start, follow=True)
        writer = BodyWriter(request, console, query.duplex, follower)
        self._audit(
            request, console, "duplex" if query.duplex else "send", follower, writer
        )
        writer.start()
        if follower is not None:
            request.write(b"")  # headers at once
            follower.start()
        return server.NOT_DONE_YET

    # curl -T - sends PUT: the same as POST for a console.
    render_PUT = render_POST

    def _audit(
        self,
        request: Any,
        console: Console,
        mode: str,
        follower: Follower | None,
        writer: BodyWriter | None,
    ) -> None:
        identity = identity_of(request)
        audit = self.context.audit
        fields: dict[str, Any] = {"vmId": console.vm_id, "mode": mode}
        if follower is not None:
            fields["offset"] = follower.start_offset
        audit.record("attach", identity, **fields)

        def detached(result: object) -> None:
            if follower is not None:
                follower.stop()
                fields["endOffset"] = follower.cursor
                fields["bytesSent"] = follower.sent
            if writer is not None:
                writer.stop()
                fields["bytesWritten"] = writer.written
            audit.record("detach", identity, **fields)

        request.notifyFinish().addBoth(detached)


def headers_received(request: ConsoleRequest) -> None:
    """A POST to a stream renders now: its body flows to the guest as it comes."""
    if request.earlyMethod in (b"POST", b"PUT") and is_stream_target(request.earlyPath):
        request.dispatchEarly()


def install_streams(site: ConsoleSite, root: Root, context: ServerContext) -> None:
    """Route /consoleStream/<vmId> and let stream POSTs take their bodies early."""
    root.streams = lambda vm_id: ConsoleStreamResource(context, vm_id)
    site.headersReceivedHook = headers_received
