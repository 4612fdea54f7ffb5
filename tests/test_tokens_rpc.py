"""The token RPCs' bodies in memory (a Clock, a real registry): validation,
roles, noVM/noConsole, connect info's shapes, revocation, audit lines."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.tokenhelp import NOW, PORT, make_context, request_as
from vdsmconsole.server.tokens.methods import (
    console_connect_info,
    remote_console,
    revoke_console_tokens,
)
from vdsmconsole.spec import MAX_TOKEN_TTL, is_valid_token
from vdsmconsole.status import StatusError


@pytest.fixture
def env(tmp_path):
    return make_context(tmp_path)


def _mint(context, who="admin1", vm="gfx", protocol="vnc", params=None, **kw):
    reply = remote_console(context, request_as(who, **kw), vm, protocol, params)
    assert reply["status"]["code"] == 0, reply
    return reply["console"]


def _code(call, *args) -> int:
    try:
        return call(*args)["status"]["code"]
    except StatusError as e:
        return int(e.code)


def _audit(context) -> list[dict]:
    path = context.config.state_dir / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_remote_console_answers_the_tunnel_url_and_token(env):
    """The answer: protocol, type tunnel, the URL with the caller's host, the
    token (also in the URL), expires at now + the default 600 s."""
    context, _ = env
    console = _mint(context, vm="gfx", protocol="vnc")
    token = console["token"]
    assert is_valid_token(token)
    assert console["protocol"] == "vnc" and console["type"] == "tunnel"
    assert console["expires"] == int(NOW + 600)
    url = urlsplit(console["url"])
    assert (url.scheme, url.hostname, url.port) == (
        "https",
        "console.example.com",
        PORT,
    )
    assert url.path == "/consoleTunnel/gfx"
    assert parse_qs(url.query) == {"protocol": ["vnc"], "token": [token]}


@pytest.mark.parametrize(
    "host,expected",
    [
        (b"[::1]:54321", "[::1]"),
        (b"10.1.2.3", "10.1.2.3"),
        (b"bad host", "192.0.2.10"),
        (b"evil.example.com/x", "192.0.2.10"),
        (b"", "192.0.2.10"),
        (None, "192.0.2.10"),
        (b"[not-v6]:1", "192.0.2.10"),
    ],
)
def test_the_url_names_the_callers_host_if_valid(env, host, expected):
    """A valid Host header names the URL's host; anything else the local address."""
    context, _ = env
    url = _mint(context, host=host)["url"]
    assert url.startswith(f"https://{expected}:{PORT}/consoleTunnel/gfx?"), url


@pytest.mark.parametrize(
    "who,asked,granted",
    [
        ("viewer1", None, "viewer"),
        ("operator1", None, "operator"),
        ("admin1", None, "operator"),
        ("operator1", "viewer", "viewer"),
        ("admin1", "operator", "operator"),
    ],
)
def test_the_tokens_role_defaults_to_the_callers(env, who, asked, granted):
    """Without a role the token has the caller's (admin: operator); a lower one
    may be asked for."""
    context, _ = env
    params = {} if asked is None else {"role": asked}
    token = _mint(context, who=who, params=params)["token"]
    assert context.tokens.lookup(token).role == granted


def test_a_viewer_cannot_mint_an_operator_token(env):
    """A viewer asking for an operator token is denied (101) and audited; no token."""
    context, _ = env
    request = request_as("viewer1")
    with pytest.raises(StatusError) as caught:
        remote_console(context, request, "gfx", "vnc", {"role": "operator"})
    assert int(caught.value.code) == 101
    assert len(context.tokens) == 0
    [refusal] = [e for e in _audit(context) if e["event"] == "tokenRefused"]
    assert refusal["identity"] == "viewer1"
    assert (refusal["vmId"], refusal["role"], refusal["via"]) == (
        "gfx",
        "operator",
        "remoteConsole",
    )


@pytest.mark.parametrize(
    "vm,protocol,params,code",
    [
        ("gfx", "telnet", {}, 11),
        ("gfx", "", {}, 11),
        ("../gfx", "vnc", {}, 11),
        ("gfx", "vnc", [], 11),
        ("gfx", "vnc", {"ttl": 0}, 11),
        ("gfx", "vnc", {"ttl": MAX_TOKEN_TTL + 1}, 11),
        ("gfx", "vnc", {"ttl": "60"}, 11),
        ("gfx", "vnc", {"ttl": True}, 11),
        ("gfx", "vnc", {"singleUse": "yes"}, 11),
        ("gfx", "vnc", {"role": "admin"}, 11),
        ("gfx", "vnc", {"single_use": True}, 11),
        ("nosuchvm", "vnc", {}, 1),
        ("gfx", "serial", {}, 104),
        ("gfx", "rdp", {}, 104),
        ("serial", "vnc", {}, 104),
    ],
)
def test_bad_requests_mint_nothing(env, vm, protocol, params, code):
    """Malformed params are MissParam, an unknown VM noVM, a console the VM
    lacks noConsole; no token is minted."""
    context, _ = env
    assert (
        _code(remote_console, context, request_as("admin1"), vm, protocol, params)
        == code
    )
    assert len(context.tokens) == 0


