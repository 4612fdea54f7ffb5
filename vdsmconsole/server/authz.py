"""Who may do what: certificate identities mapped to roles.  Pure, no I/O.

The configuration maps identity patterns (exact or a shell-style glob) to
roles.  The first pattern, in file order, that matches one of the
certificate's names decides.  A plain pattern matches the first CN, the DNS
SANs and the IP SANs; a pattern written with a scheme, ``uri:...`` or
``email:...``, matches only URI or email SANs (written with that scheme);
DirectoryName and other SANs never match (see identity.py).  With no mapping
at all every certificate the CA signed is ``admin``, as in VDSM; with a
mapping, a certificate that matches none of it may do nothing.

=========  ==========================================================
role       may
=========  ==========================================================
viewer     follow consoles (GET), read-only RPCs (incl. consoleRead)
operator   the above, and send input (POST, duplex, consoleWrite)
admin      everything (create, destroy, console tokens' connect info)
=========  ==========================================================

Console tokens (``remoteConsole``) carry a role of their own, never above
the caller's: any reader may mint a ``viewer`` token, an ``operator`` token
needs WRITE.  Revoking tokens and reading a token's connect info (what a
third-party gateway does) need ADMIN.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vdsmconsole.identity import QUALIFIED_SCHEMES, PeerIdentity


class Permission(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


ROLES: dict[str, frozenset[Permission]] = {
    "viewer": frozenset({Permission.READ}),
    "operator": frozenset({Permission.READ, Permission.WRITE}),
    "admin": frozenset(Permission),
}

# What each RPC needs; anything not named here (system.*, ping...) is READ.
RPC_PERMISSIONS: dict[str, Permission] = {
    "create": Permission.ADMIN,
    "destroy": Permission.ADMIN,
    "consoleWrite": Permission.WRITE,
    "revokeConsoleTokens": Permission.ADMIN,
    "consoleConnectInfo": Permission.ADMIN,
}
# GET /os-console-auth-tokens/<token>: what consoleConnectInfo needs.
CONNECT_INFO_PERMISSION = Permission.ADMIN
# What minting a token of each role needs (beyond remoteConsole's READ).
TOKEN_ROLE_PERMISSIONS: dict[str, Permission] = {
    "viewer": Permission.READ,
    "operator": Permission.WRITE,
}


def rpc_permission(method: str) -> Permission:
    return RPC_PERMISSIONS.get(method, Permission.READ)


def stream_permission(http_method: bytes) -> Permission:
    return Permission.READ if http_method in (b"GET", b"HEAD") else Permission.WRITE


@dataclass(frozen=True)
class Rule:
    pattern: str
    role: str

    def matches(self, identity: PeerIdentity) -> bool:
        if self.pattern.startswith(QUALIFIED_SCHEMES):
            names = identity.qualified_names()
        else:
            names = identity.names()
        return any(fnmatch.fnmatchcase(name, self.pattern) for name in names)


class Authorizer:
    def __init__(self, rules: Iterable[Rule] | None = None) -> None:
        self.rules = tuple(rules) if rules is not None else None
        for rule in self.rules or ():
            if rule.role not in ROLES:
                raise ValueError(f"unknown role {rule.role!r} for {rule.pattern!r}")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str] | None) -> Authorizer:
        if not mapping:
            return cls(None)
        return cls(Rule(pattern, role) for pattern, role in mapping.items())

    def role_for(self, identity: PeerIdentity) -> str | None:
        if self.rules is None:
            return "admin"
        for rule in self.rules:
            if rule.matches(identity):
                return rule.role
        return None

    def allows(self, identity: PeerIdentity, permission: Permission) -> bool:
        role = self.role_for(identity)
        return role is not None and permission in ROLES[role]
