"""Console tokens on the real server (loopback TLS, certificates with roles):
remoteConsole, connect info in Nova's shape over HTTP/2 and HTTP/1.1 (curl),
expiry, single use, destroy, restart, roles, and no token in any file or log."""

from __future__ import annotations

import json
import subprocess
import time
import xmlrpc.client
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.serverproc import client_context, wait_for
from tests.streamhelp import DEMO_CONFIG
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

CONFIG = DEMO_CONFIG + (
    "\n[authorization]\n"
    '"engine" = "admin"\n"viewer1" = "viewer"\n"operator1" = "operator"\n'
)
PROTOCOLS = {"--http2": "2", "--http1.1": "1.1"}
DENIED, NO_CONSOLE, NO_TOKEN = 101, 104, 105


@pytest.fixture
def certs(issue_client):
    """Certificates of a viewer and an operator (the engine's is admin)."""
    return {name: issue_client(name, name) for name in ("viewer1", "operator1")}


@pytest.fixture
def env(server_factory, tmp_path, certs):
    """The server, with ``serial`` (a spawn console) and ``gfx`` (rdp on TCP,
    vnc on a unix socket; no serial console)."""
    server = server_factory(CONFIG)
    rpc = server.rpc()
    reply = rpc.create(
        {"vmId": "serial", "console": {"type": "spawn", "command": "mute"}}
    )
    assert reply["status"]["code"] == 0, reply
    graphics = [
        {"type": "rdp", "host": "127.0.0.1", "port": 3389},
        {"type": "vnc", "path": str(tmp_path / "vnc.sock")},
    ]
    reply = rpc.create({"vmId": "gfx", "graphics": graphics})
    assert reply["status"]["code"] == 0, reply
    return server, certs


def _rpc(server, cert=None):
    context = client_context(server.pki, *(cert or ()))
    return xmlrpc.client.ServerProxy(server.url(), context=context)


def _mint(server, vm, protocol, params=None, cert=None) -> dict:
    reply = _rpc(server, cert).remoteConsole(vm, protocol, params or {})
    assert reply["status"]["code"] == 0, reply
    return reply["console"]


def _curl(server, path, version="--http2", cert=None, method="GET"):
    """curl's status, HTTP version and body for ``path`` (as the engine)."""
    require_tool("curl", "curl")
    pki = server.pki
    cert_file, key_file = cert or (pki.client_cert, pki.client_key)
    argv = ["curl", "-sS", "--max-time", "20", version, "--cacert", str(pki.ca_cert)]
    argv += ["--cert", str(cert_file), "--key", str(key_file), "-X", method]
    argv += ["-o", "-", "-w", "\n%{http_code} %{http_version}", server.url(path)]
    out = subprocess.run(argv, capture_output=True, timeout=30, check=True).stdout
    body, _, tail = out.rpartition(b"\n")
    code, http = tail.decode().split()
    assert http == PROTOCOLS[version], (version, http)
    return int(code), body


def _info(server, token, version="--http2", cert=None):
    return _curl(server, f"/os-console-auth-tokens/{token}", version, cert)


@pytest.mark.parametrize("version", PROTOCOLS)
def test_connect_info_is_novas_shape_key_for_key(env, version):
    """A TCP endpoint's connect info is its host and port; a unix-socket
    endpoint's and the serial console's are this server's tunnel."""
    server, _ = env
    expected = {
        ("gfx", "rdp"): {"host": "127.0.0.1", "port": 3389, "path": None},
        ("gfx", "vnc"): {
            "host": "127.0.0.1",
            "port": server.port,
            "path": "/consoleTunnel/gfx?protocol=vnc",
        },
        ("serial", "serial"): {
            "host": "127.0.0.1",
            "port": server.port,
            "path": "/consoleTunnel/serial?protocol=serial",
        },
    }
    for (vm, protocol), where in expected.items():
        token = _mint(server, vm, protocol)["token"]
        code, body = _info(server, token, version)
        assert code == 200, body
        assert json.loads(body) == {
            "console": {
                "instance_uuid": vm,
                "host": where["host"],
                "port": where["port"],
                "internal_access_path": where["path"],
                "console_type": protocol,
            }
        }


