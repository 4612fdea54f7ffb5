"""Stand-in RFB servers for the tests of VNC through tunnels and
websockets: one that asks VNC authentication, one that offers None and
records the client's messages."""

from __future__ import annotations

import socket
import struct

from vdsmconsole.protocols.vncdes import vnc_auth_response

PASSWORD = b"s3cret"
SERVER_INIT = struct.pack(">HH", 640, 480) + bytes(16) + struct.pack(">I", 4) + b"fake"


def recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = conn.recv(n - len(data))
        if not more:
            raise OSError("closed")
        data += more
    return data


def vnc_server(password: bytes):
    def handle(conn: socket.socket, first: bytes) -> None:
        conn.sendall(b"RFB 003.008\n")
        recv_exactly(conn, 12)
        conn.sendall(b"\x01\x02")  # one security type: VNC authentication
        assert recv_exactly(conn, 1) == b"\x02"
        challenge = bytes(range(16))
        conn.sendall(challenge)
        if recv_exactly(conn, 16) != vnc_auth_response(password, challenge):
            reason = b"Authentication failed"
            conn.sendall(struct.pack(">II", 1, len(reason)) + reason)
            conn.close()
            return
        conn.sendall(struct.pack(">I", 0))
        recv_exactly(conn, 1)  # ClientInit
        conn.sendall(SERVER_INIT)
        while more := conn.recv(65536):
            conn.sendall(more.upper())

    return handle


SET_ENCODINGS = struct.pack(">BxHi", 2, 1, 0)
KEY_EVENT = struct.pack(">BBxxI", 4, 1, 0x61)
POINTER_EVENT = struct.pack(">BBHH", 5, 1, 10, 10)
UPDATE_REQUEST = struct.pack(">BBHHHH", 3, 0, 0, 0, 640, 480)
MESSAGES = SET_ENCODINGS + KEY_EVENT + POINTER_EVENT + UPDATE_REQUEST


def open_vnc_server(got: list[bytes], expect: int):
    """An RFB 3.8 server offering None; keeps ``expect`` bytes of messages."""

    def handle(conn: socket.socket, first: bytes) -> None:
        conn.sendall(b"RFB 003.008\n")
        recv_exactly(conn, 12)
        conn.sendall(b"\x01\x01")
        assert recv_exactly(conn, 1) == b"\x01"
        conn.sendall(struct.pack(">I", 0))
        recv_exactly(conn, 1)  # ClientInit
        conn.sendall(SERVER_INIT)
        got.append(recv_exactly(conn, expect))
        conn.sendall(b"seen")

    return handle
