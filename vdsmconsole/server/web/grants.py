"""What a token grants on the web listener: issue 13's token store.

The web listener learns a console's vmId and protocol from its token alone:
a page looks the token up (``TokenStore.lookup``: loading a page must not
spend a single-use token), a websocket uses it (``TokenStore.use`` with the
grant's own vmId and protocol: a single-use token opens one websocket).

Refusals are one ``tokenRefused`` audit line each (h3's helpers in
``tokens/audit.py``), naming the token by its id (a SHA-256 prefix), never
the token itself; a websocket's use is a ``tokenUse`` line.
"""

from __future__ import annotations

from typing import Any

from vdsmconsole.identity import PeerIdentity
from vdsmconsole.server.context import ServerContext
from vdsmconsole.server.tokens.audit import record_refusal, record_use
from vdsmconsole.server.tokens.store import TokenGrant, token_id
from vdsmconsole.spec import is_valid_token

VIA = "web"  # the audit lines' ``via`` field


def token_of(request: Any) -> str | None:
    """The request's one ``token`` query parameter, if well formed."""
    values = request.args.get(b"token", [])
    if len(values) != 1:
        return None
    try:
        token = values[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    return token if is_valid_token(token) else None


def _refused(
    context: ServerContext, request: Any, identity: PeerIdentity, token: str | None
) -> None:
    fields: dict[str, Any] = {"path": request.path.decode("latin-1")[:200]}
    if token is not None:
        fields["tokenId"] = token_id(token)
        reason = "unknown, expired or used token"
    elif request.args.get(b"token"):
        reason = "malformed token"
    else:
        reason = "no token"
    record_refusal(context.audit, identity, VIA, reason, **fields)


def lookup(
    context: ServerContext, request: Any, identity: PeerIdentity
) -> TokenGrant | None:
    """The grant of the request's token for a page (no side effect), or
    None (audited)."""
    token = token_of(request)
    grant = None if token is None else context.tokens.lookup(token)
    if grant is None:
        _refused(context, request, identity, token)
    return grant


def use(
    context: ServerContext, request: Any, identity: PeerIdentity
) -> TokenGrant | None:
    """The grant of the request's token for a websocket (a single-use token
    is spent), or None (audited)."""
    token = token_of(request)
    grant = None
    if token is not None:
        found = context.tokens.lookup(token)
        if found is not None:
            grant = context.tokens.use(
                token, vm_id=found.vm_id, protocol=found.protocol
            )
    if grant is None:
        _refused(context, request, identity, token)
        return None
    record_use(context.audit, identity, grant, "websocket")
    return grant
