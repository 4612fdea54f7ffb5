"""The audit lines of console tokens: each mint, use and refusal, with the
caller's identity and the token's id (a SHA-256 prefix), never the token.

One place for the event names and fields, so that the RPC methods, the
connect-info resource and the tunnels (which use tokens too) write the same
lines: ``tokenMint``, ``tokenUse``, ``tokenRefused``, ``tokenRevoke``.
"""

from __future__ import annotations

from typing import Any

from vdsmconsole.server.audit import AuditLog
from vdsmconsole.server.tokens.store import TokenGrant

__all__ = ["record_mint", "record_refusal", "record_revoke", "record_use"]


def _grant_fields(grant: TokenGrant) -> dict[str, Any]:
    return {
        "tokenId": grant.id,
        "vmId": grant.vm_id,
        "protocol": grant.protocol,
        "role": grant.role,
        "singleUse": grant.single_use,
        "expires": round(grant.expires, 3),
    }


def record_mint(audit: AuditLog, identity: object, grant: TokenGrant) -> None:
    """A token was minted (remoteConsole)."""
    audit.record("tokenMint", identity, **_grant_fields(grant))


def record_use(audit: AuditLog, identity: object, grant: TokenGrant, via: str) -> None:
    """A token was used; ``via``: connectInfo, consoleConnectInfo or tunnel."""
    audit.record("tokenUse", identity, via=via, **_grant_fields(grant))


def record_refusal(
    audit: AuditLog, identity: object, via: str, reason: str, **fields: Any
) -> None:
    """A mint or use was refused; ``fields`` may name the vmId, protocol,
    role or ``tokenId`` (never the token)."""
    audit.record("tokenRefused", identity, via=via, reason=reason, **fields)


def record_revoke(
    audit: AuditLog, identity: object, vm_id: str, count: int, via: str
) -> None:
    """A VM's tokens were revoked (revokeConsoleTokens, destroy)."""
    audit.record("tokenRevoke", identity, vmId=vm_id, revoked=count, via=via)
