"""What the tests of stream endings and shutdown share: a call held open while
the server stops, and the head of a raw answer."""

from __future__ import annotations

import ssl

from tests.hardening import read_until_closed
from tests.serverproc import PING_BODY, ServerProcess
from tests.streamhelp import tls_socket

# A long window while the server stops: the tests end it themselves.
SLOW_STOP = "[server]\nshutdown_timeout = 30\n"


def held_call(server: ServerProcess) -> ssl.SSLSocket:
    """A ping whose body is half sent: a stopping server waits for it."""
    sock = tls_socket(server)
    head = b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
    sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(PING_BODY) + PING_BODY[:20])
    # Answered on another connection, so this one's headers are in by now.
    assert server.rpc().ping()["status"]["code"] == 0
    return sock


def finish_call(sock: ssl.SSLSocket) -> bytes:
    sock.sendall(PING_BODY[20:])
    return read_until_closed(sock, stop=b"</methodResponse>")


def headers_of(answer: bytes) -> tuple[int, dict[str, str]]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(head[0].split()[1]), fields
