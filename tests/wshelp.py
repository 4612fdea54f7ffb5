"""Websocket clients for the tests: the ``websockets`` library over real TLS."""

from __future__ import annotations

import json
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.serverproc import ServerProcess, client_context, wait_for


def ws_url(server: ServerProcess, path: str) -> str:
    return f"wss://127.0.0.1:{server.port}{path}"


def ws_console(
    server: ServerProcess, vm_id: str, query: str = "", **kwargs: Any
) -> ClientConnection:
    """A certificate holder's websocket on /consoleStream/<vmId> (mTLS port)."""
    kwargs.setdefault("subprotocols", ["binary"])
    return connect(
        ws_url(server, f"/consoleStream/{vm_id}{query}"),
        ssl=kwargs.pop("ssl", None) or client_context(server.pki),
        server_hostname="localhost",
        max_size=None,
        compression=None,
        open_timeout=10,
        close_timeout=5,
        **kwargs,
    )


class WsFollower:
    """Reads a console websocket: its start offset, then the bytes after it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        hello = json.loads(ws.recv(timeout=10))
        self.offset: int = hello["offset"]
        self.lost: int = hello["lost"]
        self.data = bytearray()

    @property
    def end(self) -> int:
        """The offset just past the last byte received."""
        return self.offset + len(self.data)

    def poll(self, timeout: float = 0.05) -> bytes:
        try:
            message = self.ws.recv(timeout=timeout)
        except TimeoutError:
            return bytes(self.data)
        assert isinstance(message, bytes), message
        self.data += message
        return bytes(self.data)

    def expect(self, needle: bytes, timeout: float = 15) -> bytes:
        return wait_for(lambda: needle in self.poll(), timeout, repr(needle))
