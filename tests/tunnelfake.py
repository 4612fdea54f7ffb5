"""A stand-in for the server's ``CONNECT /consoleTunnel/`` (and the
``getVmStats`` the client's ``tunnel`` command asks first), for testing the
client's side alone: plain ``ssl`` sockets in threads, with the suite's PKI
and a client certificate required, on loopback.

What a tunnel does depends on its vmId:

- ``echo``: 200, then every byte back;
- ``hello``: 200 and ``hello`` in the same write as the answer, then echo;
- ``flood``: 200, then ``FLOOD`` bytes as fast as the client takes them
  (``sent`` counts them), then closes;
- ``sink``: 200, then reads nothing until ``release`` is set, then counts
  and hashes what comes (``received``, ``digest``) until the client closes
  (``ended`` counts those);
- ``missing``: 404 with the server's line and a Content-Length;
- ``down``: 502 with no Content-Length: the text ends with the connection.

A vmId starting with ``missing`` is unknown to ``getVmStats`` as well.

This is a helper module the tests import, not a test file.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
import xmlrpc.client
from typing import Any
from urllib.parse import parse_qs, urlsplit

from vdsmconsole.pki import PkiPaths
from vdsmconsole.status import no_vm_message

FLOOD = 48 * 1024 * 1024
CHUNK = 64 * 1024


class FakeTunnelServer:
    def __init__(self, pki: PkiPaths) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        context.load_verify_locations(str(pki.ca_cert))
        context.verify_mode = ssl.CERT_REQUIRED
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.requests: list[str] = []  # request lines, in order
        self.sent = 0
        self.received = 0
        self.ended = 0
        self.digest = hashlib.sha256()
        self.release = threading.Event()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def tunnels(self) -> list[str]:
        return [line for line in self.requests if line.startswith("CONNECT ")]

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(raw)
            thread = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        with self._lock:
            self._conns.append(conn)
        with contextlib.suppress(OSError, ssl.SSLError), conn:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(CHUNK)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                line = head.split(b"\r\n")[0].decode("ascii")
                self.requests.append(line)
                if line.startswith("CONNECT "):
                    self._tunnel(conn, line.split(" ")[1], buffer)
                    return
                buffer = self._rpc(conn, head, buffer)

    def _rpc(self, conn: ssl.SSLSocket, head: bytes, buffer: bytes) -> bytes:
        length = 0
        for header in head.split(b"\r\n")[1:]:
            name, _, value = header.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(buffer) < length:
            buffer += conn.recv(CHUNK)
        body, buffer = buffer[:length], buffer[length:]
        (vm_id, *_), method = xmlrpc.client.loads(body)
        if method == "getVmStats" and not vm_id.startswith("missing"):
            result: dict[str, Any] = {
                "status": {"code": 0, "message": "Done"},
                "statsList": [{"vmId": vm_id}],
            }
        else:
            result = {"status": {"code": 1, "message": no_vm_message(vm_id)}}
        answer = xmlrpc.client.dumps((result,), methodresponse=True).encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
        )
        return buffer

    def _tunnel(self, conn: ssl.SSLSocket, target: str, rest: bytes) -> None:
        vm_id = urlsplit(target).path.rsplit("/", 1)[-1]
        assert parse_qs(urlsplit(target).query)["protocol"]
        if vm_id.startswith("missing"):
            text = f"no such VM {vm_id}\nsecond line\n".encode()
            conn.sendall(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(text), text)
            )
            return
        if vm_id == "down":
            conn.sendall(
                b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n"
                b"vnc endpoint of down at /nowhere refused the connection\n"
            )
            return
        ok = b"HTTP/1.1 200 Connection established\r\n\r\n"
        if vm_id == "flood":
            conn.sendall(ok)
            block = bytes(range(256)) * (CHUNK // 256)
            while self.sent < FLOOD and not self.stopping.is_set():
                conn.sendall(block)
                self.sent += len(block)
            return
        if vm_id == "sink":
            conn.sendall(ok)
            self.release.wait()
            self._count(rest)
            while data := conn.recv(CHUNK):
                self._count(data)
            self.ended += 1  # the client closed its side
            return
        conn.sendall(ok + (b"hello" if vm_id == "hello" else b""))
        if rest:
            conn.sendall(rest)
        while data := conn.recv(CHUNK):
            conn.sendall(data)

    def _count(self, data: bytes) -> None:
        self.received += len(data)
        self.digest.update(data)

    def stop(self) -> None:
        self.stopping.set()
        self.release.set()
        self.listener.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        for thread in self._threads:
            thread.join(10)
