"""The resource at ``/consoleTunnel/<vmId>``: admits a CONNECT, then hands
the connection to a relay (graphics) or a serial tunnel.

Refusals are short text answers and the connection closes after them: 400
for a missing or unknown protocol or a malformed token, 403 for a role (or
a token) that does not allow it, 404 for an unknown vmId or a VM without
that console, 502 when the endpoint refuses or fails, 503 while the server
stops or for a serial console whose guest is down.  CONNECT is HTTP/1.1's:
over HTTP/2 the stream is reset with ``HTTP_1_1_REQUIRED`` as soon as its
headers are in (an HTTP/2 CONNECT never ends its request, so waiting for it
would hang), and an HTTP/1.1 CONNECT that announces a body is 400 (its
bytes are the tunnel's).
"""

from __future__ import annotations

from typing import Any

from h2.errors import ErrorCodes
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from vdsmconsole.core.interfaces import SourceState
from vdsmconsole.identity import identity_of, peer_address
from vdsmconsole.server.authz import ROLES, Permission
from vdsmconsole.server.context import ServerContext
from vdsmconsole.server.http.resources import MethodsMixin, Root, answer
from vdsmconsole.server.http.site import ConsoleRequest, ConsoleSite
from vdsmconsole.server.tokens.audit import record_refusal, record_use
from vdsmconsole.server.tunnels.query import (
    Refusal,
    TunnelQuery,
    lower_role,
    parse_tunnel_query,
)
from vdsmconsole.server.tunnels.relay import RelayTunnel
from vdsmconsole.server.tunnels.serial import SerialTunnel
from vdsmconsole.server.tunnels.takeover import ViewerLink
from vdsmconsole.server.tunnels.tunnel import TunnelGrant, close_vm_tunnels
from vdsmconsole.spec import is_valid_vm_id
from vdsmconsole.status import Code, StatusError, no_vm_message

log = Logger(namespace="vdsmconsole.tunnels")

STATUS_CODES = {Code.NO_VM: 404, Code.NO_CONSOLE: 404, Code.NOT_ALLOWED: 403}


class TunnelResource(MethodsMixin, resource.Resource):
    isLeaf = True

    def __init__(self, context: ServerContext, vm_id: bytes) -> None:
        super().__init__()
        self.context = context
        self.raw_vm_id = vm_id

    def render_CONNECT(self, request: Any) -> Any:
        try:
            grant, target = self._admit(request)
        except Refusal as e:
            return answer(request, e.code, e.message)
        link = ViewerLink(request)
        link.take()
        context = self.context
        site = request.channel.site
        if grant.protocol == "serial":
            tunnel = SerialTunnel(link, grant, context.audit, site)
            tunnel.begin(target, Permission.WRITE in ROLES[grant.role])
        else:
            relay = RelayTunnel(link, grant, context.audit, site)
            relay.begin(target, context.reactor)
        return server.NOT_DONE_YET

    # -- admission -------------------------------------------------------------

    def _admit(self, request: Any) -> tuple[TunnelGrant, Any]:
        """Who may open what (raises Refusal): the grant and its target (the
        serial Console or the GraphicsEndpoint)."""
        identity = identity_of(request)
        query = parse_tunnel_query(request.args)
        vm_id = self._vm_id()
        role = self.context.authz.role_for(identity)
        if role is None or Permission.READ not in ROLES[role]:
            self._denied(request, vm_id, query, "no role")
            raise Refusal(403, f"{identity} may not open console tunnels")
        token_used = False
        if query.token is not None:
            role = self._token_role(request, vm_id, query, role)
            token_used = True
        registry = self.context.registry
        try:
            if query.protocol == "serial":
                target: Any = registry.get(vm_id)
            else:
                target = registry.endpoint(vm_id, query.protocol)
        except StatusError as e:
            raise Refusal(STATUS_CODES.get(e.code, 404), e.message) from None
        if query.protocol == "serial" and (
            target.closed or target.state == SourceState.DOWN
        ):
            # As for a duplex POST: nothing would come, nothing could go.
            raise Refusal(503, f"console {vm_id} is down")
        grant = TunnelGrant(identity, vm_id, query.protocol, role, token_used)
        return grant, target

    def _vm_id(self) -> str:
        try:
            vm_id = self.raw_vm_id.decode("utf-8")
        except UnicodeDecodeError:
            vm_id = ""
        if not is_valid_vm_id(vm_id):
            raise Refusal(404, no_vm_message())
        return vm_id

    def _token_role(
        self, request: Any, vm_id: str, query: TunnelQuery, role: str
    ) -> str:
        """The lower of the certificate's role and the token's (consumed if
        single-use); 403 for a token that is not good for this console."""
        identity = identity_of(request)
        tokens = self.context.tokens
        grant = tokens.use(query.token, vm_id=vm_id, protocol=query.protocol)
        if grant is None:
            record_refusal(
                self.context.audit,
                identity,
                "tunnel",
                "unknown, expired, used or for another console",
                vmId=vm_id,
                protocol=query.protocol,
            )
            raise Refusal(403, "the console token is not valid for this console")
        record_use(self.context.audit, identity, grant, "tunnel")
        return lower_role(role, grant.role)

    def _denied(self, request: Any, vm_id: str, query: TunnelQuery, why: str) -> None:
        self.context.audit.record(
            "denied",
            identity_of(request),
            vmId=vm_id,
            method="CONNECT",
            protocol=query.protocol,
            why=why,
        )


# -- CONNECT's headers --------------------------------------------------------


def connect_headers(request: ConsoleRequest) -> bool:
    """A CONNECT's headers are in: refuse it now where waiting would be
    wrong (True), or let it render (False).  No request comes after a
    CONNECT on its connection."""
    channel = request.channel
    if request.isHTTP2:
        _reset_h2_connect(request)
        return True
    headers = request.requestHeaders
    # Twisted decides persistence from the request's Connection header once
    # this hook is done: "close" there makes any answer close the connection.
    headers.setRawHeaders(b"connection", [b"close"])
    length = headers.getRawHeaders(b"content-length") or [b"0"]
    if headers.hasHeader(b"transfer-encoding") or length != [b"0"]:
        channel.refuse(400, "a CONNECT request has no body")
        return True
    return False


def _reset_h2_connect(request: ConsoleRequest) -> None:
    """RST_STREAM HTTP_1_1_REQUIRED, and forget the stream."""
    stream = request.channel
    conn = stream._conn
    log.info(
        "refused a CONNECT over HTTP/2 from {peer}: tunnels need HTTP/1.1",
        peer=peer_address(conn.transport),
    )
    conn.conn.reset_stream(stream.streamID, error_code=ErrorCodes.HTTP_1_1_REQUIRED)
    conn._tryToWriteControlData()
    stream.connectionLost(Failure(ConnectionDone("CONNECT needs HTTP/1.1")))
    conn._requestDone(stream.streamID)


def install_tunnels(site: ConsoleSite, root: Root, context: ServerContext) -> None:
    """Route /consoleTunnel/<vmId>, check CONNECT requests' headers, and
    close a VM's tunnels when it is destroyed."""
    root.tunnels = lambda vm_id: TunnelResource(context, vm_id)
    context.registry.destroyed.append(lambda vm_id: close_vm_tunnels(site, vm_id))
    previous = site.headersReceivedHook

    def headers_received(request: ConsoleRequest) -> None:
        if request.earlyMethod == b"CONNECT":
            if connect_headers(request):
                return
        if previous is not None:
            previous(request)

    site.headersReceivedHook = headers_received
