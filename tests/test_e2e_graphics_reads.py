"""How the server reads a graphics endpoint: in pieces of up to 128 KiB
(``tunnels/relay.ENDPOINT_BUFFER``), so a burst costs half the reads,
websocket messages and TLS writes of Twisted's 64 KiB default."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from tests.connecthelp import StandIn, register
from tests.serverproc import wait_for
from tests.streamhelp import DEMO_CONFIG
from tests.webtokens import mint, web_config, web_port, web_socket

pytestmark = pytest.mark.e2e
MiB = 1 << 20


def test_a_backlog_on_the_endpoint_is_read_in_pieces_over_64k(server_factory, tmp_path):
    """4 MiB waiting at an RDP endpoint reach the browser intact, in
    websocket messages of more than 64 KiB (one per read of the endpoint)."""
    server = server_factory(DEMO_CONFIG + web_config(tmp_path))
    port = web_port(server)
    payload = os.urandom(4 * MiB)
    sent = [0]

    def burst(conn: socket.socket, first: bytes) -> None:
        for i in range(0, len(payload), MiB):
            conn.sendall(payload[i : i + MiB])
            sent[0] += MiB

    standin = StandIn(burst)
    try:
        register(server, "burst", [standin.endpoint("rdp")])
        token = mint(server, "burst", "rdp")
        with web_socket(server, port, f"/websockify?token={token}") as ws:
            ws.send(b"go")  # the stand-in's handler starts on a first read
            # Not read yet: the server holds back, the endpoint's bytes wait.
            wait_for(lambda: sent[0] >= 2 * MiB, 20, "the endpoint to write")
            sizes: list[int] = []
            got = hashlib.sha256()
            while sum(sizes) < len(payload):
                message = ws.recv(timeout=20)
                assert isinstance(message, bytes)
                sizes.append(len(message))
                got.update(message)
        assert got.digest() == hashlib.sha256(payload).digest()
        assert max(sizes) > 64 * 1024, sizes[:20]
        assert max(sizes) <= 128 * 1024, max(sizes)
    finally:
        standin.stop()
