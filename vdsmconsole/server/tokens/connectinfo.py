"""Connect info of a console token, in Nova's ``os-console-auth-tokens`` shape,
and the resource ``GET /os-console-auth-tokens/<token>`` that answers it.

A third-party gateway (Guacamole, a Nova-style proxy) holding a token asks
where the console is: ``{"console": {"instance_uuid", "host", "port",
"internal_access_path", "console_type"}}``.  A TCP graphics endpoint is
given as its own host and port (``internal_access_path`` null); a unix-socket
endpoint or the serial console is reached through this server's tunnel, so
the answer names this server and the tunnel's path.  A lookup is a use: a
single-use token answers once.

Only admins may ask (403 otherwise); 400 for a malformed token, 404 for an
unknown, expired or used one, 405 for any method but GET (a HEAD would
consume a single-use token without showing the answer).  Each answer and
refusal is an audit line with the caller's identity, never the token.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web import resource

from vdsmconsole.identity import identity_of
from vdsmconsole.server.authz import CONNECT_INFO_PERMISSION
from vdsmconsole.server.context import ServerContext
from vdsmconsole.server.http.resources import answer
from vdsmconsole.server.tokens.audit import record_refusal, record_use
from vdsmconsole.server.tokens.store import TokenGrant, token_id
from vdsmconsole.server.tokens.urls import request_host, tunnel_path
from vdsmconsole.spec import CONNECT_INFO_PATH, is_valid_token
from vdsmconsole.status import StatusError

__all__ = [
    "CONNECT_INFO_SEGMENT",
    "ConnectInfoResource",
    "connect_info",
    "install_connect_info",
]

CONNECT_INFO_SEGMENT = CONNECT_INFO_PATH.strip("/").encode("ascii")
VIA = "connectInfo"


def _where(context: ServerContext, grant: TokenGrant, host: str) -> dict[str, Any]:
    """host, port and internal_access_path of a grant's console (StatusError
    if the VM or its console is gone)."""
    if grant.protocol != "serial":
        endpoint = context.registry.endpoint(grant.vm_id, grant.protocol)
        if not endpoint.path:
            return {
                "host": endpoint.host,
                "port": endpoint.port,
                "internal_access_path": None,
            }
    else:
        context.registry.get(grant.vm_id)
    return {
        "host": host,
        "port": context.port,
        "internal_access_path": tunnel_path(grant.vm_id, grant.protocol),
    }


def connect_info(
    context: ServerContext, token: str, host: str
) -> tuple[TokenGrant, dict[str, Any]] | None:
    """The grant and Nova's answer for a live token, consuming a single-use
    one; None if the token is unknown, expired, used, or its console gone.

    ``host``: this server's name as the caller knows it (for a console
    reached through the tunnel).
    """
    grant = context.tokens.lookup(token)
    if grant is None:
        return None
    try:
        where = _where(context, grant, host)
    except StatusError:
        return None
    if context.tokens.use(token) is None:
        return None
    console = {"instance_uuid": grant.vm_id, **where, "console_type": grant.protocol}
    return grant, {"console": console}


class ConnectInfoResource(resource.Resource):
    """``/os-console-auth-tokens/<token>`` (routed by the Root's child)."""

    isLeaf = True

    def __init__(self, context: ServerContext) -> None:
        super().__init__()
        self.context = context

    def render(self, request: Any) -> bytes:
        if request.method != b"GET":
            return answer(request, 405, "method not allowed", {b"allow": b"GET"})
        audit = self.context.audit
        identity = identity_of(request)
        if not self.context.authz.allows(identity, CONNECT_INFO_PERMISSION):
            record_refusal(audit, identity, VIA, "not an admin")
            return answer(request, 403, f"{identity} may not read connect info")
        segments = request.postpath
        if len(segments) != 1 or not segments[0]:
            return answer(request, 404, "not found")
        raw = segments[0].decode("ascii", "replace")
        if not is_valid_token(raw):
            record_refusal(audit, identity, VIA, "malformed token")
            return answer(request, 400, "malformed console token")
        found = connect_info(self.context, raw, request_host(request))
        if found is None:
            record_refusal(
                audit,
                identity,
                VIA,
                "unknown, expired or used token",
                tokenId=token_id(raw),
            )
            return answer(request, 404, "unknown or expired console token")
        grant, info = found
        record_use(audit, identity, grant, VIA)
        body = json.dumps(info).encode("utf-8")
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body


def install_connect_info(root: resource.Resource, context: ServerContext) -> None:
    """Route ``/os-console-auth-tokens/...`` from the Root to the resource."""
    # A static child: Root's getChild (RPC, streams) is asked only for the rest.
    # mypy does not see zope's @implementer(IResource) on Resource.
    root.putChild(CONNECT_INFO_SEGMENT, ConnectInfoResource(context))  # type: ignore[arg-type]
