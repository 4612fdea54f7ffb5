"""Helpers for the HTTP/2 tests: a viewer certificate, raw frames, RSS watching."""

from __future__ import annotations

import errno
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import h2.events
import h2.settings
from hyperframe.frame import Frame

from tests.hardening import H2Client, read_until_closed
from tests.serverproc import ServerProcess, wait_for, wait_for_progress
from tests.streamhelp import at_prompt, rss_bytes, stats, type_into
from vdsmconsole import pki as pkimod
from vdsmconsole.pki import PkiPaths

PING = xmlrpc.client.dumps((), "ping").encode()
HUGE_WINDOW = 2**31 - 1


def headers(method: str, path: str) -> list[tuple[str, str]]:
    return [
        (":method", method),
        (":path", path),
        (":scheme", "https"),
        (":authority", "localhost"),
    ]


def issue_client_cert(pki: PkiPaths, directory: Path, cn: str) -> tuple[Path, Path]:
    """A client certificate named ``cn`` from the test CA: (cert, key) paths."""
    ca = pkimod.Issued(
        pkimod.x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()),
        pkimod.serialization.load_pem_private_key(pki.ca_key.read_bytes(), None),
    )
    issued = pkimod.issue(ca, cn, client=True)
    cert, key = directory / f"{cn}.pem", directory / f"{cn}.key"
    pkimod.write_public(cert, issued.cert_pem())
    pkimod.write_private(key, issued.key_pem())
    return cert, key


def ping_on(client: H2Client) -> int | None:
    """A ping on a new stream of ``client``'s connection: the HTTP status."""
    status, body, _ = client.request(headers("POST", "/RPC2"), PING)
    if status == 200:
        (result,), _ = xmlrpc.client.loads(body)
        assert result["status"]["code"] == 0, result
    return status


def frames_until_closed(client: H2Client) -> list[Frame]:
    """Every frame the server sends until it closes the connection.

    The socket's timeout bounds the wait: a connection left open fails.
    """
    data = read_until_closed(client.sock, limit=1 << 24)
    frames = []
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


def stalled_client(
    server: ServerProcess,
    path: str,
    streams: int = 1,
    timeout: float = 30,
    rcvbuf: int | None = None,
) -> H2Client:
    """An HTTP/2 connection that advertises a 2 GiB window, opens ``streams``
    GETs of ``path`` and then reads nothing."""
    client = H2Client(server, timeout=timeout, rcvbuf=rcvbuf)
    conn = client.conn
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: HUGE_WINDOW})
    conn.increment_flow_control_window(HUGE_WINDOW - 65535)
    for _ in range(streams):
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, headers("GET", path), end_stream=True)
    client.sock.sendall(conn.data_to_send())
    return client


def read_streams(
    client: H2Client, until: Any, timeout: float = 60
) -> dict[int, bytearray]:
    """Read ``client``'s connection until ``until(bodies, ended)`` holds.

    ``bodies`` maps stream ids to the bytes received so far, ``ended`` is the
    set of streams that ended; the body bytes are acknowledged as they come.
    """
    bodies: dict[int, bytearray] = {}
    ended: set[int] = set()
    deadline = time.monotonic() + timeout
    while not until(bodies, ended):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s reading the streams")
        data = client.sock.recv(1 << 20)  # the socket's timeout bounds each read
        if not data:
            raise AssertionError("the server closed the connection")
        for event in client.conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
                client.conn.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                ended.add(event.stream_id)
        client.sock.sendall(client.conn.data_to_send())
    return bodies


class RssWatch:
    """The server's RSS over a load: its base, and whether it settled."""

    def __init__(self, server: ServerProcess) -> None:
        assert server.process is not None
        self.pid = server.process.pid
        self.base = rss_bytes(self.pid)
        self.samples: list[int] = []

    def growth(self) -> int:
        return rss_bytes(self.pid) - self.base

    def settle(self, limit: int, timeout: float = 60) -> int:
        """Sample until RSS holds still (20 samples within 1 MiB) or grows
        past ``limit`` over the base; returns the highest growth seen."""

        def done() -> bool:
            self.samples.append(self.growth())
            last = self.samples[-20:]
            return max(self.samples) > limit or (
                len(last) == 20 and max(last) - min(last) < 1 << 20
            )

        wait_for(done, timeout, "the server's memory to settle")
        return max(self.samples)


def flood(server: ServerProcess, vm_id: str, nbytes: int) -> int:
    start = stats(server, vm_id)["nextOffset"]
    type_into(server, vm_id, f"flood {nbytes}\r")
    # A pty moves a few MB/s on a loaded machine: wait while the console grows.
    wait_for_progress(
        lambda: (
            stats(server, vm_id)["nextOffset"] >= start + nbytes
            and at_prompt(server, vm_id)
        ),
        lambda: stats(server, vm_id)["nextOffset"],
        60,
        "the flood to finish",
    )
    return int(stats(server, vm_id)["nextOffset"])


def process_gone(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError as e:
        return e.errno in (errno.ENOENT, errno.ESRCH)
    return False


def guest_pid(server: ServerProcess, vm_id: str) -> int:
    (entry,) = server.rpc().list(True, [vm_id])["vmList"]
    return int(entry["source"]["pid"])
