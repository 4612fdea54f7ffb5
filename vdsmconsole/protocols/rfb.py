"""The RFB (VNC) handshake, proxied so that the VNC password stays here.

Where a VNC endpoint has a password, this server does the VNC server's
authentication itself and offers the viewer security type None (as
CloudStack's console proxy does): no VNC password ever reaches a viewer.
``VncAuthProxy`` sits between the two handshakes, sans-IO in the style of
h2's ``H2Connection``: the caller feeds it the bytes each side sent, writes
out what it has for each side, and reads events::

    proxy = VncAuthProxy(password)
    viewer.write(proxy.data_to_viewer())      # our ProtocolVersion, at once
    ...
    proxy.server_data(chunk)                  # or proxy.viewer_data(chunk)
    server.write(proxy.data_to_server())
    viewer.write(proxy.data_to_viewer())
    for event in proxy.events(): ...

Towards the server it is a viewer: RFB min(server's version, 3.8), VNC
authentication (2) when offered, else None (1).  Towards the viewer it is a
server speaking 3.8 (3.3 and 3.7 viewers too), offering only None, and only
once the server has accepted us, so a viewer never gets further than the
real server let us.  A refusal reaches the viewer in its own version's words
(no security types and a reason; 3.3: type 0 and a reason) before
``AuthFailed`` is emitted; the caller then flushes and closes both sides.

After ``HandshakeDone`` the caller relays raw bytes both ways: the event
carries what each side had sent beyond the handshake.  The viewer's
ClientInit is already in ``data_to_server()``; write that before
``viewer_leftover``.

Every length read from the wire is bounded (``MAX_REASON``), and neither side
may run more than ``MAX_PENDING`` bytes ahead of the handshake, so a hostile
peer cannot make the proxy buffer without bound.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from vdsmconsole.protocols.vncdes import CHALLENGE_SIZE, vnc_auth_response

__all__ = [
    "MAX_PENDING",
    "MAX_REASON",
    "SEC_NONE",
    "SEC_VNC_AUTH",
    "AuthFailed",
    "Event",
    "HandshakeDone",
    "ProtocolError",
    "VncAuthProxy",
    "failure_message",
    "version_message",
]

# Security types (RFC 6143 7.1.2).
SEC_INVALID = 0
SEC_NONE = 1
SEC_VNC_AUTH = 2

VERSION_SIZE = 12
OUR_VERSION = (3, 8)
MAX_REASON = 4096
MAX_PENDING = 64 * 1024

_VERSION = re.compile(rb"RFB (\d{3})\.(\d{3})\n")
_U32 = struct.Struct(">I")

Version = tuple[int, int]


@dataclass(frozen=True)
class HandshakeDone:
    """Both handshakes are over: relay raw bytes from now on.

    ``server_leftover`` goes to the viewer, ``viewer_leftover`` to the server
    (after ``data_to_server()``, which holds the viewer's ClientInit)."""

    server_leftover: bytes
    viewer_leftover: bytes


@dataclass(frozen=True)
class AuthFailed:
    """The VNC server refused us (wrong stored password, no security type in
    common, its own reason); the viewer's bytes already say so."""

    reason: str


@dataclass(frozen=True)
class ProtocolError:
    """A peer broke the protocol (``reason`` names which); close both sides."""

    reason: str


Event = HandshakeDone | AuthFailed | ProtocolError


def version_message(version: Version) -> bytes:
    """The 12-byte ProtocolVersion message: ``RFB 003.008\\n``."""
    return b"RFB %03d.%03d\n" % version


def failure_message(version: Version, reason: str) -> bytes:
    """What a server sends instead of security types when it refuses a
    viewer speaking ``version``: 3.3 a u32 type 0, 3.7 on an empty list;
    then the reason string."""
    text = reason.encode("ascii", "replace")
    head = _U32.pack(SEC_INVALID) if version == (3, 3) else b"\0"
    return head + _U32.pack(len(text)) + text


def printable(raw: bytes) -> str:
    """A reason string from the wire, safe to show and to log: ASCII
    printables, anything else as ``?``."""
    return "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in raw)


def _parse_version(raw: bytes) -> Version | None:
    found = _VERSION.fullmatch(raw)
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2))


