"""The [web] listener for browsers (issue 14): TLS without client certificates,
token-authorised pages and websockets only, the Origin check, the assets."""

from __future__ import annotations

import http.client
import random
import re
import socket
import ssl

import pytest
from websockets.exceptions import InvalidStatus

from tests.serverproc import (
    ServerProcess,
    refuses_connections,
    run_to_exit,
    serve_flags,
    wait_for,
)
from tests.streamhelp import DEMO_CONFIG, PROMPT, console_bytes, create_demo
from tests.webtokens import mint
from tests.wshelp import WsFollower, ws_connect
from vdsmconsole.server.tokens.store import token_id
from vdsmconsole.testing import free_port

pytestmark = pytest.mark.e2e
WEB_LISTENING = re.compile(r"vdsmconsole web listening on [^:\s]+:(\d+)")
TOKEN = "A" * 43  # well formed, granted by nothing


@pytest.fixture
def assets(tmp_path):
    root = tmp_path / "assets"
    (root / "@xterm/xterm/lib").mkdir(parents=True)
    (root / "@xterm/xterm/lib/xterm.js").write_text("/* xterm */\n")
    return root


@pytest.fixture
def web(server_factory, assets) -> tuple[ServerProcess, int]:
    server = server_factory(
        DEMO_CONFIG + f'\n[web]\nenabled = true\nport = 0\nassets = "{assets}"\n'
    )
    create_demo(server, "vm1")
    port = wait_for(lambda: WEB_LISTENING.search(server.log()), 10, "the web port")
    return server, int(port.group(1))


def browser_tls(server: ServerProcess) -> ssl.SSLContext:
    """What a browser has: the CA to trust, no client certificate."""
    return ssl.create_default_context(cafile=str(server.pki.ca_cert))


def get(server: ServerProcess, port: int, path: str, method: str = "GET"):
    conn = http.client.HTTPSConnection(
        "127.0.0.1", port, context=browser_tls(server), timeout=10
    )
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def websocket(server: ServerProcess, port: int, path: str, origin: str | None):
    return ws_connect(
        f"wss://127.0.0.1:{port}{path}",
        ssl=browser_tls(server),
        server_hostname="localhost",
        origin=origin,
        subprotocols=["binary"],
    )


def test_off_unless_enabled(server_factory):
    """Without [web] enabled = true the server opens no web port."""
    server = server_factory(DEMO_CONFIG)
    assert "web listening" not in server.log()


def test_a_web_port_that_cannot_listen_stops_the_start(pki, tmp_path, assets):
    """[web] on a port another program listens on: `serve` exits 2 with one
    line naming [web], never says it listens, and leaves no port open."""
    with socket.create_server(("127.0.0.1", 0)) as taken, free_port() as main:
        web_port = taken.getsockname()[1]
        config = tmp_path / "vdsmconsole.conf"
        config.write_text(
            f'[web]\nenabled = true\nport = {web_port}\nassets = "{assets}"\n'
        )
        result = run_to_exit(
            "serve", *serve_flags(pki.root, tmp_path / "state", config, port=main)
        )
        assert result.returncode == 2, result.stderr
        last = result.stderr.splitlines()[-1]
        assert last.startswith(f"vdsmconsole: cannot listen on 127.0.0.1:{web_port}")
        assert "for [web]" in last and "in use" in last
        assert "Traceback" not in result.stderr
        assert "vdsmconsole listening" not in result.stderr
        assert refuses_connections(main)  # the TLS port is not left open


def test_no_client_certificate_asked_and_http11_only(web):
    """A browser without a certificate completes TLS; ALPN offers only http/1.1."""
    server, port = web
    context = browser_tls(server)
    context.set_alpn_protocols(["h2", "http/1.1"])
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/RPC2"),
        ("POST", "/"),
        ("GET", "/consoleStream/vm1"),
        ("GET", f"/os-console-auth-tokens/{TOKEN}"),
        ("GET", "/console/other"),
        ("GET", "/"),
    ],
)
def test_the_mtls_ports_paths_are_not_there(web, method, path):
    """/RPC2, /consoleStream, connect info and anything unknown are 404."""
    server, port = web
    status, _, _ = get(server, port, path, method)
    assert status == 404


@pytest.mark.parametrize("query", ["", "?token=short", f"?token={TOKEN}"])
def test_pages_without_a_valid_token_are_refused_and_audited(web, query):
    """No token, a malformed one, or one nothing granted: 403, one audit line
    naming the token by a hash prefix, never the token."""
    server, port = web
    status, _, body = get(server, port, "/console/serial" + query)
    assert status == 403, body
    refused = [a for a in server.audit() if a["event"] == "tokenRefused"]
    assert [a["via"] for a in refused] == ["web"]
    assert TOKEN not in (server.state_dir / "audit.log").read_text()
    assert TOKEN not in server.log()


