"""The VNC authentication step of a tunnel whose VNC endpoint has a password.

The server completes the VNC server's handshake itself with the stored
password and offers the viewer security type None (``protocols/rfb.py``
does the RFB; this feeds it the bytes of both connections).  Once the
handshake is done the relay carries raw bytes; a wrong stored password
reaches the viewer as an RFB failure with its reason, and one log line.
The password is never logged or sent to the viewer.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from vdsmconsole.protocols.rfb import (
    AuthFailed,
    HandshakeDone,
    ProtocolError,
    VncAuthProxy,
)

log = Logger(namespace="vdsmconsole.tunnels")


class VncAuthStep:
    """Between the viewer and the VNC server until both handshakes are done.

    ``to_viewer``/``to_endpoint`` write to each side; ``done(to_viewer,
    to_endpoint)`` is called once with what each side sent beyond the
    handshake; ``failed(why)`` once if it fails (the viewer has its answer).
    """

    def __init__(
        self,
        password: str,
        to_viewer: Callable[[bytes], None],
        to_endpoint: Callable[[bytes], None],
        done: Callable[[bytes, bytes], None],
        failed: Callable[[str], None],
    ) -> None:
        self.proxy = VncAuthProxy(password.encode("utf-8"))
        self.to_viewer = to_viewer
        self.to_endpoint = to_endpoint
        self.done = done
        self.failed = failed
        self.finished = False

    def start(self) -> None:
        self._flush()  # our ProtocolVersion to the viewer

    def from_endpoint(self, data: bytes) -> None:
        self.proxy.server_data(data)
        self._flush()

    def from_viewer(self, data: bytes) -> None:
        self.proxy.viewer_data(data)
        self._flush()

    def endpoint_closed(self) -> None:
        self.proxy.server_closed()
        self._flush()

    def _flush(self) -> None:
        if self.finished:
            return
        to_server = self.proxy.data_to_server()
        if to_server:
            self.to_endpoint(to_server)
        to_viewer = self.proxy.data_to_viewer()
        if to_viewer:
            self.to_viewer(to_viewer)
        for event in self.proxy.events():
            if isinstance(event, HandshakeDone):
                self.finished = True
                self.done(event.server_leftover, event.viewer_leftover)
                return
            if isinstance(event, AuthFailed | ProtocolError):
                self.finished = True
                kind = "refused" if isinstance(event, AuthFailed) else "failed"
                self.failed(f"VNC authentication {kind}: {event.reason}")
                return
