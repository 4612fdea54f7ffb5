"""What the web listener serves, and nothing else.

=============================  ==============================================
``/websockify?token=T``        a websocket: the token's serial console (as
                               ``/consoleStream`` on the mTLS port, with
                               ``offset``/``tail``) or graphics endpoint
                               (``websockets/graphics.py``: the tunnels' relay)
``/console/serial?token=T``    the xterm.js page (``pages.py``)
``/console/vnc?token=T``       the noVNC page
``/assets/...``                files under ``[web] assets`` (GET, HEAD)
``/static/...``                the pages' own scripts (``web/static/``)
=============================  ==============================================

Anything else is 404, ``/RPC2``, ``/consoleStream`` and the connect info
included.  A missing, malformed, unknown, expired or used token is 403 with
one audit line (``tokenRefused``: its SHA-256 prefix, never the token); so
is a websocket whose ``Origin`` is not allowed (web/origin.py).  A page for
another kind of console than the token's is 404.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.web import resource, static

from vdsmconsole.identity import identity_of
from vdsmconsole.server.authz import ROLES, Permission
from vdsmconsole.server.context import ServerContext
from vdsmconsole.server.http.resources import NOT_FOUND, MethodsMixin, answer
from vdsmconsole.server.streams.query import QueryError, parse_stream_query
from vdsmconsole.server.web import grants
from vdsmconsole.server.web.pages import page
from vdsmconsole.server.websockets.admit import console_socket, refuse_origin
from vdsmconsole.server.websockets.graphics import graphics_socket
from vdsmconsole.server.websockets.wire import is_websocket
from vdsmconsole.status import no_vm_message

PAGE_PROTOCOLS = {"serial": "serial", "vnc": "vnc"}  # the console a page shows
STATIC = Path(__file__).parent / "static"  # our own page scripts, not third-party


def refuse_token(request: Any) -> bytes:
    """403 for a token that grants nothing here (grants.py audited it)."""
    return answer(request, 403, "no valid token for this console")


class WebSocketEntry(MethodsMixin, resource.Resource):
    """``/websockify?token=T``: the websocket a token grants."""

    isLeaf = True

    def __init__(self, context: ServerContext) -> None:
        super().__init__()
        self.context = context

    def render_GET(self, request: Any) -> Any:
        context = self.context
        if not is_websocket(request):
            return answer(request, 400, "this is a websocket endpoint")
        identity = identity_of(request)
        # Origin first: a foreign page learns nothing about a token.
        refused = refuse_origin(context, request, identity, origin_required=True)
        if refused is not None:
            return refused
        args = {k: v for k, v in request.args.items() if k != b"token"}
        try:
            query = parse_stream_query(args)
        except QueryError as e:
            return answer(request, 400, str(e))
        grant = grants.use(context, request, identity)
        if grant is None:
            return refuse_token(request)
        if grant.protocol != "serial":
            return graphics_socket(context, request, grant, identity)
        console = context.registry.find(grant.vm_id)
        if console is None:
            return answer(request, 404, no_vm_message(grant.vm_id))
        may_type = Permission.WRITE in ROLES.get(grant.role, frozenset())
        return console_socket(
            context, request, console, query, identity, may_type, origin_required=True
        )


class ConsolePage(MethodsMixin, resource.Resource):
    """``/console/serial`` and ``/console/vnc``: a page for a token."""

    isLeaf = True

    def __init__(self, context: ServerContext, kind: str) -> None:
        super().__init__()
        self.context = context
        self.kind = kind

    def render_GET(self, request: Any) -> bytes:
        grant = grants.lookup(self.context, request, identity_of(request))
        if grant is None:
            return refuse_token(request)
        if grant.protocol != PAGE_PROTOCOLS[self.kind]:
            return answer(request, 404, f"this token is for a {grant.protocol} console")
        assets = self.context.config.web_assets
        if not assets or not Path(assets).is_dir():
            return answer(request, 503, "the browser assets are not installed")
        return page(request, self.kind)


class Assets(static.File):
    """The installed browser assets: files only, never a directory listing."""

    def directoryListing(self) -> resource.Resource:
        return NOT_FOUND


class WebRoot(resource.Resource):
    """Routes the web listener's few paths; 404 for everything else."""

    def __init__(self, context: ServerContext) -> None:
        super().__init__()
        self.context = context
        self.socket = WebSocketEntry(context)
        self.pages = {
            b"serial": ConsolePage(context, "serial"),
            b"vnc": ConsolePage(context, "vnc"),
        }
        self.static = Assets(str(STATIC))
        assets = context.config.web_assets
        self.assets: resource.Resource = NOT_FOUND
        if assets:
            self.assets = Assets(assets)

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        rest = request.postpath
        if path == b"websockify" and not rest:
            return self.socket
        if path == b"console" and len(rest) == 1 and rest[0] in self.pages:
            return self.pages[rest[0]]
        if path == b"assets" and rest:
            return self.assets
        if path == b"static" and rest:
            return self.static
        return NOT_FOUND
