"""The real server on loopback TLS, with real clients: the port's contract."""

from __future__ import annotations

import http.client
import signal
import socket
import ssl
import time
import xmlrpc.client

import pytest

from tests.serverproc import (
    PING_BODY,
    client_context,
    curl_rpc,
    refuses_connections,
    wait_for,
)
from tests.tools import require_tool

pytestmark = pytest.mark.e2e


def https(server, pki, **kw) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=client_context(pki), timeout=10, **kw
    )


def test_ping_and_empty_list(server):
    """xmlrpc.client with a client certificate: ping is Done, list is empty."""
    proxy = server.rpc()
    assert proxy.ping() == {"status": {"code": 0, "message": "Done"}}
    listing = proxy.list()
    assert listing["status"]["code"] == 0
    assert listing["vmList"] == []


def test_unknown_method_is_fault_8001(server):
    """An unknown method is XML-RPC Fault 8001, as Twisted and VDSM answer it."""
    with pytest.raises(xmlrpc.client.Fault) as info:
        server.rpc().noSuchMethod()
    assert info.value.faultCode == 8001


def test_garbage_body_then_next_call_works(server, pki):
    """A garbage body gets a Fault; the same connection then serves a real call."""
    conn = https(server, pki)
    conn.request(
        "POST", "/RPC2", body=b"\x00not xml<<", headers={"Content-Type": "text/xml"}
    )
    response = conn.getresponse()
    body = response.read()
    assert response.status in (200, 400)
    if response.status == 200:
        assert b"<fault>" in body
    conn.request("POST", "/RPC2", body=PING_BODY, headers={"Content-Type": "text/xml"})
    response = conn.getresponse()
    assert response.status == 200
    assert xmlrpc.client.loads(response.read())[0][0]["status"]["code"] == 0


def test_old_clients_post_to_root(server, pki):
    """POST / is the same XML-RPC endpoint, for old clients."""
    conn = https(server, pki)
    conn.request("POST", "/", body=PING_BODY)
    response = conn.getresponse()
    assert response.status == 200
    assert b"<name>code</name>" in response.read()


def test_unknown_path_404_wrong_method_405(server, pki):
    """Unknown paths are 404; GET /RPC2 is 405 with Allow naming POST."""
    conn = https(server, pki)
    conn.request("GET", "/nowhere")
    response = conn.getresponse()
    response.read()
    assert response.status == 404
    conn.request("GET", "/RPC2")
    response = conn.getresponse()
    response.read()
    assert response.status == 405
    assert "POST" in response.getheader("Allow")


def test_rpc_body_over_limit_is_413(server_factory, pki):
    """An RPC body above rpc_max_body is refused with 413, and nothing breaks."""
    server = server_factory("[server]\nrpc_max_body = 2048\n")
    conn = https(server, pki)
    conn.request("POST", "/RPC2", body=b"x" * 5000)
    response = conn.getresponse()
    response.read()
    assert response.status == 413
    assert server.rpc().ping()["status"]["code"] == 0


def _handshake_log_lines(server, client_port: int) -> list[str]:
    needle = f"127.0.0.1:{client_port} failed"
    return [line for line in server.log().splitlines() if needle in line]


def _attempt(server, context: ssl.SSLContext) -> int:
    """Connect, try a request; return the client's port. Must not get a response."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    port = sock.getsockname()[1]
    try:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            # With TLS 1.3 the server judges the client certificate after the
            # client thinks the handshake is done: the refusal shows on read.
            tls.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            data = tls.recv(100)
            assert data == b"", f"server answered a refused client: {data!r}"
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        pass
    return port


def _plain_client(pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca_cert))


@pytest.mark.parametrize("case", ["no_cert", "other_ca", "expired", "tls1_1"])
def test_refused_handshakes_log_one_line(server, pki, odd_certs, case):
    """Each bad client is refused at the handshake, with exactly one log line."""
    context = _plain_client(pki)
    if case in ("other_ca", "expired"):
        cert, key = odd_certs[case]
        context.load_cert_chain(str(cert), str(key))
    if case == "tls1_1":
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    port = _attempt(server, context)
    wait_for(lambda: _handshake_log_lines(server, port), 10, "the log line")
    # The server still serves good clients; by then any second line would show.
    assert server.rpc().ping()["status"]["code"] == 0
    lines = _handshake_log_lines(server, port)
    assert len(lines) == 1, lines
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("version,expected", [("--http2", "2"), ("--http1.1", "1.1")])
def test_curl_reaches_rpc(server, version, expected):
    """curl reaches /RPC2 over HTTP/2 (its default on TLS) and HTTP/1.1."""
    curl = require_tool("curl", "curl")
    body, used = curl_rpc(curl, server, version, PING_BODY)
    assert used == expected
    assert xmlrpc.client.loads(body)[0][0]["status"]["code"] == 0


def test_sigterm_lets_call_in_flight_finish(server, pki):
    """SIGTERM mid-call: the call is answered and the server exits 0 within 5 s."""
    context = client_context(pki)
    sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", server.port), timeout=10),
        server_hostname="localhost",
    )
    head = b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
    head += b"Content-Length: %d\r\n\r\n" % len(PING_BODY)
    sock.sendall(head + PING_BODY[:20])
    # A full call on another connection takes several reactor turns, by the end
    # of which the server has read the half-sent call that was already waiting.
    assert server.rpc().ping()["status"]["code"] == 0
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    # Give the server a moment to have begun stopping (it stops listening first).
    wait_for(lambda: refuses_connections(server.port), 5, "the port to close")
    sock.sendall(PING_BODY[20:])
    reply = _read_http_response(sock)
    assert b" 200 " in reply.split(b"\r\n", 1)[0]
    assert b"<name>code</name>" in reply
    assert server.wait(5) == 0
    assert time.monotonic() - started < 5


def _read_http_response(sock) -> bytes:
    data = b""
    while b"</methodResponse>" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_access_log_names_the_peer(server):
    """The access log line of a request carries the client certificate's CN."""
    server.rpc().ping()
    line = wait_for(
        lambda: [x for x in server.log().splitlines() if '"POST /RPC2' in x], 5
    )[0]
    assert " engine " in line


def test_capabilities(server):
    """getVdsCapabilities reports version, port, TLS facts and source types."""
    info = server.rpc().getVdsCapabilities()["info"]
    assert info["port"] == server.port
    assert info["tls"]["minimumVersion"] == "TLSv1.2"
    assert set(info["sourceTypes"]) == {"pty", "unix", "tcp", "spawn"}


def test_introspection(server):
    """system.listMethods lists the VDSM verbs; methodHelp documents them."""
    proxy = server.rpc()
    methods = proxy.system.listMethods()
    for name in ("ping", "list", "create", "destroy", "consoleRead", "consoleWrite"):
        assert name in methods
    assert proxy.system.methodHelp("ping")
