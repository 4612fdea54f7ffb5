"""ClientMessageFilter (vdsmconsole.protocols.rfbclient): the RFB
client-to-server stream after the handshake, with recorded messages written
byte for byte from RFC 6143 7.5 and the community rfbproto spec."""

from __future__ import annotations

import struct

import pytest

from vdsmconsole.protocols.rfbclient import ClientMessageFilter, UnknownMessage

PIXEL_FORMAT = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
# What a viewer may send that only shapes the picture.
VIEWING = {
    "SetPixelFormat": b"\x00\x00\x00\x00" + PIXEL_FORMAT,
    "SetEncodings": b"\x02\x00\x00\x03"
    + struct.pack(">iii", 7, 0, -223),  # Tight, Raw, DesktopSize
    "FramebufferUpdateRequest": b"\x03\x01" + struct.pack(">HHHH", 0, 0, 640, 480),
    "EnableContinuousUpdates": b"\x96\x01" + struct.pack(">HHHH", 0, 0, 640, 480),
    "ClientFence": b"\xf8\x00\x00\x00" + struct.pack(">I", 1 << 31) + b"\x03abc",
    "QemuAudioEnable": b"\xff\x01\x00\x00",
    "QemuAudioFormat": b"\xff\x01\x00\x02\x03\x02" + struct.pack(">I", 44100),
}
# What reaches the guest: dropped for a view-only viewer.
INPUT = {
    "KeyEvent": b"\x04\x01\x00\x00" + struct.pack(">I", 0x61),
    "PointerEvent": b"\x05\x01" + struct.pack(">HH", 10, 20),
    "ClientCutText": b"\x06\x00\x00\x00" + struct.pack(">I", 5) + b"hello",
    "ExtendedClipboard": b"\x06\x00\x00\x00" + struct.pack(">i", -8) + b"\x10" * 8,
    "QemuExtendedKey": b"\xff\x00\x00\x01" + struct.pack(">II", 0x61, 0x1E),
    "xvpReset": b"\xfa\x00\x01\x04",
    "SetDesktopSize": b"\xfb\x00"
    + struct.pack(">HHBB", 800, 600, 1, 0)
    + struct.pack(">IHHHHI", 0, 0, 0, 800, 600, 0),
}


def feed_all(f, data, one_byte_at_a_time=False):
    """Feed ``data`` whole or bytewise; return (forwarded, events)."""
    chunks = [data[i : i + 1] for i in range(len(data))]
    out, events = b"", []
    for chunk in chunks if one_byte_at_a_time else [data]:
        forwarded, new = f.feed(chunk)
        out += forwarded
        events += new
    return out, events


@pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "bytewise"])
def test_view_only_drops_input_and_keeps_the_picture(one_byte):
    """Interleaved viewing and input messages: a view-only filter forwards
    exactly the viewing ones, in order, and counts the dropped ones."""
    stream, expected = b"", b""
    for view, inp in zip(VIEWING.values(), list(INPUT.values()) * 2, strict=False):
        stream += view + inp
        expected += view
    f = ClientMessageFilter(view_only=True)
    assert feed_all(f, stream, one_byte) == (expected, [])
    assert f.dropped == len(VIEWING)


@pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "bytewise"])
def test_without_view_only_everything_known_passes(one_byte):
    """Not view-only: every known message passes unchanged."""
    stream = b"".join([*VIEWING.values(), *INPUT.values()])
    f = ClientMessageFilter(view_only=False)
    assert feed_all(f, stream, one_byte) == (stream, [])
    assert f.dropped == 0


@pytest.mark.parametrize("name", sorted(INPUT))
def test_each_input_message_is_dropped(name):
    """Each input message alone, followed by an update request: only the
    request comes out."""
    request = VIEWING["FramebufferUpdateRequest"]
    f = ClientMessageFilter(view_only=True)
    assert f.feed(INPUT[name] + request) == (request, [])


@pytest.mark.parametrize(
    ("data", "event"),
    [
        (b"\x07", UnknownMessage(7)),  # UltraVNC FileTransfer
        (b"\xfd\x00\x00\x00", UnknownMessage(253)),  # gii: length is endian-dependent
        (b"\xff\x07", UnknownMessage(255, 7)),
        (b"\xff\x01\x00\x09", UnknownMessage(255, 1)),  # audio operation 9
    ],
)
def test_unknown_message_stops_the_stream(data, event):
    """An unmeasurable message is reported at once; what came before is
    forwarded, nothing after it ever is."""
    request = VIEWING["FramebufferUpdateRequest"]
    f = ClientMessageFilter(view_only=False)
    assert f.feed(request + data) == (request, [event])
    assert f.failed
    assert f.feed(request) == (b"", [])
    assert "unknown RFB client message type" in event.reason


def test_announced_cut_text_is_streamed_not_buffered():
    """A 32 MiB ClientCutText is skipped as it arrives (view-only): the
    filter never holds more than a header, and the message after the text
    is parsed normally."""
    f = ClientMessageFilter(view_only=True)
    size = 32 << 20
    chunk = b"x" * (1 << 20)
    assert f.feed(b"\x06\x00\x00\x00" + struct.pack(">I", size)) == (b"", [])
    for _ in range(size // len(chunk)):
        assert f.feed(chunk) == (b"", [])
        assert len(f._header) == 0  # nothing buffered
    request = VIEWING["FramebufferUpdateRequest"]
    assert f.feed(request) == (request, [])
    assert f.dropped == 1


def test_cut_text_passes_in_pieces_without_view_only():
    """Without view-only a long cut text passes through chunk by chunk, each
    piece forwarded as it arrives."""
    f = ClientMessageFilter(view_only=False)
    text = b"z" * 100_000
    head = b"\x06\x00\x00\x00" + struct.pack(">I", len(text))
    assert f.feed(head + text[:10]) == (head + text[:10], [])
    assert f.feed(text[10:50_000]) == (text[10:50_000], [])
    assert f.feed(text[50_000:]) == (text[50_000:], [])
    assert f.feed(b"\x03") == (b"", [])  # a header begun: held until whole