def test_remote_console_answers_a_tunnel_url(env):
    """remoteConsole's URL names the host the caller used, this port, the
    tunnel path, the protocol and the token."""
    server, _ = env
    before = time.time()
    console = _mint(server, "gfx", "vnc", {"ttl": 120})
    url = urlsplit(console["url"])
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "https",
        "127.0.0.1",
        server.port,
        "/consoleTunnel/gfx",
    )
    assert parse_qs(url.query) == {"protocol": ["vnc"], "token": [console["token"]]}
    assert (console["protocol"], console["type"]) == ("vnc", "tunnel")
    assert before + 119 <= console["expires"] <= time.time() + 120


def test_a_console_the_vm_lacks_is_no_console(env):
    """serial of a graphics-only VM, and spice it does not have: noConsole."""
    server, _ = env
    rpc = _rpc(server)
    assert rpc.remoteConsole("gfx", "serial", {})["status"]["code"] == NO_CONSOLE
    assert rpc.remoteConsole("gfx", "spice", {})["status"]["code"] == NO_CONSOLE
    assert rpc.remoteConsole("nosuch", "vnc", {})["status"]["code"] == 1


@pytest.mark.parametrize("version", PROTOCOLS)
def test_a_token_of_ttl_1_expires(env, version):
    """A ttl=1 token answers while it is valid, then 404 once expired."""
    server, _ = env
    minted = time.monotonic()
    token = _mint(server, "gfx", "rdp", {"ttl": 1})["token"]
    code, _ = _info(server, token, version)
    if time.monotonic() - minted < 0.9:  # asked well within its second
        assert code == 200
    wait_for(lambda: _info(server, token, version)[0] == 404, 10, "expiry")
    reply = _rpc(server).consoleConnectInfo(token)
    assert reply["status"]["code"] == NO_TOKEN


@pytest.mark.parametrize("version", PROTOCOLS)
def test_a_single_use_token_works_once(env, version):
    """A single-use token answers connect info once, then 404 (and noToken)."""
    server, _ = env
    token = _mint(server, "gfx", "rdp", {"singleUse": True})["token"]
    assert _info(server, token, version)[0] == 200
    assert _info(server, token, version)[0] == 404
    assert _rpc(server).consoleConnectInfo(token)["status"]["code"] == NO_TOKEN


def test_consoleconnectinfo_over_xmlrpc(env):
    """consoleConnectInfo answers the same console (null path left out)."""
    server, _ = env
    token = _mint(server, "gfx", "rdp")["token"]
    reply = _rpc(server).consoleConnectInfo(token)
    assert reply["status"]["code"] == 0, reply
    assert reply["console"] == {
        "instance_uuid": "gfx",
        "host": "127.0.0.1",
        "port": 3389,
        "console_type": "rdp",
    }


def test_destroy_and_revoke_end_tokens(env, tmp_path):
    """destroy revokes a VM's tokens (a VM created again under its vmId does
    not honour them); revokeConsoleTokens says how many it revoked."""
    server, _ = env
    rpc = _rpc(server)
    gfx = _mint(server, "gfx", "rdp")["token"]
    serial = [_mint(server, "serial", "serial")["token"] for _ in range(2)]
    assert rpc.destroy("gfx")["status"]["code"] == 0
    graphics = [{"type": "rdp", "host": "127.0.0.1", "port": 3389}]
    assert rpc.create({"vmId": "gfx", "graphics": graphics})["status"]["code"] == 0
    assert _info(server, gfx)[0] == 404
    assert _info(server, serial[0])[0] == 200
    reply = rpc.revokeConsoleTokens("serial")
    assert (reply["status"]["code"], reply["revoked"]) == (0, 2)
    assert all(_info(server, t)[0] == 404 for t in serial)
    revokes = [
        (e["vmId"], e["revoked"], e["via"])
        for e in server.audit()
        if e["event"] == "tokenRevoke"
    ]
    assert revokes == [("gfx", 1, "destroy"), ("serial", 2, "revokeConsoleTokens")]


