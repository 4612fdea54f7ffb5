"""The RFB client-to-server message stream, parsed to enforce view-only.

A viewer holding a ``viewer`` token may watch a VNC console but not use it:
after the handshake its messages pass through ``ClientMessageFilter``, which
forwards what only shapes the picture (SetPixelFormat, SetEncodings,
FramebufferUpdateRequest, EnableContinuousUpdates, ClientFence, QEMU audio)
and, in view-only mode, drops what would reach the guest (KeyEvent,
PointerEvent, ClientCutText, QEMU extended key events, SetDesktopSize, xvp's
shutdown/reboot/reset).  A message type whose length it cannot know is
reported as ``UnknownMessage`` and nothing after it is forwarded: the stream
cannot be resynchronised, so the caller closes the session.

Message layouts: RFC 6143 7.5 and the community rfbproto spec.  Memory is
bounded by the longest fixed header (SetPixelFormat, 20 bytes): payloads
(encodings lists, cut text, fence data, screens) stream through or are
skipped as they arrive, never buffered, so a ClientCutText announcing 2 GiB
costs nothing but the bytes the viewer actually sends.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["ClientMessageFilter", "UnknownMessage"]

SET_PIXEL_FORMAT = 0
SET_ENCODINGS = 2
FRAMEBUFFER_UPDATE_REQUEST = 3
KEY_EVENT = 4
POINTER_EVENT = 5
CLIENT_CUT_TEXT = 6
ENABLE_CONTINUOUS_UPDATES = 150
CLIENT_FENCE = 248
XVP = 250
SET_DESKTOP_SIZE = 251
QEMU = 255
QEMU_EXTENDED_KEY = 0
QEMU_AUDIO = 1

# Messages of one fixed size, type byte included.
_FIXED = {
    SET_PIXEL_FORMAT: 20,
    FRAMEBUFFER_UPDATE_REQUEST: 10,
    KEY_EVENT: 8,
    POINTER_EVENT: 6,
    ENABLE_CONTINUOUS_UPDATES: 10,
    XVP: 4,
}
# Headers that announce a payload's length.
_HEADED = {SET_ENCODINGS: 4, CLIENT_CUT_TEXT: 8, CLIENT_FENCE: 9, SET_DESKTOP_SIZE: 8}
# What a view-only viewer may not send: input, clipboard, resizing, power.
_INPUT = {KEY_EVENT, POINTER_EVENT, CLIENT_CUT_TEXT, XVP, SET_DESKTOP_SIZE}


@dataclass(frozen=True)
class UnknownMessage:
    """A message this parser cannot measure; the caller closes the session."""

    message_type: int
    subtype: int | None = None

    @property
    def reason(self) -> str:
        """A log line's words for it."""
        if self.subtype is None:
            return f"unknown RFB client message type {self.message_type}"
        return (
            f"unknown RFB client message type {self.message_type} "
            f"subtype {self.subtype}"
        )


class ClientMessageFilter:
    """Bytes from a viewer in, (bytes for the VNC server, events) out.

    With ``view_only`` the input messages are dropped (counted in
    ``dropped``); without it every known message passes, which still stops
    a stream of unknown messages.
    """

    def __init__(self, view_only: bool) -> None:
        self.view_only = view_only
        self.dropped = 0
        self.failed = False
        self._header = bytearray()  # the current message's header so far
        self._payload_left = 0  # payload bytes of the current message to come
        self._payload_passes = False

    def feed(self, data: bytes) -> tuple[bytes, list[UnknownMessage]]:
        """Parse ``data``; return what to forward and any UnknownMessage."""
        if self.failed:
            return b"", []
        out = bytearray()
        pos, end = 0, len(data)
        while pos < end:
            if self._payload_left:
                n = min(self._payload_left, end - pos)
                if self._payload_passes:
                    out += data[pos : pos + n]
                self._payload_left -= n
                pos += n
                continue
            size = self._header_size()
            if isinstance(size, UnknownMessage):
                self.failed = True
                self._header.clear()
                return bytes(out), [size]
            take = min(size - len(self._header), end - pos)
            self._header += data[pos : pos + take]
            pos += take
            if len(self._header) == size and self._header_size() == size:
                self._message_header_done(out)
        # A header that is all there is (no payload) may complete at the end.
        if not self._payload_left and self._header:
            size = self._header_size()
            if isinstance(size, UnknownMessage):
                self.failed = True
                self._header.clear()
                return bytes(out), [size]
        return bytes(out), []

    def _header_size(self) -> int | UnknownMessage:
        """The current message's header length, as far as the bytes so far
        tell (a QEMU message's length depends on its subtype)."""
        header = self._header
        if not header:
            return 1
        kind = header[0]
        if kind in _FIXED:
            return _FIXED[kind]
        if kind in _HEADED:
            return _HEADED[kind]
        if kind != QEMU:
            return UnknownMessage(kind)
        if len(header) < 2:
            return 2
        subtype = header[1]
        if subtype == QEMU_EXTENDED_KEY:
            return 12  # u16 down-flag, u32 keysym, u32 keycode
        if subtype != QEMU_AUDIO:
            return UnknownMessage(kind, subtype)
        if len(header) < 4:
            return 4
        (operation,) = struct.unpack_from(">H", header, 2)
        if operation in (0, 1):  # enable, disable
            return 4
        if operation == 2:  # set format: u8 format, u8 channels, u32 frequency
            return 10
        return UnknownMessage(kind, subtype)

    def _message_header_done(self, out: bytearray) -> None:
        header = self._header
        kind = header[0]
        if kind == SET_ENCODINGS:
            payload = 4 * struct.unpack_from(">H", header, 2)[0]
        elif kind == CLIENT_CUT_TEXT:
            # Signed: negative is the extended clipboard format, abs() bytes.
            payload = abs(struct.unpack_from(">i", header, 4)[0])
        elif kind == CLIENT_FENCE:
            payload = header[8]
        elif kind == SET_DESKTOP_SIZE:
            payload = 16 * header[6]  # SCREEN structures
        else:
            payload = 0
        is_input = kind in _INPUT or (kind == QEMU and header[1] == QEMU_EXTENDED_KEY)
        passes = not (self.view_only and is_input)
        if passes:
            out += header
        else:
            self.dropped += 1
        self._header.clear()
        self._payload_left = payload
        self._payload_passes = passes
