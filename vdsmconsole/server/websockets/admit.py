"""Admitting a console websocket: what is still said in HTTP, then the upgrade.

Shared by the mTLS port (``GET /consoleStream/<vmId>`` with ``Upgrade:
websocket``, for certificate holders) and, once tokens are wired, the web
listener's ``/websockify?token=T``.  Refusals are plain HTTP answers: 400 a
websocket over HTTP/2 or with a bad query, 403 a foreign ``Origin`` (with an
audit line), 416 an offset past the end.
"""

from __future__ import annotations

from typing import Any

from twisted.web import server

from vdsmconsole.core.console import Console
from vdsmconsole.identity import PeerIdentity
from vdsmconsole.server.context import ServerContext
from vdsmconsole.server.http.resources import answer
from vdsmconsole.server.streams.query import BeyondEnd, StreamQuery, resolve_start
from vdsmconsole.server.web.origin import origin_allowed
from vdsmconsole.server.websockets.console import ConsoleSocket
from vdsmconsole.server.websockets.wire import SocketLimits, upgrade


def socket_limits(context: ServerContext) -> SocketLimits:
    config = context.config
    return SocketLimits(
        max_message_bytes=config.websocket_max_message,
        ping_interval=config.websocket_ping_interval,
        ping_timeout=config.websocket_ping_timeout,
    )


def refuse_origin(
    context: ServerContext,
    request: Any,
    identity: PeerIdentity,
    origin_required: bool,
) -> bytes | None:
    """403 (and one audit line) unless the page's Origin may open a websocket.

    No Origin header means no browser: allowed where ``origin_required`` is
    False (the mTLS port, whose clients are programs with certificates).
    """
    origin = request.getHeader(b"origin")
    if origin is None and not origin_required:
        return None
    allowed = context.config.web_allowed_origins
    if origin_allowed(origin, request.getHeader(b"host"), allowed):
        return None
    shown = "" if origin is None else origin.decode("latin-1")[:200]
    context.audit.record(
        "denied",
        identity,
        reason="origin",
        origin=shown,
        path=request.path.decode("latin-1")[:200],
    )
    return answer(request, 403, "this page's origin may not open a websocket here")


def console_socket(
    context: ServerContext,
    request: Any,
    console: Console,
    query: StreamQuery,
    identity: PeerIdentity,
    may_type: bool,
    origin_required: bool = False,
) -> Any:
    """Upgrade a request to a console websocket, or answer why not."""
    if getattr(request, "isHTTP2", False):
        # No RFC 8441 here: browsers then use HTTP/1.1 for websockets.
        return answer(request, 400, "websockets need HTTP/1.1")
    refused = refuse_origin(context, request, identity, origin_required)
    if refused is not None:
        return refused
    if not query.follow:
        return answer(request, 400, "a websocket always follows (no follow=0)")
    try:
        start, lost = resolve_start(query, console.first_offset, console.end)
    except BeyondEnd as e:
        return answer(request, 416, str(e))
    handler = ConsoleSocket(console, start, lost, may_type)
    fields: dict[str, Any] = {
        "vmId": console.vm_id,
        "mode": "websocket" if may_type else "websocket-view",
        "offset": start,
    }

    def attached() -> None:
        # Once the handshake succeeded: a malformed one is only a 400.
        context.audit.record("attach", identity, **fields)

    def detached(result: object) -> None:
        handler.closed()
        if handler.was_open:
            context.audit.record("detach", identity, **fields, **handler.summary())

    handler.on_open = attached
    request.notifyFinish().addBoth(detached)
    upgrade(request, handler, socket_limits(context))
    return server.NOT_DONE_YET
