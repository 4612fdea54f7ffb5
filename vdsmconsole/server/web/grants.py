"""What a token grants on the web listener: issue 13's token store.

Pages look a token up (loading a page must not spend a single-use token); a
websocket uses it (``TokenStore.use``, for the grant's vmId and protocol).
Audit lines name a token by the first 12 hex digits of its SHA-256, never
the token itself.
"""

from __future__ import annotations

import hashlib
from typing import Any

from vdsmconsole.server.context import ServerContext
from vdsmconsole.spec import is_valid_token


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


def token_tag(token: str | None) -> str:
    """How an audit line names a token: a SHA-256 prefix."""
    if token is None:
        return ""
    return hashlib.sha256(token.encode("ascii")).hexdigest()[:12]


def lookup(context: ServerContext, token: str | None) -> Any:
    """The grant of a token for a page (no side effect), or None."""
    return None if token is None else context.tokens.lookup(token)


def use(context: ServerContext, token: str | None) -> Any:
    """The grant of a token for a websocket (a single-use token is spent)."""
    return None if token is None else context.tokens.use(token)
