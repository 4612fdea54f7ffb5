"""Helpers for the tunnel tests: a CONNECT over TLS, stand-in endpoints."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.hardening import tls_connect
from tests.serverproc import ServerProcess


class TunnelSocket:
    """A CONNECT sent on a fresh TLS connection; ``status`` and ``head`` are
    the answer's, ``leftover`` what came after its headers."""

    def __init__(
        self,
        server: ServerProcess,
        vm_id: str,
        protocol: str,
        token: str | None = None,
        cert: tuple[Path, Path] | None = None,
        rcvbuf: int | None = None,
        early: bytes = b"",
        timeout: float = 20,
    ) -> None:
        self.sock = tls_connect(server, timeout=timeout, cert=cert, rcvbuf=rcvbuf)
        query = f"protocol={protocol}" + (f"&token={token}" if token else "")
        self.sock.sendall(
            f"CONNECT /consoleTunnel/{vm_id}?{query} HTTP/1.1\r\n"
            "Host: localhost\r\n\r\n".encode()
            + early
        )
        data = b""
        while b"\r\n\r\n" not in data:
            more = self.sock.recv(65536)
            if not more:
                break
            data += more
        self.head, _, self.leftover = data.partition(b"\r\n\r\n")
        self.status = int(self.head[9:12]) if self.head.startswith(b"HTTP/1.1 ") else 0

    def read_exactly(self, n: int) -> bytes:
        """``n`` bytes of the tunnel (what came with the headers first)."""
        out = bytearray(self.leftover)
        self.leftover = b""
        while len(out) < n:
            more = self.sock.recv(min(1 << 20, n - len(out)))
            if not more:
                raise AssertionError(f"tunnel closed after {len(out)} of {n} bytes")
            out += more
        return bytes(out)

    def exchange(self, payload: bytes, expect: int, stall: float = 30) -> bytes:
        """Send ``payload`` while reading ``expect`` bytes, on this thread
        (an SSL socket must not be read and written from two threads)."""
        out = bytearray(self.leftover)
        self.leftover = b""
        view = memoryview(payload)
        sock = self.sock
        sock.setblocking(False)
        try:
            while len(out) < expect or view:
                want_write = [sock] if view else []
                readable, writable, _ = select.select([sock], want_write, [], stall)
                if not readable and not writable:
                    raise AssertionError(f"stalled at {len(out)} of {expect} bytes")
                if writable:
                    with contextlib.suppress(
                        ssl.SSLWantWriteError, ssl.SSLWantReadError
                    ):
                        view = view[sock.send(view[: 1 << 16]) :]
                while True:  # what TLS has decrypted already, too
                    try:
                        more = sock.recv(1 << 20)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        break
                    if not more:
                        raise AssertionError(f"closed after {len(out)} bytes")
                    out += more
        finally:
            sock.setblocking(True)
        return bytes(out)

    def read_until(self, needle: bytes, limit: int = 1 << 20) -> bytes:
        out = bytearray(self.leftover)
        self.leftover = b""
        while needle not in out:
            more = self.sock.recv(65536)
            if not more or len(out) > limit:
                raise AssertionError(f"no {needle!r} in {bytes(out[-300:])!r}")
            out += more
        return bytes(out)

    def body(self) -> bytes:
        """The rest until the server closes (an error answer's body)."""
        out = bytearray(self.leftover)
        with contextlib.suppress(ssl.SSLError, ConnectionResetError):
            while more := self.sock.recv(65536):
                out += more
        return bytes(out)

    def closed_by_server(self) -> bool:
        """Whether the server closed the tunnel (EOF or reset), reading on."""
        try:
            while self.sock.recv(65536):
                pass
        except (ssl.SSLError, ConnectionResetError):
            pass
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class StandIn:
    """A TCP endpoint on loopback: each accepted connection is handed to
    ``handler(conn, first)`` on a thread; ``stop()`` closes everything.

    The server's graphics probe connects too (and closes at once), so by
    default a connection counts only once it sends something: ``first`` is
    its first read, and ``tunnel`` the connection (the viewer's early
    bytes, sent with the CONNECT, make it).  ``speaks_first``: the handler
    gets every connection at once (an RFB server talks first).
    """

    def __init__(
        self,
        handler: Callable[[socket.socket, bytes], Any],
        speaks_first: bool = False,
        path: Path | None = None,
    ) -> None:
        if path is None:
            self.listener = socket.socket()
            self.listener.bind(("127.0.0.1", 0))
            self.port = int(self.listener.getsockname()[1])
        else:  # a unix socket, as qemu's -vnc unix:PATH
            self.listener = socket.socket(socket.AF_UNIX)
            self.listener.bind(str(path))
            self.port = 0
        self.path = path
        self.listener.listen()
        self.handler = handler
        self.speaks_first = speaks_first
        self.conns: list[socket.socket] = []
        self.tunnel: socket.socket | None = None
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self.accepted = threading.Event()  # a tunnel's connection came
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        try:
            first = b"" if self.speaks_first else conn.recv(65536)
            if not first and not self.speaks_first:
                return  # a probe: connected and closed
            self.tunnel = conn
            self.accepted.set()
            self.handler(conn, first)
        except OSError:
            pass  # the server cut the connection: what some tests want
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)

    def endpoint(self, kind: str = "rdp") -> dict[str, Any]:
        if self.path is not None:
            return {"type": kind, "path": str(self.path)}
        return {"type": kind, "host": "127.0.0.1", "port": self.port}

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()
        for thread in self.threads:
            thread.join(10)


def register(server: ServerProcess, vm_id: str, graphics: list, **params: Any) -> None:
    """Create a VM with these graphics endpoints (and maybe a console)."""
    reply = server.rpc().create({"vmId": vm_id, "graphics": graphics, **params})
    assert reply["status"]["code"] == 0, reply


def tunnel_records(server: ServerProcess, event: str) -> list[dict[str, Any]]:
    return [entry for entry in server.audit() if entry["event"] == event]