def test_the_ttls_bounds_are_accepted(env):
    """ttl 1 and MAX_TOKEN_TTL both mint."""
    context, _ = env
    for ttl in (1, MAX_TOKEN_TTL):
        console = _mint(context, params={"ttl": ttl})
        assert console["expires"] == int(NOW + ttl)


# -- connect info ------------------------------------------------------------------


def _info(context, token):
    return console_connect_info(context, request_as("admin1"), token)


def test_connect_info_of_a_tcp_endpoint_is_the_endpoint(env):
    """For a TCP graphics endpoint: its host and port, no internal path."""
    context, _ = env
    token = _mint(context, vm="gfx", protocol="vnc")["token"]
    assert _info(context, token)["console"] == {
        "instance_uuid": "gfx",
        "host": "10.0.0.5",
        "port": 5901,
        "internal_access_path": None,  # wire_safe drops it on XML-RPC
        "console_type": "vnc",
    }


@pytest.mark.parametrize(
    "vm,protocol", [("gfx", "spice"), ("both", "rdp"), ("serial", "serial")]
)
def test_connect_info_of_a_socket_or_serial_is_this_servers_tunnel(env, vm, protocol):
    """A unix-socket endpoint or the serial console: this server's host and
    port and the tunnel's path."""
    context, _ = env
    token = _mint(context, vm=vm, protocol=protocol)["token"]
    assert _info(context, token)["console"] == {
        "instance_uuid": vm,
        "host": "console.example.com",
        "port": PORT,
        "internal_access_path": f"/consoleTunnel/{vm}?protocol={protocol}",
        "console_type": protocol,
    }


def test_connect_info_is_a_use(env):
    """A single-use token answers connect info once, then noToken (105)."""
    context, _ = env
    token = _mint(context, params={"singleUse": True})["token"]
    assert _code(_info, context, token) == 0
    assert _code(_info, context, token) == 105


def test_connect_info_of_an_expired_token_is_no_token(env):
    """Once its ttl has passed on the clock, a token is noToken."""
    context, reactor = env
    token = _mint(context, params={"ttl": 5})["token"]
    reactor.advance(4.9)
    assert _code(_info, context, token) == 0
    reactor.advance(0.1)
    assert _code(_info, context, token) == 105


def test_connect_info_of_a_malformed_token_is_miss_param(env):
    """A string that is not shaped like a token is MissParam (11)."""
    context, _ = env
    assert _code(_info, context, "short") == 11
    assert _code(_info, context, 42) == 11


# -- revocation ---------------------------------------------------------------------


def test_revoke_console_tokens_forgets_one_vms_tokens(env):
    """revokeConsoleTokens revokes that VM's tokens, answers how many, and
    leaves other VMs' tokens alone."""
    context, _ = env
    gone = [_mint(context, vm="gfx")["token"] for _ in range(2)]
    kept = _mint(context, vm="serial", protocol="serial")["token"]
    reply = revoke_console_tokens(context, request_as("admin1"), "gfx")
    assert reply["revoked"] == 2
    assert all(_code(_info, context, t) == 105 for t in gone)
    assert _code(_info, context, kept) == 0
    revoke = [e for e in _audit(context) if e["event"] == "tokenRevoke"]
    assert [(e["vmId"], e["revoked"], e["identity"]) for e in revoke] == [
        ("gfx", 2, "admin1")
    ]


def test_revoke_of_an_unknown_vm_is_no_vm(env):
    """revokeConsoleTokens of a vmId nobody knows is noVM (1)."""
    context, _ = env
    assert _code(revoke_console_tokens, context, request_as("admin1"), "nosuch") == 1


def test_destroy_revokes_the_vms_tokens(env):
    """Destroying a VM revokes its tokens (the registry's destroyed hook)."""
    context, _ = env
    token = _mint(context, vm="gfx")["token"]
    other = _mint(context, vm="both", protocol="rdp")["token"]
    context.registry.destroy("gfx")
    assert context.tokens.lookup(token) is None
    assert context.tokens.lookup(other) is not None


# -- audit -------------------------------------------------------------------------


def test_mint_use_and_refusal_are_audited_without_the_token(env):
    """Each mint, use and refusal is one audit line with the identity and the
    token's id; the token itself is in no line."""
    context, _ = env
    token = _mint(context, who="operator1", params={"singleUse": True})["token"]
    _info(context, token)
    _code(_info, context, token)
    text = (context.config.state_dir / "audit.log").read_text()
    assert token not in text
    events = [(e["event"], e["identity"], e.get("tokenId")) for e in _audit(context)]
    ids = {e[2] for e in events}
    assert len(ids) == 1 and len(ids.pop()) == 12
    assert [e[:2] for e in events] == [
        ("tokenMint", "operator1"),
        ("tokenUse", "admin1"),
        ("tokenRefused", "admin1"),
    ]
