"""A fake graphics endpoint: a TCP server of ours that talks as the guest does.

The websocket and tunnel scenarios relay a TCP endpoint (a VNC, SPICE or RDP
server) instead of a pty.  This one listens on loopback and, like a VNC
server, speaks first: each connection gets a greeting (``RFB 003.008``) as
soon as it is accepted.  After that it obeys the fake guest's commands
(``bench/guest.py``: sync markers, a bulk payload, a trickle of records) and
echoes every byte it receives, so the same clients and sinks measure it.

Commands go to the oldest open connection: the relay's.  A server also
probes its graphics endpoints now and then (a connect, closed at once);
such a connection comes and goes without taking a command.

Control: JSON lines on stdin, JSON lines on stdout; the first line out is
``{"ptys": ["127.0.0.1:PORT"], "pid": N, "port": PORT}`` (``ptys`` as the
guest names its devices, so a run starts a peer the same way).  Run as
``python -m bench.endpoint``.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
from collections import deque
from collections.abc import Iterator

from bench.guest import Guest, emit

GREETING = b"RFB 003.008\n"  # what a VNC server sends first


class Conn:
    """One accepted connection, in the shape ``guest.Guest`` drives (a pty)."""

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.master = sock.fileno()
        self.path = f"connection {index}"
        self.out: deque[bytes] = deque()
        self.offset = 0
        self.gen: Iterator[bytes] | None = None
        self.gen_name = ""
        self.started = False
        self.echoed = 0
        self.open = True


class Endpoint(Guest):
    def __init__(self) -> None:  # not Guest's: no ptys
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.ptys: list[Conn] = []  # the open connections
        self.accepted = 0
        self.sel = selectors.DefaultSelector()
        self.sel.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        self.stdin_buf = b""
        self.trickle: dict | None = None
        self.running = True

    def accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(self.accepted, sock)
        self.accepted += 1
        self.ptys.append(conn)
        self.sel.register(sock, selectors.EVENT_READ, conn)
        self.queue(conn, GREETING)

    def drop(self, conn: Conn) -> None:
        if not conn.open:
            return
        conn.open = False
        self.sel.unregister(conn.sock)
        conn.sock.close()
        self.ptys.remove(conn)
        if self.trickle is not None and self.trickle["pty"] is conn:
            self.trickle = None
        emit({"event": "closed", "connection": conn.index})

    def queue(self, pty: object, data: bytes) -> None:
        if getattr(pty, "open", False):  # never a closed socket's fd number
            super().queue(pty, data)

    def watch(self, pty: object) -> None:
        if getattr(pty, "open", False):
            super().watch(pty)

    def flush(self, pty: object) -> None:
        try:
            super().flush(pty)
        except OSError:  # reset or closed by the relay
            self.drop(pty)

    def command(self, msg: dict) -> None:
        if msg["cmd"] == "quit":
            self.running = False
        elif self.ptys:  # before the relay connects, sync markers are dropped
            super().command(dict(msg, pty=0))

    def run(self) -> None:
        emit(
            {"ptys": [f"127.0.0.1:{self.port}"], "pid": os.getpid(), "port": self.port}
        )
        while self.running:
            timeout = self.tick_trickle()
            for key, events in self.sel.select(timeout):
                what = key.data
                if what is None:
                    self.read_control()
                elif what == "listen":
                    self.accept()
                else:
                    self.serve(what, events)

    def serve(self, conn: Conn, events: int) -> None:
        if events & selectors.EVENT_READ:
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                self.drop(conn)
                return
            if data:
                conn.echoed += len(data)
                self.queue(conn, data)
        if conn.open and events & selectors.EVENT_WRITE:
            self.flush(conn)
            self.watch(conn)


def main() -> None:
    Endpoint().run()


if __name__ == "__main__":
    main()
