"""Websocket clients for the tests: the ``websockets`` library over real TLS.

The library's asyncio client, run on one event loop thread and driven from
the test through a small blocking facade.  Not its threaded sync client: that
one reads the TLS socket in a background thread while the caller writes to it
from another, and under load (two busy loops on this 2-core machine) about 1
connection in 150 never got its request to the server ("no request within
10 s of its TLS handshake"), where a single-threaded client had 0 in 1200.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as async_connect

from tests.serverproc import ServerProcess, client_context, wait_for

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def _run(coro: Any, timeout: float) -> Any:
    """Run ``coro`` on the clients' loop thread; its result or exception."""
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coro, _loop).result(timeout)


class SyncSocket:
    """A blocking face for an asyncio websocket client connection."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    @property
    def subprotocol(self) -> Any:
        return self.conn.subprotocol

    @property
    def response(self) -> Any:
        return self.conn.response

    @property
    def protocol(self) -> Any:
        return self.conn.protocol

    def send(self, message: bytes | str, text: bool | None = None) -> None:
        _run(self.conn.send(message, text=text), 30)

    def recv(self, timeout: float = 10) -> bytes | str:
        """The next message; TimeoutError if none within ``timeout``
        (cancelling a recv loses nothing), ConnectionClosed once closed."""
        return _run(asyncio.wait_for(self.conn.recv(), timeout), timeout + 10)

    def ping(self) -> Any:
        """Send a ping; ``.wait(seconds)`` on the result waits for its pong."""
        pong = _run(self.conn.ping(), 10)

        class Pong:
            def wait(self, timeout: float) -> None:
                _run(asyncio.wait_for(pong, timeout), timeout + 10)

        return Pong()

    def close(self) -> None:
        _run(self.conn.close(), 30)

    def __enter__(self) -> SyncSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ws_connect(url: str, **kwargs: Any) -> SyncSocket:
    kwargs.setdefault("max_size", None)
    kwargs.setdefault("compression", None)
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 5)

    async def opened() -> ClientConnection:
        return await async_connect(url, **kwargs)

    return SyncSocket(_run(opened(), 30))


def ws_url(server: ServerProcess, path: str) -> str:
    return f"wss://127.0.0.1:{server.port}{path}"


def ws_console(
    server: ServerProcess, vm_id: str, query: str = "", **kwargs: Any
) -> SyncSocket:
    """A certificate holder's websocket on /consoleStream/<vmId> (mTLS port)."""
    kwargs.setdefault("subprotocols", ["binary"])
    return ws_connect(
        ws_url(server, f"/consoleStream/{vm_id}{query}"),
        ssl=kwargs.pop("ssl", None) or client_context(server.pki),
        server_hostname="localhost",
        **kwargs,
    )


class WsFollower:
    """Reads a console websocket: its start offset, then the bytes after it."""

    def __init__(self, ws: SyncSocket) -> None:
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
