"""A loopback bridge that carries plain TCP connections over the server's mTLS.

Why: ``h2load`` (nghttp2-client 1.52) cannot present a client certificate
(its TLS options are ciphers, ALPN and kTLS only), and OpenSSL's system
configuration refuses certificate commands, so it cannot reach a port that
requires one.  It speaks HTTP/2 with prior knowledge (h2c) to this bridge;
each of its connections becomes one TLS connection to the server, with the
engine's certificate and ALPN ``h2``, and bytes go both ways unchanged, with
backpressure (``drain``) so the bridge holds little.  The server sees h2load's
frames, streams and flow control exactly as h2load sends them.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from contextlib import suppress

from tests.serverproc import ServerProcess, client_context


class TLSBridge:
    """``start()`` returns the loopback port to point h2load at; ``stop()``."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.context = client_context(server.pki)
        self.context.set_alpn_protocols(["h2"])
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._listener: asyncio.AbstractServer | None = None

    def start(self) -> int:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        return future.result(10)

    def stop(self) -> None:
        async def close() -> None:
            if self._listener is not None:
                self._listener.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    async def _listen(self) -> int:
        self._listener = await asyncio.start_server(self._carry, "127.0.0.1", 0)
        return int(self._listener.sockets[0].getsockname()[1])

    async def _carry(
        self, plain_in: asyncio.StreamReader, plain_out: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        try:
            tls_in, tls_out = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1",
                    self.server.port,
                    ssl=self.context,
                    server_hostname="localhost",
                ),
                10,
            )
        except (OSError, ssl.SSLError, TimeoutError):
            plain_out.close()
            return
        await asyncio.gather(
            _pump(plain_in, tls_out), _pump(tls_in, plain_out), return_exceptions=True
        )


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    finally:
        with suppress(OSError, ssl.SSLError, RuntimeError):
            sink.close()