def test_a_restart_keeps_unexpired_tokens(env, server_factory):
    """After a restart an unexpired token still answers; used and revoked
    ones do not come back."""
    server, _ = env
    kept = _mint(server, "gfx", "rdp")["token"]
    used = _mint(server, "gfx", "rdp", {"singleUse": True})["token"]
    assert _info(server, used)[0] == 200
    server.stop()
    again = server_factory(CONFIG)  # the same workdir and state directory
    assert again.state_dir == server.state_dir
    assert _info(again, kept)[0] == 200
    assert _info(again, used)[0] == 404


def test_roles_of_tokens_and_connect_info(env):
    """A viewer mints viewer tokens but not operator ones (denied, audited); an
    operator mints operator tokens; neither may read connect info (403, 101)."""
    server, certs = env
    viewer, operator = certs["viewer1"], certs["operator1"]
    token = _mint(server, "gfx", "vnc", cert=viewer)["token"]
    reply = _rpc(server, viewer).remoteConsole("gfx", "vnc", {"role": "operator"})
    assert reply["status"]["code"] == DENIED
    assert _mint(server, "gfx", "vnc", {"role": "operator"}, cert=operator)
    for cert in (viewer, operator):
        for version in PROTOCOLS:
            assert _info(server, token, version, cert)[0] == 403
        assert _rpc(server, cert).consoleConnectInfo(token)["status"]["code"] == DENIED
        assert _rpc(server, cert).revokeConsoleTokens("gfx")["status"]["code"] == DENIED
    assert _info(server, token)[0] == 200  # the admin still can
    refused = [e for e in server.audit() if e["event"] == "tokenRefused"]
    assert ("viewer1", "remoteConsole", "operator") in {
        (e["identity"], e["via"], e.get("role")) for e in refused
    }
    assert {"viewer1", "operator1"} <= {e["identity"] for e in refused}


@pytest.mark.parametrize("version", PROTOCOLS)
def test_malformed_and_unknown_tokens_and_other_methods(env, version):
    """400 for a malformed token, 404 for an unknown one, 405 for POST."""
    server, _ = env
    assert _info(server, "not-a-token", version)[0] == 400
    assert _info(server, "A" * 43, version)[0] == 404
    token = _mint(server, "gfx", "rdp", {"singleUse": True})["token"]
    path = f"/os-console-auth-tokens/{token}"
    assert _curl(server, path, version, method="POST")[0] == 405
    assert _info(server, token, version)[0] == 200


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_no_token_in_the_state_directory_or_the_log(env, tmp_path):
    """After tokens are minted, used and refused, no token appears in any file
    under the state directory, in the server's log, or in tokens.json."""
    server, certs = env
    tokens = [
        _mint(server, "gfx", "rdp", {"singleUse": True})["token"],
        _mint(server, "serial", "serial")["token"],
        _mint(server, "gfx", "vnc", cert=certs["viewer1"])["token"],
    ]
    for version in PROTOCOLS:
        _info(server, tokens[0], version)  # 200, then 404
        _info(server, tokens[2], version, certs["operator1"])  # 403
    _rpc(server).consoleConnectInfo(tokens[1])
    _rpc(server, certs["viewer1"]).consoleConnectInfo(tokens[1])  # denied
    assert (server.state_dir / "tokens.json").stat().st_mode & 0o777 == 0o600
    assert (
        len(json.loads((server.state_dir / "tokens.json").read_text())["tokens"]) == 2
    )
    events = [e["event"] for e in server.audit() if e["event"].startswith("token")]
    assert sorted(events) == sorted(
        ["tokenMint"] * 3 + ["tokenUse"] * 2 + ["tokenRefused"] * 3
    )
    server.stop()  # everything flushed
    files = _files(server.state_dir) + [server.log_path]
    assert server.log_path in files and len(files) > 3
    for path in files:
        data = path.read_bytes()
        for token in tokens:
            assert token.encode() not in data, f"a token in {path}"
    assert b"/os-console-auth-tokens/***" in server.log_path.read_bytes()
