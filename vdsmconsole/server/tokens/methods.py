"""The token RPCs' bodies: ``remoteConsole``, ``revokeConsoleTokens``,
``consoleConnectInfo``.  ``server/rpc.py`` exposes them (its decorator turns
StatusError into a status dict); here they take the context and the request.

``remoteConsole`` checks everything before minting: the protocol, the params
(``ttl`` 1..MAX_TOKEN_TTL, ``singleUse``, ``role``), that the role is not
above the caller's (a refusal is audited), that the VM exists and has that
console.  The token is in the answer only; the audit line names its id.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any

from vdsmconsole.identity import identity_of
from vdsmconsole.server.authz import ROLES, TOKEN_ROLE_PERMISSIONS
from vdsmconsole.server.context import ServerContext
from vdsmconsole.server.tokens.audit import (
    record_mint,
    record_refusal,
    record_revoke,
    record_use,
)
from vdsmconsole.server.tokens.connectinfo import connect_info
from vdsmconsole.server.tokens.store import TOKEN_ROLES, TooManyTokens, token_id
from vdsmconsole.server.tokens.urls import console_url, request_host
from vdsmconsole.spec import (
    DEFAULT_TOKEN_TTL,
    MAX_TOKEN_TTL,
    REMOTE_PROTOCOLS,
    SpecError,
    is_valid_token,
    validate_vm_id,
)
from vdsmconsole.status import Code, StatusError, no_vm_message, success

__all__ = [
    "TokenParams",
    "console_connect_info",
    "parse_token_params",
    "remote_console",
    "revoke_console_tokens",
]

PARAM_KEYS = ("ttl", "singleUse", "role")


def _vm_id(value: object) -> str:
    try:
        return validate_vm_id(value)
    except SpecError as e:
        raise StatusError(Code.MISS_PARAM, str(e)) from None


def _protocol(value: object) -> str:
    if value not in REMOTE_PROTOCOLS:
        raise StatusError(
            Code.MISS_PARAM,
            f"protocol must be one of {', '.join(REMOTE_PROTOCOLS)}, "
            f"not {reprlib.repr(value)}",
        )
    assert isinstance(value, str)
    return value


@dataclass(frozen=True)
class TokenParams:
    """remoteConsole's ``params``, checked; ``role`` None: the caller's."""

    ttl: int
    single_use: bool
    role: str | None


def parse_token_params(params: object) -> TokenParams:
    """Validate remoteConsole's ``params`` struct; MissParam if malformed."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise StatusError(Code.MISS_PARAM, "params must be a struct")
    unknown = sorted(str(k) for k in params if k not in PARAM_KEYS)
    if unknown:
        raise StatusError(
            Code.MISS_PARAM,
            f"unknown params {reprlib.repr(unknown)}; known: {', '.join(PARAM_KEYS)}",
        )
    ttl = params.get("ttl", DEFAULT_TOKEN_TTL)
    if (
        not isinstance(ttl, int)
        or isinstance(ttl, bool)
        or not 0 < ttl <= MAX_TOKEN_TTL
    ):
        raise StatusError(
            Code.MISS_PARAM,
            f"ttl must be 1-{MAX_TOKEN_TTL} seconds, not {reprlib.repr(ttl)}",
        )
    single_use = params.get("singleUse", False)
    if not isinstance(single_use, bool):
        raise StatusError(Code.MISS_PARAM, "singleUse must be a boolean")
    role = params.get("role")
    if role is not None and role not in TOKEN_ROLES:
        raise StatusError(
            Code.MISS_PARAM,
            f"role must be one of {', '.join(TOKEN_ROLES)}, not {reprlib.repr(role)}",
        )
    return TokenParams(ttl, single_use, role)


def _check_console(context: ServerContext, vm_id: str, protocol: str) -> None:
    """noVM, or noConsole if the VM has no console of that protocol."""
    registry = context.registry
    if protocol == "serial":
        registry.get(vm_id)  # noVM, or noConsole for a graphics-only VM
    else:
        registry.endpoint(vm_id, protocol)


def remote_console(
    context: ServerContext,
    request: Any,
    vm_id: object,
    protocol: object,
    params: object,
) -> dict[str, Any]:
    """Mint a token for a VM's console; answer ``console: {protocol, type,
    url, token, expires}``."""
    vm = _vm_id(vm_id)
    kind = _protocol(protocol)
    asked = parse_token_params(params)
    identity = identity_of(request)
    caller = context.authz.role_for(identity)
    caller_may = ROLES.get(caller or "", frozenset())
    if asked.role is None:
        role = (
            "operator" if TOKEN_ROLE_PERMISSIONS["operator"] in caller_may else "viewer"
        )
    else:
        role = asked.role
    if TOKEN_ROLE_PERMISSIONS[role] not in caller_may:
        record_refusal(
            context.audit,
            identity,
            "remoteConsole",
            f"role {role} above the caller's ({caller})",
            vmId=vm,
            protocol=kind,
            role=role,
        )
        raise StatusError(
            Code.DENIED, f"{identity} may not mint a console token of role {role}"
        )
    _check_console(context, vm, kind)
    try:
        token, expires = context.tokens.mint(
            vm, kind, role, asked.ttl, asked.single_use, holder=identity.name or "-"
        )
    except TooManyTokens as e:
        raise StatusError(Code.UNEXPECTED, f"{e}; retry later") from None
    except OSError as e:
        raise StatusError(
            Code.UNEXPECTED, f"cannot persist console tokens: {e.strerror}"
        ) from None
    grant = context.tokens.lookup(token)
    assert grant is not None
    record_mint(context.audit, identity, grant)
    host = request_host(request)
    what, url = console_url(host, context.port, context.web_port, vm, kind, token)
    return success(
        console={
            "protocol": kind,
            "type": what,
            "url": url,
            "token": token,
            "expires": int(expires),
        }
    )


def revoke_console_tokens(
    context: ServerContext, request: Any, vm_id: object
) -> dict[str, Any]:
    """Forget every token of a VM; answer ``revoked: N``.  noVM for a vmId
    that is neither registered nor has tokens."""
    vm = _vm_id(vm_id)
    count = context.tokens.revoke_vm(vm)
    if count == 0 and not context.registry.has_vm(vm):
        raise StatusError(Code.NO_VM, no_vm_message(vm))
    record_revoke(context.audit, identity_of(request), vm, count, "revokeConsoleTokens")
    return success(revoked=count)


def console_connect_info(
    context: ServerContext, request: Any, token: object
) -> dict[str, Any]:
    """Nova's connect info for a token, over XML-RPC (no None on the wire:
    a null ``internal_access_path`` is left out).  A lookup is a use."""
    identity = identity_of(request)
    via = "consoleConnectInfo"
    if not is_valid_token(token):
        record_refusal(context.audit, identity, via, "malformed token")
        raise StatusError(Code.MISS_PARAM, "malformed console token")
    assert isinstance(token, str)
    info = connect_info(context, token, request_host(request))
    if info is None:
        record_refusal(
            context.audit,
            identity,
            via,
            "unknown, expired or used token",
            tokenId=token_id(token),
        )
        raise StatusError(Code.NO_TOKEN)
    grant, answer = info
    record_use(context.audit, identity, grant, via)
    return success(**answer)
