"""The client side, the same for every peer: a stream, a framer, a sink.

- A *stream* moves bytes: ``TLSStream`` (a socket and an ``ssl`` memory BIO,
  which lets it count the TLS records the relay sent: one record per relay
  write, as seen on the wire) or ``PipeStream`` (conserver's own ``console``
  client, a C program, on pipes).
- A *framer* takes the relay's protocol off and puts it on: raw TLS (socat),
  HTTP/1.1 chunked (vdsmconsole), websocket frames (websockify).
- A *sink* looks for the markers, checks and times the payload.

``python -m bench.clients SPEC`` runs clients in threads and reports JSON lines
on stdout: ``connected``, ``synced`` (every client saw the sync marker) and
``done`` with one result per client.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from bench.payload import RECORD, start_marker, sync_marker

TIMEOUT = 120.0
READ = 256 * 1024


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


# -- streams --------------------------------------------------------------------


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


# -- framers ------------------------------------------------------------------


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

    def __init__(self, path: str = "/") -> None:
        super().__init__()
        self.path = path
        self.buf = b""
        self.left = 0
        self.opcode = 0
        self.closed = False

    def opening(self) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: localhost\r\n"
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


# -- the sink -------------------------------------------------------------------


class Sink:
    """Finds the markers; checks, times and counts what follows the start."""

    def __init__(self, mode: str, sync: str, start: str, size: int, records: int):
        self.mode = mode
        self.sync = sync_marker(sync)
        self.start = start_marker(start)
        self.size = size
        self.records = records
        self.pre = b""
        self.synced = False
        self.started = False
        self.done = False
        self.digest = hashlib.sha256()
        self.got = 0
        self.extra = 0
        self.t_first = 0
        self.t_last = 0
        self.partial = b""
        self.arrivals: list[tuple[int, int]] = []
        self.echo = b""

    def feed(self, pieces: list[bytes], t: int) -> None:
        for piece in pieces:
            if not self.started:
                self.pre = self.pre[-128:] + piece
                if not self.synced and self.sync in self.pre:
                    self.synced = True
                at = self.pre.find(self.start)
                if at < 0:
                    continue
                self.started = True
                self.t_start = t
                piece = self.pre[at + len(self.start) :]
                self.pre = b""
                if not piece:
                    continue
            self.payload(piece, t)

    def payload(self, data: bytes, t: int) -> None:
        if self.mode == "bulk":
            want = self.size - self.got
            if want <= 0:
                self.extra += len(data)
                return
            if not self.got:
                self.t_first = t
            if len(data) > want:
                self.extra += len(data) - want
                data = data[:want]
            self.digest.update(data)
            self.got += len(data)
            if self.got >= self.size:
                self.t_last = t
                self.done = True
        elif self.mode == "trickle":
            data = self.partial + data
            whole = len(data) - len(data) % RECORD
            for i in range(0, whole, RECORD):
                self.arrivals.append((int(data[i : i + RECORD - 1]), t))
            self.partial = data[whole:]
            self.got += whole
            if len(self.arrivals) >= self.records:
                self.done = True
        else:
            self.echo += data
            self.got += len(data)


# -- one client -------------------------------------------------------------------


def open_stream(peer: dict[str, Any], mode: str) -> tuple[Any, Any]:
    kind = peer["kind"]
    if kind == "conserver":
        argv = list(peer["argv"])
        if mode != "latency":
            argv.insert(-1, "-s")  # spy: read-only, as many as you like
        return PipeStream(argv), RawFramer()
    if kind == "pty":
        return PtyStream(peer["path"]), RawFramer()
    ctx = client_context(peer["ca"], peer["cert"], peer["key"])
    stream = TLSStream(peer["host"], peer["port"], ctx)
    if kind == "raw":
        framer: Any = RawFramer()
    elif kind == "http":
        framer = HttpFramer(peer["path"], duplex=mode == "latency")
    elif kind == "ws":
        framer = WsFramer(peer.get("path", "/"))
    else:
        raise ValueError(f"unknown peer kind {kind!r}")
    opening = framer.opening()
    if opening:
        stream.send(opening)
    return stream, framer


class Client(threading.Thread):
    def __init__(self, index: int, spec: dict[str, Any], ready: threading.Event):
        super().__init__(daemon=True)
        self.index = index
        self.spec = spec
        self.ready = ready
        self.sink = Sink(
            spec["mode"],
            spec["sync"],
            spec["start"],
            spec.get("size", 0),
            spec.get("records", 0),
        )
        self.connected = threading.Event()
        self.error = ""
        self.rtts: list[int] = []
        self.mismatches = 0
        self.records_at_start = 0
        self.records_at_end = 0
        self.tls_version = ""

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # noqa: BLE001 - reported, not raised
            self.error = f"{type(e).__name__}: {e}"
            self.connected.set()

    def _run(self) -> None:
        spec = self.spec
        self.stream, self.framer = open_stream(spec["peer"], spec["mode"])
        self.tls_version = self.stream.tls_version
        self.connected.set()
        sink = self.sink
        stream = self.stream
        while not sink.started:
            self._read_once()
        self.records_at_start = stream.records or 0
        if spec["mode"] == "latency":
            self._round_trips(spec["roundtrips"])
        else:
            while not sink.done:
                self._read_once()
        self.records_at_end = stream.records or 0
        stream.close()

    def _read_once(self) -> None:
        data = self.stream.recv()
        t = time.monotonic_ns()
        if not data:
            raise RuntimeError(
                f"the relay closed the stream after {self.sink.got} payload bytes"
            )
        self.sink.feed(self.framer.feed(data), t)
        if getattr(self.framer, "ended", False) and not self.sink.done:
            # vdsmconsole ends the response of a follower that fell behind
            # everything it retains (the guest is never held back for one).
            raise RuntimeError(
                f"the relay ended the response after {self.sink.got} payload bytes"
            )

    def _round_trips(self, count: int) -> None:
        sink, stream, framer = self.sink, self.stream, self.framer
        sink.echo = b""
        letters = b"abcdefghijklmnopqrstuvwxyz"
        for i in range(count):
            byte = letters[i % 26 : i % 26 + 1]
            t0 = time.perf_counter_ns()
            stream.send(framer.encode(byte))
            while not sink.echo:
                self._read_once()
            self.rtts.append(time.perf_counter_ns() - t0)
            if sink.echo != byte:
                self.mismatches += 1
            sink.echo = b""

    def result(self) -> dict[str, Any]:
        s = self.sink
        out: dict[str, Any] = {
            "index": self.index,
            "error": self.error,
            "tls": self.tls_version,
        }
        if s.mode == "bulk":
            out.update(
                bytes=s.got,
                extra=s.extra,
                sha256=s.digest.hexdigest(),
                t_first=s.t_first,
                t_last=s.t_last,
                t_start=getattr(s, "t_start", 0),
            )
        elif s.mode == "trickle":
            out.update(arrivals=s.arrivals, t_start=getattr(s, "t_start", 0))
        elif s.mode == "latency":
            out.update(rtts=self.rtts, mismatches=self.mismatches)
        if self.records_at_end:
            out["tls_records"] = self.records_at_end - self.records_at_start
        return out


# -- idle followers (scale) -----------------------------------------------------


def idle_followers(spec: dict[str, Any]) -> None:
    """Open one follower per path and hold them until told to quit."""
    peer = spec["peer"]
    ctx = client_context(peer["ca"], peer["cert"], peer["key"])
    streams = []
    errors = 0
    for path in spec["paths"]:
        try:
            stream = TLSStream(peer["host"], peer["port"], ctx)
            framer = HttpFramer(path)
            stream.send(framer.opening())
            while not framer.in_body:
                data = stream.recv()
                if not data:
                    raise RuntimeError("closed before the headers")
                framer.feed(data)
            streams.append((stream, framer))
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors += 1
            if errors == 1:
                report({"event": "warning", "message": f"{type(e).__name__}: {e}"})
    drained = [0]

    def drain(stream: TLSStream) -> None:
        try:
            while True:
                data = stream.recv()
                if not data:
                    return
                drained[0] += len(data)
        except OSError:
            return

    for stream, _ in streams[: spec.get("readers", 0)]:
        stream.sock.settimeout(None)
        threading.Thread(target=drain, args=(stream,), daemon=True).start()
    report({"event": "connected", "n": len(streams), "errors": errors})
    sys.stdin.readline()
    report({"event": "done", "drained": drained[0]})
    for stream, _ in streams:
        stream.close()


# -- the process ------------------------------------------------------------------


def report(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["mode"] == "idle":
        from bench.guest import raise_nofile

        raise_nofile(len(spec["paths"]) + 64)
        idle_followers(spec)
        return
    ready = threading.Event()
    first = spec.get("first_index", 0)
    clients = [Client(first + i, spec, ready) for i in range(spec["clients"])]
    for c in clients:
        c.start()
    for c in clients:
        c.connected.wait(TIMEOUT)
    report({"event": "connected", "errors": [c.error for c in clients if c.error]})
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if all(c.sink.synced or c.error or not c.is_alive() for c in clients):
            break
        time.sleep(0.01)
    report({"event": "synced"})
    for c in clients:
        c.join(spec.get("timeout", 600))
        if c.is_alive():
            c.error = c.error or "timed out"
    report({"event": "done", "results": [c.result() for c in clients]})


if __name__ == "__main__":
    main()
