"""Framers: each relay's protocol taken off what a client reads and put on
what it sends: raw TLS (socat, conserver), HTTP/1.1 chunked (vdsmconsole),
RFC 6455 websocket frames (websockify, vdsmconsole's ``/websockify``), a
CONNECT tunnel (vdsmconsole's ``/consoleTunnel``).
"""

from __future__ import annotations

import base64
import os
import struct


class RawFramer:
    """socat and conserver: the bytes are the console's."""

    def opening(self) -> bytes:
        return b""

    def feed(self, data: bytes) -> list[bytes]:
        return [data] if data else []

    def encode(self, data: bytes) -> bytes:
        return data


class _HeadFramer:
    """Response headers first (status checked), then the body's framing."""

    expect = b" 200 "

    def __init__(self) -> None:
        self.head = b""
        self.in_body = False
        self.status = ""

    def feed(self, data: bytes) -> list[bytes]:
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return []
            head, data = self.head[:end], self.head[end + 4 :]
            self.status = head.split(b"\r\n", 1)[0].decode("latin-1")
            if self.expect not in head.split(b"\r\n", 1)[0] + b" ":
                raise RuntimeError(f"unexpected response: {self.status}")
            self.in_body = True
            if not data:
                return []
        return self.body(data)

    def body(self, data: bytes) -> list[bytes]:
        raise NotImplementedError


class HttpFramer(_HeadFramer):
    """vdsmconsole: a GET follower or a duplex POST, HTTP/1.1 chunked."""

    def __init__(self, path: str, duplex: bool = False) -> None:
        super().__init__()
        self.path = path
        self.duplex = duplex
        self.buf = b""
        self.left = 0
        self.crlf = 0
        self.ended = False

    def opening(self) -> bytes:
        if self.duplex:
            sep = "&" if "?" in self.path else "?"
            return (
                f"POST {self.path}{sep}duplex=1 HTTP/1.1\r\nHost: localhost\r\n"
                "User-Agent: vdsmconsole-bench\r\nTransfer-Encoding: chunked\r\n"
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: localhost\r\n"
            "User-Agent: vdsmconsole-bench\r\n\r\n"
        ).encode()

    def body(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        buf = self.buf + data if self.buf else data
        self.buf = b""
        pos, n = 0, len(buf)
        while pos < n and not self.ended:
            if self.left:
                take = min(self.left, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self.left -= take
                if not self.left:
                    self.crlf = 2
            elif self.crlf:
                skip = min(self.crlf, n - pos)
                pos += skip
                self.crlf -= skip
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    self.buf = buf[pos:]
                    break
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if size == 0:
                    self.ended = True
                self.left = size
        return out

    def encode(self, data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)


class WsFramer(_HeadFramer):
    """websockify: RFC 6455 binary frames (ours masked, the server's not)."""

    expect = b" 101 "

    def __init__(self, path: str = "/", origin: str = "") -> None:
        super().__init__()
        self.path = path
        self.origin = origin  # a browser's page (vdsmconsole's web listener)
        self.buf = b""
        self.left = 0
        self.opcode = 0
        self.closed = False

    def opening(self) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        origin = f"Origin: {self.origin}\r\n" if self.origin else ""
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: localhost\r\n{origin}"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: binary\r\n\r\n"
        ).encode()

    def body(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        buf = self.buf + data if self.buf else data
        self.buf = b""
        pos, n = 0, len(buf)
        while pos < n:
            if self.left:
                take = min(self.left, n - pos)
                if self.opcode in (0, 1, 2):
                    out.append(buf[pos : pos + take])
                pos += take
                self.left -= take
                continue
            if n - pos < 2:
                self.buf = buf[pos:]
                break
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            hlen = 2 + (2 if length == 126 else 8 if length == 127 else 0)
            hlen += 4 if b1 & 0x80 else 0
            if n - pos < hlen:
                self.buf = buf[pos:]
                break
            if length == 126:
                length = struct.unpack_from(">H", buf, pos + 2)[0]
            elif length == 127:
                length = struct.unpack_from(">Q", buf, pos + 2)[0]
            if b1 & 0x80:
                raise RuntimeError("the server masked a frame")
            self.opcode = b0 & 0x0F
            if self.opcode == 8:
                self.closed = True
            pos += hlen
            self.left = length
        return out

    def encode(self, data: bytes) -> bytes:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        n = len(data)
        if n < 126:
            head = struct.pack(">BB", 0x82, 0x80 | n)
        elif n < 65536:
            head = struct.pack(">BBH", 0x82, 0x80 | 126, n)
        else:
            head = struct.pack(">BBQ", 0x82, 0x80 | 127, n)
        return head + mask + masked


class TunnelFramer(_HeadFramer):
    """vdsmconsole's CONNECT tunnel: a 200, then the endpoint's raw bytes."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def opening(self) -> bytes:
        return f"CONNECT {self.path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()

    def body(self, data: bytes) -> list[bytes]:
        return [data]

    def encode(self, data: bytes) -> bytes:
        return data