def test_websocket_origin_then_token(web):
    """A websocket from a foreign page is 403 (origin) before its token is
    looked at; from the listener's own page, a token nothing granted is 403."""
    server, port = web
    for origin in ("https://evil.example", None):
        with pytest.raises(InvalidStatus) as refused:
            websocket(server, port, f"/websockify?token={TOKEN}", origin)
        assert refused.value.response.status_code == 403
    own = f"https://127.0.0.1:{port}"
    with pytest.raises(InvalidStatus) as refused:
        websocket(server, port, f"/websockify?token={TOKEN}", own)
    assert refused.value.response.status_code == 403
    reasons = [a["reason"] for a in server.audit() if a["event"] == "denied"]
    assert reasons == ["origin", "origin"]
    refused = [a for a in server.audit() if a["event"] == "tokenRefused"]
    assert [a["tokenId"] for a in refused] == [token_id(TOKEN)]


def test_assets_are_served_without_listings(web):
    """Installed assets are files to GET; directories and escapes are not."""
    server, port = web
    status, headers, body = get(server, port, "/assets/@xterm/xterm/lib/xterm.js")
    assert (status, body) == (200, b"/* xterm */\n")
    for path in ("/assets/@xterm/", "/assets/@xterm/xterm/lib/", "/assets/%2e%2e/"):
        status, _, body = get(server, port, path)
        assert status in (403, 404), (path, body)
        assert b"xterm.js" not in body
    status, _, body = get(server, port, "/static/serial.js")
    assert status == 200 and b"websockify" in body


# -- with tokens minted by the server (remoteConsole) ---------------------------


@pytest.fixture
def tokened(web) -> tuple[ServerProcess, int, dict[str, str]]:
    server, port = web
    tokens = {
        "operator": mint(server, "vm1", role="operator"),
        "viewer": mint(server, "vm1", role="viewer"),
        "once": mint(server, "vm1", role="operator", single_use=True),
    }
    return server, port, tokens


def own_socket(server: ServerProcess, port: int, token: str, query: str = ""):
    path = f"/websockify?token={token}{query}"
    return websocket(server, port, path, f"https://127.0.0.1:{port}")


def test_operator_token_follows_and_types(tokened):
    """An operator token's websocket follows its console and types into it."""
    server, port, tokens = tokened
    with own_socket(server, port, tokens["operator"]) as ws:
        follower = WsFollower(ws)
        text = f"web-{random.randrange(10**9)}"
        ws.send(f"echo {text}\r".encode())
        follower.expect(text.encode() + b"\r\n" + PROMPT)
    with own_socket(server, port, tokens["operator"], "&offset=0") as ws:
        again = WsFollower(ws)
        assert again.offset == 0
        again.expect(text.encode() + b"\r\n" + PROMPT)


def test_viewer_token_cannot_type(tokened):
    """A viewer token's input never reaches the guest."""
    server, port, tokens = tokened
    with own_socket(server, port, tokens["viewer"]) as ws:
        follower = WsFollower(ws)
        text = f"web-{random.randrange(10**9)}"
        ws.send(f"echo {text}\r".encode())
        ws.ping().wait(10)
        assert text.encode() not in follower.poll(0.5)
    assert text.encode() not in console_bytes(server, "vm1")


def test_single_use_token_opens_one_websocket(tokened):
    """A single-use token opens one websocket; a page load does not spend it."""
    server, port, tokens = tokened
    once = tokens["once"]
    status, headers, _ = get(server, port, f"/console/serial?token={once}")
    assert status == 200
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    with own_socket(server, port, once) as ws:
        WsFollower(ws)
    with pytest.raises(InvalidStatus) as refused:
        own_socket(server, port, once)
    assert refused.value.response.status_code == 403


def test_remote_console_token_opens_the_web_socket_once(web):
    """A single-use viewer token from remoteConsole (issue 13's store, no
    stand-in) opens one websocket on the web listener, view-only."""
    server, port = web
    reply = server.rpc().remoteConsole(
        "vm1", "serial", {"singleUse": True, "role": "viewer"}
    )
    assert reply["status"]["code"] == 0, reply
    token = reply["console"]["token"]
    status, _, _ = get(server, port, f"/console/serial?token={token}")
    assert status == 200  # a page load does not spend it
    with own_socket(server, port, token) as ws:
        follower = WsFollower(ws)
        text = f"web-{random.randrange(10**9)}"
        ws.send(f"echo {text}\r".encode())
        ws.ping().wait(10)
        assert text.encode() not in follower.poll(0.5)
    with pytest.raises(InvalidStatus) as refused:
        own_socket(server, port, token)
    assert refused.value.response.status_code == 403
    assert token not in server.log()
