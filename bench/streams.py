"""Client streams: how the bench's clients move bytes to and from a relay.

- ``TLSStream``: a socket and an ``ssl`` memory BIO, which lets it count the
  TLS records the relay sent (one record per relay write, as seen on the wire).
- ``PipeStream``: conserver's own ``console`` client, a C program, on pipes.
- ``PtyStream``: no relay, the pty's slave side itself (a baseline).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess

TIMEOUT = 120.0
READ = 256 * 1024


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class TLSStream:
    """TLS over a socket through memory BIOs, counting the records received."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext) -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.records = 0
        self._hdr = b""
        self._left = 0
        self.eof = False
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()
        self.tls_version = self.obj.version()

    def _flush(self) -> None:
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(READ)
        if not data:
            self.inc.write_eof()
            return
        self._count(data)
        self.inc.write(data)

    def _count(self, data: bytes) -> None:
        """Walk the TLS record headers (5 bytes: type, version, length)."""
        i, n = 0, len(data)
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                self._left -= take
                i += take
                continue
            need = 5 - len(self._hdr)
            self._hdr += data[i : i + need]
            i += need
            if len(self._hdr) == 5:
                self._left = int.from_bytes(self._hdr[3:5], "big")
                self._hdr = b""
                self.records += 1

    def recv(self) -> bytes:
        while True:
            try:
                return self.obj.read(READ)
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.eof = True
                return b""

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def close(self) -> None:
        self.sock.close()


class PipeStream:
    """conserver's ``console`` client as a child: its stdout, its stdin."""

    records = None
    tls_version = "TLS (conserver's console client)"

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.rfd = self.proc.stdout.fileno()
        self.wfd = self.proc.stdin.fileno()
        self.eof = False

    def recv(self) -> bytes:
        data = os.read(self.rfd, READ)
        if not data:
            self.eof = True
        return data

    def send(self, data: bytes) -> None:
        os.write(self.wfd, data)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


class PtyStream:
    """No relay at all: the pty's slave side, read directly (a baseline)."""

    records = None
    tls_version = "none (the pty itself)"

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        self.eof = False

    def recv(self) -> bytes:
        return os.read(self.fd, READ)

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        os.close(self.fd)
