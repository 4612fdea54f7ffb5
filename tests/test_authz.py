"""Identities to roles to permissions: the pure authorization rules."""

from __future__ import annotations

import pytest

from vdsmconsole.identity import PeerIdentity
from vdsmconsole.server.authz import (
    Authorizer,
    Permission,
    Rule,
    rpc_permission,
    stream_permission,
)

ENGINE = PeerIdentity("engine")
VIEWER = PeerIdentity("grafana", ("monitor-1.example.com",))
STRANGER = PeerIdentity("stranger")


def test_no_mapping_makes_every_certificate_admin():
    """Without a mapping every certificate the CA signed is admin, as in VDSM."""
    authz = Authorizer.from_mapping(None)
    for permission in Permission:
        assert authz.allows(STRANGER, permission)


@pytest.fixture
def authz() -> Authorizer:
    return Authorizer.from_mapping(
        {"engine": "admin", "ops-*": "operator", "monitor-*.example.com": "viewer"}
    )


@pytest.mark.parametrize(
    "identity,read,write,admin",
    [
        (ENGINE, True, True, True),
        (PeerIdentity("ops-alice"), True, True, False),
        (VIEWER, True, False, False),  # matched by a SAN glob
        (STRANGER, False, False, False),  # a mapping exists: unmatched is nothing
    ],
)
def test_roles_grant_their_permissions(authz, identity, read, write, admin):
    """viewer reads, operator also writes, admin does everything, others nothing."""
    assert authz.allows(identity, Permission.READ) is read
    assert authz.allows(identity, Permission.WRITE) is write
    assert authz.allows(identity, Permission.ADMIN) is admin


def test_first_matching_rule_wins():
    """Rules are tried in file order: an earlier, narrower rule takes precedence."""
    authz = Authorizer([Rule("ops-root", "admin"), Rule("ops-*", "viewer")])
    assert authz.role_for(PeerIdentity("ops-root")) == "admin"
    assert authz.role_for(PeerIdentity("ops-bob")) == "viewer"


def test_glob_is_not_a_substring_match():
    """A pattern must match a whole name, not part of one."""
    authz = Authorizer([Rule("engine", "admin")])
    assert authz.role_for(PeerIdentity("engine-evil")) is None
    assert authz.role_for(PeerIdentity("evil", ("engine.evil.org",))) is None


def test_unknown_role_is_refused():
    """A mapping naming a role that does not exist is a configuration error."""
    with pytest.raises(ValueError, match="superuser"):
        Authorizer.from_mapping({"x": "superuser"})


@pytest.mark.parametrize(
    "method,permission",
    [
        ("create", Permission.ADMIN),
        ("destroy", Permission.ADMIN),
        ("consoleWrite", Permission.WRITE),
        ("consoleRead", Permission.READ),
        ("list", Permission.READ),
        ("system.listMethods", Permission.READ),
    ],
)
def test_rpc_permissions(method, permission):
    """State-changing RPCs need admin, input needs write, the rest read."""
    assert rpc_permission(method) is permission


def test_stream_permissions():
    """Following a stream is reading; POST, PUT and duplex are writing."""
    assert stream_permission(b"GET") is Permission.READ
    assert stream_permission(b"HEAD") is Permission.READ
    assert stream_permission(b"POST") is Permission.WRITE
    assert stream_permission(b"PUT") is Permission.WRITE
