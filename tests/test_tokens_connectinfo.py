"""GET /os-console-auth-tokens/<token> in memory (treq's StubTreq over the
server's real Root): Nova's JSON, 400/403/404/405, a lookup is a use."""

from __future__ import annotations

import json

import pytest
from treq.testing import StubTreq
from twisted.web import resource

from tests.tokenhelp import PORT, make_context, result_of
from vdsmconsole.identity import PeerIdentity
from vdsmconsole.server.service import build_site

BASE = "https://console.example.com:54321/os-console-auth-tokens/"


class AsPeer(resource.Resource):
    """The server's root, as reached by a peer with certificate name ``cn``."""

    def __init__(self, root: resource.Resource, cn: str) -> None:
        super().__init__()
        self.root = root
        self.identity = PeerIdentity(cn=cn)

    def getChildWithDefault(self, path, request):
        request.peerIdentity = self.identity
        return self.root.getChildWithDefault(path, request)


@pytest.fixture
def env(tmp_path):
    context, reactor = make_context(tmp_path)
    root = build_site(context).resource

    def client(cn: str = "admin1") -> StubTreq:
        return StubTreq(AsPeer(root, cn))

    return context, reactor, client


def _request(stub: StubTreq, method: str, url: str):
    d = stub.request(method, url)
    stub.flush()
    response = result_of(d)
    body = stub.content(response)
    stub.flush()
    return response, result_of(body)


def _get(env, token: str, cn: str = "admin1"):
    return _request(env[2](cn), "GET", BASE + token)


def _mint(env, vm="gfx", protocol="vnc", ttl=600, single_use=False) -> str:
    return env[0].tokens.mint(vm, protocol, "viewer", ttl, single_use)[0]


def test_connect_info_is_novas_json_key_for_key(env):
    """200, application/json, exactly Nova's keys (a TCP endpoint: its own
    host and port, internal_access_path null)."""
    response, body = _get(env, _mint(env))
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert response.headers.getRawHeaders(b"cache-control") == [b"no-store"]
    assert json.loads(body) == {
        "console": {
            "instance_uuid": "gfx",
            "host": "10.0.0.5",
            "port": 5901,
            "internal_access_path": None,
            "console_type": "vnc",
        }
    }


def test_a_unix_socket_endpoint_points_at_this_servers_tunnel(env):
    """A unix-socket endpoint: the Host the caller used, this port, the tunnel path."""
    _, body = _get(env, _mint(env, "gfx", "spice"))
    assert json.loads(body) == {
        "console": {
            "instance_uuid": "gfx",
            "host": "console.example.com",
            "port": PORT,
            "internal_access_path": "/consoleTunnel/gfx?protocol=spice",
            "console_type": "spice",
        }
    }


@pytest.mark.parametrize("cn", ["viewer1", "operator1", "stranger"])
def test_non_admins_get_403_and_use_nothing(env, cn):
    """A viewer, an operator or an unmapped peer gets 403; the single-use
    token still answers the admin afterwards."""
    token = _mint(env, single_use=True)
    assert _get(env, token, cn)[0].code == 403
    assert _get(env, token)[0].code == 200


@pytest.mark.parametrize(
    "token", ["short", "x" * 44, "a" * 42 + "%21", "%00" * 43, "a" * 42 + "="]
)
def test_a_malformed_token_is_400(env, token):
    """Anything not shaped like a token is 400."""
    assert _get(env, token)[0].code == 400


def test_unknown_expired_and_used_tokens_are_404(env):
    """404 for a token never minted, one expired on the clock, one used up."""
    context, reactor, _ = env
    assert _get(env, "A" * 43)[0].code == 404
    expiring = _mint(env, ttl=10)
    single = _mint(env, single_use=True)
    assert _get(env, single)[0].code == 200
    assert _get(env, single)[0].code == 404
    reactor.advance(9)
    assert _get(env, expiring)[0].code == 200
    reactor.advance(1)
    assert _get(env, expiring)[0].code == 404


def test_a_percent_encoded_token_is_the_token(env):
    """The path segment is percent-decoded before it is checked, as routing does."""
    token = _mint(env)
    encoded = "".join(f"%{ord(c):02X}" for c in token[:5]) + token[5:]
    assert _get(env, encoded)[0].code == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD", "OPTIONS"])
def test_other_methods_are_405_and_use_nothing(env, method):
    """Every method but GET is 405 with Allow: GET; a single-use token stays."""
    token = _mint(env, single_use=True)
    response, _ = _request(env[2](), method, BASE + token)
    assert response.code == 405
    assert response.headers.getRawHeaders(b"allow") == [b"GET"]
    assert _get(env, token)[0].code == 200


@pytest.mark.parametrize("path", ["", "/", "/extra"])
def test_no_token_or_more_segments_is_404(env, path):
    """The collection itself and deeper paths are not resources: 404."""
    url = BASE.rstrip("/") + path if path != "/extra" else BASE + _mint(env) + path
    assert _request(env[2](), "GET", url)[0].code == 404
