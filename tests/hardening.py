"""Helpers for the bad-input, fuzzing and fault tests: bystanders, raw clients.

A ``Bystander`` is an ordinary client that follows a console while a test
throws bad input at the server; ``still_serving`` checks that it keeps
receiving and that a fresh connection still gets answers.
"""

from __future__ import annotations

import http.client
import random
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events

from tests.serverproc import ServerProcess, client_context, wait_for
from tests.streamhelp import create_demo, type_into


def marker() -> str:
    return f"marker-{random.randrange(10**9)}"


class Bystander:
    """Follows a console over HTTP/1.1 from a thread; ``data()`` is what came."""

    def __init__(self, server: ServerProcess, vm_id: str, query: str = "") -> None:
        self.conn = http.client.HTTPSConnection(
            "127.0.0.1", server.port, context=client_context(server.pki), timeout=60
        )
        self.conn.request("GET", f"/consoleStream/{vm_id}{query}")
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.status
        self.offset = int(self.response.getheader("X-Console-Offset"))
        self._data = bytearray()
        self._lock = threading.Lock()
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                chunk = self.response.read1(65536)
                if not chunk:
                    break
                with self._lock:
                    self._data += chunk
        except Exception:  # noqa: BLE001 - closed under us, reset, torn chunk
            pass
        finally:
            self.ended.set()

    def data(self) -> bytes:
        with self._lock:
            return bytes(self._data)

    def close(self) -> None:
        with suppress(OSError):
            self.conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        self.conn.close()
        self._thread.join(10)


def still_serving(server: ServerProcess, bystander: Bystander, vm_id: str) -> None:
    """The server lives, answers a fresh call, and the bystander still follows."""
    assert server.process is not None and server.process.poll() is None
    assert server.rpc().ping()["status"]["code"] == 0
    assert not bystander.ended.is_set(), "the bystander's stream ended"
    text = marker()
    type_into(server, vm_id, f"echo {text}\r")
    wait_for(
        lambda: f"\r\n{text}\r\n".encode() in bystander.data(),
        15,
        "the bystander to see a fresh marker",
    )


def tls_connect(
    server: ServerProcess,
    alpn: list[str] | None = None,
    timeout: float = 10,
    cert: tuple[Path, Path] | None = None,
    rcvbuf: int | None = None,
) -> ssl.SSLSocket:
    """A TLS socket to the server, as the engine (or as ``cert``: cert, key);
    ``rcvbuf`` shrinks its receive buffer (so a client that stops reading
    stops the server's sending at once, not after megabytes)."""
    context = client_context(server.pki, *(cert or ()))
    if alpn:
        context.set_alpn_protocols(alpn)
    sock = socket.socket()
    sock.settimeout(timeout)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        sock.connect(("127.0.0.1", server.port))
    except OSError:
        sock.close()
        raise
    return context.wrap_socket(sock, server_hostname="localhost")


def read_until_closed(
    sock: ssl.SSLSocket, limit: int = 1 << 20, stop: bytes | None = None
) -> bytes:
    """Everything the server sends until it closes (or resets) the connection,
    or until what came holds ``stop``."""
    data = b""
    while len(data) < limit and (stop is None or stop not in data):
        try:
            more = sock.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            break
        if not more:
            break
        data += more
    return data


@contextmanager
def demo_server(
    pki: Any, workdir: Path, config: str
) -> Iterator[tuple[ServerProcess, Bystander]]:
    """A server with two demo guests, ``vm1`` (followed by a Bystander) and
    ``sink`` (which takes no input), stopped afterwards whatever happens."""
    server = ServerProcess(pki, workdir, config)
    bystander = None
    try:
        server.start()
        create_demo(server, "vm1")
        create_demo(server, "sink", command="mute")
        bystander = Bystander(server, "vm1")
        yield server, bystander
    finally:
        if bystander is not None:
            bystander.close()
        server.stop()


@contextmanager
def still_serving_after(
    served: tuple[ServerProcess, Bystander], *forbidden: str
) -> Iterator[ServerProcess]:
    """The module's server for one test; afterwards it must still serve the
    bystander and fresh clients, with no Traceback (nor any of ``forbidden``)
    logged meanwhile."""
    server, bystander = served
    log_start = len(server.log())
    yield server
    still_serving(server, bystander, "vm1")
    new_log = server.log()[log_start:]
    for word in ("Traceback", *forbidden):
        assert word not in new_log, new_log


def http_exchange(server: ServerProcess, raw: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes on a fresh TLS connection; what came back until close."""
    sock = tls_connect(server, timeout=timeout)
    try:
        with suppress(OSError):
            sock.sendall(raw)
        return read_until_closed(sock)
    finally:
        sock.close()


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP/1.1 answer (0 if there is none)."""
    if not answer.startswith(b"HTTP/1.1 "):
        return 0
    return int(answer[9:12])


class H2Client:
    """A bare HTTP/2 client over TLS, for what curl will not send."""

    def __init__(
        self,
        server: ServerProcess,
        timeout: float = 10,
        cert: tuple[Path, Path] | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        self.sock = tls_connect(
            server, alpn=["h2"], timeout=timeout, cert=cert, rcvbuf=rcvbuf
        )
        assert self.sock.selected_alpn_protocol() == "h2"
        config = h2.config.H2Configuration(
            client_side=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config)
        self.reset = False  # the server reset the connection (unread data)
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())

    def request(
        self, headers: list[tuple[str, str]], body: bytes | None = None
    ) -> tuple[int | None, bytes, list[h2.events.Event]]:
        """One request on a new stream; returns (status, body, events)."""
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, headers, end_stream=body is None)
        if body is not None:
            self.conn.send_data(stream, body, end_stream=True)
        try:
            self.sock.sendall(self.conn.data_to_send())
        except OSError:
            self.reset = True  # refused while we were still sending
        return self.response(stream)

    def response(self, stream: int) -> tuple[int | None, bytes, list[h2.events.Event]]:
        """Read until ``stream`` ends (or the connection does): its status,
        its body, and every event seen on the way (other streams' too)."""
        status: int | None = None
        data = b""
        events: list[h2.events.Event] = []
        while True:
            try:
                received = self.sock.recv(65536)
            except (ssl.SSLError, ConnectionResetError):
                self.reset = True
                received = b""
            if not received:
                return status, data, events
            for event in self.conn.receive_data(received):
                events.append(event)
                mine = getattr(event, "stream_id", stream) == stream
                if isinstance(event, h2.events.ResponseReceived) and mine:
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    if mine:
                        data += event.data
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif mine and isinstance(
                    event,
                    h2.events.StreamEnded
                    | h2.events.StreamReset
                    | h2.events.ConnectionTerminated,
                ):
                    return status, data, events
            self.sock.sendall(self.conn.data_to_send())

    def close(self) -> None:
        self.sock.close()


def tree(path: Path) -> set[str]:
    """Every path under ``path`` (relative), files and directories."""
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))