class VncAuthProxy:
    """Authenticate to a VNC server with ``password``, offer the viewer None.

    Not thread-safe; one per tunnel.  See the module docstring for the flow.
    """

    def __init__(self, password: bytes) -> None:
        if not isinstance(password, bytes):
            raise TypeError(f"password must be bytes, not {type(password).__name__}")
        self._password = password
        self._from_server = bytearray()
        self._from_viewer = bytearray()
        self._to_server = bytearray()
        self._to_viewer = bytearray(version_message(OUR_VERSION))
        self._events: list[Event] = []
        self._server_step: Callable[[], bool] = self._server_version
        self._viewer_step: Callable[[], bool] = self._viewer_version
        self._server_ok = False
        self._refusal: str | None = None  # the server refused; viewer not told yet
        self._security: int | None = None
        self._state = "handshake"  # then "done" or "failed"
        self.server_version: Version | None = None
        self.viewer_version: Version | None = None

    # ------------------------------------------------------------------
    # The caller's side

    @property
    def done(self) -> bool:
        """True once HandshakeDone was emitted: relay raw bytes now."""
        return self._state == "done"

    @property
    def security_type(self) -> int | None:
        """The security type used with the VNC server (1 None, 2 VNC
        authentication), once chosen; for log lines."""
        return self._security

    @property
    def failed(self) -> bool:
        """True once AuthFailed or ProtocolError was emitted."""
        return self._state == "failed"

    def server_data(self, data: bytes) -> None:
        """Bytes the VNC server sent."""
        self._feed(self._from_server, data, "VNC server")

    def viewer_data(self, data: bytes) -> None:
        """Bytes the viewer sent."""
        self._feed(self._from_viewer, data, "viewer")

    def server_closed(self) -> None:
        """The VNC server closed its connection.  During the handshake that is
        a failure the viewer hears about (unless the server had already given
        its reason, which the viewer still gets)."""
        if self._state == "handshake" and self._refusal is None:
            self._server_error("it closed the connection during the handshake")
            self._advance()

    def data_to_server(self) -> bytes:
        """Bytes to write to the VNC server now (drained)."""
        data = bytes(self._to_server)
        self._to_server.clear()
        return data

    def data_to_viewer(self) -> bytes:
        """Bytes to write to the viewer now (drained)."""
        data = bytes(self._to_viewer)
        self._to_viewer.clear()
        return data

    def events(self) -> list[Event]:
        """Events since the last call (drained)."""
        events, self._events = self._events, []
        return events

    def _feed(self, buffer: bytearray, data: bytes, side: str) -> None:
        if self._state == "done":
            raise RuntimeError("the handshake is done: relay raw bytes")
        if self._state == "failed":
            return  # the caller is closing; nothing more to say
        buffer += data
        self._advance()
        if self._state == "handshake" and len(buffer) > MAX_PENDING:
            message = f"it sent {len(buffer)} bytes ahead of the handshake"
            if side == "viewer":
                self._viewer_error(message)
            else:
                self._server_error(message)
            self._advance()

    def _advance(self) -> None:
        """Run both state machines until neither can move."""
        while self._state == "handshake" and (
            self._server_step() or self._viewer_step()
        ):
            pass

    def _take(self, buffer: bytearray, n: int) -> bytes:
        data = bytes(buffer[:n])
        del buffer[:n]
        return data

    # ------------------------------------------------------------------
    # Towards the VNC server: we are its viewer

    def _server_version(self) -> bool:
        if len(self._from_server) < VERSION_SIZE:
            return False
        raw = self._take(self._from_server, VERSION_SIZE)
        offered = _parse_version(raw)
        if offered is None:
            return self._server_error(f"not an RFB ProtocolVersion: {raw!r}")
        if offered < (3, 3):
            return self._server_error(f"RFB {offered[0]}.{offered[1]} is too old")
        # min(offered, 3.8); RFC 6143 7.1.1: anything else below 3.7 is 3.3.
        if offered >= (3, 8):
            version = (3, 8)
        elif offered == (3, 7):
            version = (3, 7)
        else:
            version = (3, 3)
        self.server_version = version
        self._to_server += version_message(version)
        if version == (3, 3):
            self._server_step = self._server_security_33
        else:
            self._server_step = self._server_security_types
        return True

    def _server_security_33(self) -> bool:
        if len(self._from_server) < 4:
            return False
        (chosen,) = _U32.unpack(self._take(self._from_server, 4))
        if chosen == SEC_INVALID:
            self._server_step = self._server_refusal
            return True
        if chosen not in (SEC_NONE, SEC_VNC_AUTH):
            return self._server_error(f"RFB 3.3 security type {chosen} is not 1 or 2")
        self._security = chosen
        if chosen == SEC_NONE:  # 3.3: no SecurityResult after None
            return self._server_accepted()
        if not self._password:
            return self._refuse("the VNC server asks for a password; none is stored")
        self._server_step = self._server_challenge
        return True

    def _server_security_types(self) -> bool:
        if not self._from_server:
            return False
        count = self._from_server[0]
        if count == 0:
            del self._from_server[:1]
            self._server_step = self._server_refusal
            return True
        if len(self._from_server) < 1 + count:
            return False
        offered = self._take(self._from_server, 1 + count)[1:]
        chosen = self._choose(offered)
        if chosen is None:
            listed = ", ".join(str(t) for t in offered)
            return self._refuse(
                "the VNC server offers no security type this server speaks "
                f"(offered: {listed}; spoken: None, and VNC authentication "
                "with a stored password)"
            )
        self._security = chosen
        self._to_server.append(chosen)
        if chosen == SEC_VNC_AUTH:
            self._server_step = self._server_challenge
        elif self.server_version == (3, 8):
            self._server_step = self._server_result
        else:  # 3.7 sends no SecurityResult after None
            return self._server_accepted()
        return True

    def _choose(self, offered: bytes) -> int | None:
        if self._password and SEC_VNC_AUTH in offered:
            return SEC_VNC_AUTH
        if SEC_NONE in offered:
            return SEC_NONE
        return None

    def _server_challenge(self) -> bool:
        if len(self._from_server) < CHALLENGE_SIZE:
            return False
        challenge = self._take(self._from_server, CHALLENGE_SIZE)
        self._to_server += vnc_auth_response(self._password, challenge)
        self._server_step = self._server_result
        return True

    def _server_result(self) -> bool:
        if len(self._from_server) < 4:
            return False
        (status,) = _U32.unpack(self._take(self._from_server, 4))
        if status == 0:
            return self._server_accepted()
        if self.server_version == (3, 8):  # 3.8 gives a reason, 3.3/3.7 none
            self._server_step = self._server_refusal
            return True
        return self._refuse(self._refusal_text(""))

    def _server_refusal(self) -> bool:
        """The reason string after a refusal: a u32 length, then the text."""
        if len(self._from_server) < 4:
            return False
        (length,) = _U32.unpack_from(self._from_server)
        if length > MAX_REASON:
            return self._server_error(
                f"a reason string of {length} bytes (at most {MAX_REASON})"
            )
        if len(self._from_server) < 4 + length:
            return False
        # C servers (qemu among them) count the string's NUL terminator too.
        raw = self._take(self._from_server, 4 + length)[4:].rstrip(b"\0")
        reason = printable(raw)
        return self._refuse(self._refusal_text(reason))

    def _refusal_text(self, reason: str) -> str:
        if self._security == SEC_VNC_AUTH:
            text = "the VNC server refused the stored VNC password"
        else:
            text = "the VNC server refused the connection"
        return f"{text} ({reason})" if reason else text

    def _server_accepted(self) -> bool:
        self._server_ok = True
        self._server_step = self._server_idle
        return True

    def _server_idle(self) -> bool:
        """Authenticated; the server waits for ClientInit, so whatever it
        sends now waits for HandshakeDone (bounded by MAX_PENDING)."""
        return False

    def _refuse(self, reason: str) -> bool:
        """The server refused us: tell the viewer once its version is known."""
        self._refusal = reason
        self._server_step = self._server_idle
        return True

    def _server_error(self, message: str) -> bool:
        self._fail(ProtocolError(f"VNC server: {message}"))
        if self.viewer_version is not None and self._viewer_step == self._viewer_waits:
            # The viewer still waits for its security types: say why not.
            self._to_viewer += failure_message(
                self.viewer_version, "vdsmconsole: the VNC server failed the handshake"
            )
        return False

    # ------------------------------------------------------------------
    # Towards the viewer: we are its server, offering None only

    def _viewer_version(self) -> bool:
        if len(self._from_viewer) < VERSION_SIZE:
            return False
        raw = self._take(self._from_viewer, VERSION_SIZE)
        answered = _parse_version(raw)
        if answered is None:
            return self._viewer_error(f"not an RFB ProtocolVersion: {raw!r}")
        # RFC 6143 7.1.1: versions other than 3.7 and 3.8 are taken as 3.3.
        self.viewer_version = answered if answered in ((3, 7), (3, 8)) else (3, 3)
        self._viewer_step = self._viewer_waits
        return True

    def _viewer_waits(self) -> bool:
        """Hold the viewer until the server has accepted or refused us."""
        version = self.viewer_version
        assert version is not None
        if self._refusal is not None:
            self._to_viewer += failure_message(version, f"vdsmconsole: {self._refusal}")
            self._fail(AuthFailed(self._refusal))
            return False
        if not self._server_ok:
            return False
        if version == (3, 3):
            self._to_viewer += _U32.pack(SEC_NONE)
            self._viewer_step = self._viewer_client_init
        else:
            self._to_viewer += bytes([1, SEC_NONE])
            self._viewer_step = self._viewer_security_choice
        return True

    def _viewer_security_choice(self) -> bool:
        if not self._from_viewer:
            return False
        chosen = self._take(self._from_viewer, 1)[0]
        if chosen != SEC_NONE:
            if self.viewer_version == (3, 8):
                text = b"vdsmconsole: only security type None (1) is offered"
                self._to_viewer += _U32.pack(1) + _U32.pack(len(text)) + text
            return self._viewer_error(
                f"chose security type {chosen}; only None (1) was offered"
            )
        if self.viewer_version == (3, 8):  # 3.8 sends SecurityResult after None
            self._to_viewer += _U32.pack(0)
        self._viewer_step = self._viewer_client_init
        return True

    def _viewer_client_init(self) -> bool:
        if not self._from_viewer:
            return False
        self._to_server += self._take(self._from_viewer, 1)  # shared-flag
        self._events.append(
            HandshakeDone(bytes(self._from_server), bytes(self._from_viewer))
        )
        self._from_server.clear()
        self._from_viewer.clear()
        self._state = "done"
        return False

    def _viewer_error(self, message: str) -> bool:
        self._fail(ProtocolError(f"viewer: {message}"))
        return False

    def _fail(self, event: AuthFailed | ProtocolError) -> None:
        self._events.append(event)
        self._state = "failed"
        self._from_server.clear()
        self._from_viewer.clear()
