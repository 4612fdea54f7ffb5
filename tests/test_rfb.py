"""VncAuthProxy (vdsmconsole.protocols.rfb) without a reactor: recorded RFB
server and viewer messages, written byte for byte from RFC 6143 and the
community rfbproto spec, fed whole and one byte at a time."""

from __future__ import annotations

import struct

import pytest

from vdsmconsole.protocols.rfb import (
    MAX_PENDING,
    MAX_REASON,
    AuthFailed,
    HandshakeDone,
    ProtocolError,
    VncAuthProxy,
)
from vdsmconsole.protocols.vncdes import vnc_auth_response, vnc_key

# A public vector: the "password" that vncpasswd stores as dbd83cfd727a1458
# is the DES encryption, with VNC's bit-reversed key, of b"password" under
# the fixed key 23 82 107 6 35 78 88 7.  Used as a VNC password and challenge
# it gives a byte-exact response that no code here computed.
PASSWORD = bytes([23, 82, 107, 6, 35, 78, 88, 7])
CHALLENGE = b"passwordpassword"
RESPONSE = bytes.fromhex("dbd83cfd727a1458" * 2)

V33, V37, V38 = b"RFB 003.003\n", b"RFB 003.007\n", b"RFB 003.008\n"
VERSIONS = {(3, 3): V33, (3, 7): V37, (3, 8): V38}
OK = b"\0\0\0\0"
FAILED = b"\0\0\0\1"


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def reason(text: bytes) -> bytes:
    return u32(len(text)) + text


@pytest.mark.parametrize(
    ("password", "plain", "expected"),
    [
        # vncpasswd's obfuscation of these passwords (fixed key, as above);
        # listed by TightVNC/UltraVNC tools and vncpasswd.py's README.
        (PASSWORD, b"password", "dbd83cfd727a1458"),
        (PASSWORD, b"12345678", "f0e43164f6c2e373"),
        (PASSWORD, b"bar\0\0\0\0\0", "9ca3f3686574f277"),
    ],
)
def test_des_response_matches_public_vectors(password, plain, expected):
    """The challenge response is DES-ECB with the bit-reversed key, as the
    published vncpasswd vectors show (both 8-byte blocks)."""
    assert vnc_auth_response(password, plain * 2).hex() == expected * 2


def test_key_is_first_eight_bytes_nul_padded_and_bit_reversed():
    """Only the first 8 password bytes count; short ones are NUL-padded;
    each key byte has its bits reversed (0x01 -> 0x80, 23 -> 0xe8)."""
    assert vnc_key(b"\x01\x17") == b"\x80\xe8" + b"\0" * 6
    assert vnc_auth_response(b"password-more", CHALLENGE) == vnc_auth_response(
        b"password", CHALLENGE
    )
    with pytest.raises(ValueError, match="16 bytes"):
        vnc_auth_response(b"pw", b"short")


# --------------------------------------------------------------------------
# A conversation: steps of ("server" | "viewer", bytes), fed in order.


def run(proxy, steps, one_byte_at_a_time=False):
    """Feed the steps; return (bytes to server, bytes to viewer, events)."""
    to_server = to_viewer = b""
    events = []
    for side, data in steps:
        feed = proxy.server_data if side == "server" else proxy.viewer_data
        chunks = [data[i : i + 1] for i in range(len(data))]
        for chunk in chunks if one_byte_at_a_time else [data]:
            feed(chunk)
            to_server += proxy.data_to_server()
            to_viewer += proxy.data_to_viewer()
            events += proxy.events()
    return to_server, to_viewer, events


def server_auth_steps(version):
    """A VNC server of ``version`` asking for VNC authentication and
    accepting the response; and what a correct viewer answers it."""
    if version == (3, 3):
        messages = [V33, u32(2), CHALLENGE, OK]
        answers = V33 + RESPONSE
    else:
        messages = [VERSIONS[version], b"\x01\x02", CHALLENGE, OK]
        answers = VERSIONS[version] + b"\x02" + RESPONSE
    return [("server", m) for m in messages], answers


def viewer_steps(version):
    """A viewer of ``version`` choosing None and sending ClientInit (shared);
    and what a server speaking 3.8 to it sends."""
    if version == (3, 3):
        return [("viewer", V33), ("viewer", b"\x01")], V38 + u32(1)
    if version == (3, 7):
        return [("viewer", V37), ("viewer", b"\x01"), ("viewer", b"\x01")], (
            V38 + b"\x01\x01"
        )
    return [("viewer", V38), ("viewer", b"\x01"), ("viewer", b"\x01")], (
        V38 + b"\x01\x01" + OK
    )


BOTH = [(s, v) for s in VERSIONS for v in VERSIONS]


@pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("server", "viewer"), BOTH)
def test_vnc_auth_then_none_for_the_viewer(server, viewer, one_byte):
    """Every pairing of 3.3/3.7/3.8 server and viewer: the proxy answers the
    server's version with min(its, 3.8), does VNC authentication with the
    stored password, then offers the viewer None in its version's way and
    forwards the ClientInit: byte-exact on both sides, whole or bytewise."""
    s_steps, s_expected = server_auth_steps(server)
    v_steps, v_expected = viewer_steps(viewer)
    # The viewer answers our version at once; the rest follows the server.
    steps = [v_steps[0], *s_steps, *v_steps[1:]]
    to_server, to_viewer, events = run(VncAuthProxy(PASSWORD), steps, one_byte)
    assert to_server == s_expected + b"\x01"  # ClientInit, shared-flag 1
    assert to_viewer == v_expected
    assert events == [HandshakeDone(b"", b"")]


def test_the_viewer_waits_until_the_server_accepted():
    """Nothing but our ProtocolVersion reaches the viewer before the server
    has accepted the stored password."""
    proxy = VncAuthProxy(PASSWORD)
    steps = [("viewer", V38), ("server", V38), ("server", b"\x01\x02")]
    steps += [("server", CHALLENGE)]
    _, to_viewer, events = run(proxy, steps)
    assert (to_viewer, events) == (V38, [])
    _, to_viewer, events = run(proxy, [("server", OK)])
    assert (to_viewer, events) == (b"\x01\x01", [])


@pytest.mark.parametrize(
    ("server_messages", "to_server"),
    [
        ([V33, u32(1)], V33),
        ([V37, b"\x01\x01"], V37 + b"\x01"),
        ([V38, b"\x01\x01", OK], V38 + b"\x01"),
    ],
    ids=["3.3", "3.7", "3.8"],
)
def test_server_offering_none_only(server_messages, to_server):
    """A server that offers (3.3: picks) None only is used with None, even
    though a password is stored."""
    steps = [("viewer", V38), *[("server", m) for m in server_messages]]
    steps += [("viewer", b"\x01"), ("viewer", b"\x00")]
    proxy = VncAuthProxy(PASSWORD)
    sent, to_viewer, events = run(proxy, steps)
    assert proxy.security_type == 1
    assert sent == to_server + b"\x00"
    assert to_viewer == V38 + b"\x01\x01" + OK
    assert events == [HandshakeDone(b"", b"")]


def test_vnc_auth_preferred_when_both_are_offered():
    """Offered [None, VNC auth, Tight], the proxy picks VNC authentication."""
    steps = [("server", V38), ("server", b"\x03\x01\x02\x10")]
    sent, _, _ = run(VncAuthProxy(PASSWORD), steps)
    assert sent == V38 + b"\x02"


def test_leftovers_are_handed_over():
    """Bytes beyond the handshake (a viewer that pipelines after ClientInit,
    a server that speaks early) come out in HandshakeDone, in order."""
    s_steps, _ = server_auth_steps((3, 8))
    steps = [("viewer", V38), *s_steps, ("server", b"early")]
    steps += [("viewer", b"\x01"), ("viewer", b"\x01\x03rest")]
    sent, _, events = run(VncAuthProxy(PASSWORD), steps)
    assert sent.endswith(RESPONSE + b"\x01")
    assert events == [HandshakeDone(b"early", b"\x03rest")]


@pytest.mark.parametrize(
    ("server_version", "answer"),
    [(b"RFB 004.001\n", V38), (b"RFB 003.889\n", V38), (b"RFB 003.005\n", V33)],
)
def test_other_server_versions(server_version, answer):
    """A server above 3.8 (RealVNC 4.1, Apple's 3.889) is answered 3.8; 3.5
    (RFC 6143: to be read as 3.3) is answered 3.3."""
    sent, _, events = run(VncAuthProxy(PASSWORD), [("server", server_version)])
    assert (sent, events) == (answer, [])


@pytest.mark.parametrize("viewer_version", [b"RFB 003.005\n", b"RFB 003.889\n"])
def test_other_viewer_versions_are_3_3(viewer_version):
    """A viewer answering any version other than 3.7 and 3.8 is spoken to as
    3.3 (RFC 6143 7.1.1): a u32 security type, no list."""
    s_steps, _ = server_auth_steps((3, 8))
    steps = [("viewer", viewer_version), *s_steps, ("viewer", b"\x01")]
    _, to_viewer, events = run(VncAuthProxy(PASSWORD), steps)
    assert to_viewer == V38 + u32(1)
    assert events == [HandshakeDone(b"", b"")]


# --------------------------------------------------------------------------
# Refusals: the viewer is told in its own version's way, then AuthFailed.


def refusal_to(viewer, text):
    """What a viewer of ``viewer`` version gets when refused for ``text``."""
    head = u32(0) if viewer == (3, 3) else b"\x00"
    return V38 + head + reason(b"vdsmconsole: " + text)


WRONG = b"the VNC server refused the stored VNC password"


@pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("viewer", list(VERSIONS))
@pytest.mark.parametrize(
    ("server_messages", "why"),
    [
        # 3.8 gives the reason (qemu's words); 3.3 and 3.7 just fail.
        (
            [V38, b"\x01\x02", CHALLENGE, FAILED + reason(b"Authentication failed")],
            WRONG + b" (Authentication failed)",
        ),
        # qemu's exact bytes: its length counts the C string's NUL.
        (
            [V38, b"\x01\x02", CHALLENGE, FAILED + reason(b"Authentication failed\0")],
            WRONG + b" (Authentication failed)",
        ),
        ([V37, b"\x01\x02", CHALLENGE, FAILED], WRONG),
        ([V33, u32(2), CHALLENGE, FAILED], WRONG),
    ],
    ids=["3.8", "3.8-qemu", "3.7", "3.3"],
)
def test_wrong_stored_password(server_messages, why, viewer, one_byte):
    """The server refuses the stored password: the viewer gets no security
    types and the reason (3.3: type 0 and the reason), AuthFailed follows."""
    v_steps, _ = viewer_steps(viewer)
    steps = [v_steps[0], *[("server", m) for m in server_messages]]
    _, to_viewer, events = run(VncAuthProxy(PASSWORD), steps, one_byte)
    assert to_viewer == refusal_to(viewer, why)
    assert events == [AuthFailed(why.decode())]


@pytest.mark.parametrize("viewer", list(VERSIONS))
@pytest.mark.parametrize(
    "server_messages",
    [[V38, b"\x00" + reason(b"Too many")], [V33, u32(0) + reason(b"Too many")]],
    ids=["3.8", "3.3"],
)
def test_server_refuses_with_its_reason(server_messages, viewer):
    """A server that refuses outright (no security types / type 0) has its
    reason passed on to the viewer."""
    v_steps, _ = viewer_steps(viewer)
    steps = [v_steps[0], *[("server", m) for m in server_messages]]
    _, to_viewer, events = run(VncAuthProxy(PASSWORD), steps)
    why = b"the VNC server refused the connection (Too many)"
    assert to_viewer == refusal_to(viewer, why)
    assert events == [AuthFailed(why.decode())]


def test_no_common_security_type():
    """Offered only VeNCrypt and Tight, the proxy tells the viewer which
    types the server offered and that none is spoken here."""
    steps = [("viewer", V38), ("server", V38), ("server", b"\x02\x13\x10")]
    sent, to_viewer, events = run(VncAuthProxy(PASSWORD), steps)
    assert sent == V38  # no choice sent: the caller closes
    [event] = events
    assert isinstance(event, AuthFailed)
    assert "offered: 19, 16" in event.reason
    assert to_viewer.startswith(V38 + b"\x00") and b"offered: 19, 16" in to_viewer


def test_empty_password_and_server_wants_one():
    """Without a stored password a VNC-auth-only server is a clear refusal."""
    steps = [("viewer", V38), ("server", V33), ("server", u32(2))]
    _, to_viewer, events = run(VncAuthProxy(b""), steps)
    assert events == [AuthFailed("the VNC server asks for a password; none is stored")]
    assert b"none is stored" in to_viewer


def test_refusal_waits_for_the_viewers_version():
    """A refusal before the viewer said its version is held until then, so
    the viewer hears it in its version's way."""
    proxy = VncAuthProxy(PASSWORD)
    steps = [("server", V38), ("server", b"\x00" + reason(b"no"))]
    _, to_viewer, events = run(proxy, steps)
    assert (to_viewer, events) == (V38, [])
    proxy.server_closed()  # the server hangs up after its reason
    _, to_viewer, events = run(proxy, [("viewer", V33)])
    assert to_viewer == u32(0) + reason(
        b"vdsmconsole: the VNC server refused the connection (no)"
    )
    assert [type(e) for e in events] == [AuthFailed]


def test_reason_is_made_printable():
    """Control characters in a server's reason never reach a log or viewer."""
    steps = [("viewer", V38), ("server", V38), ("server", b"\x00")]
    steps += [("server", reason(b"bad\r\n\x1b[31mred\xff"))]
    _, _, events = run(VncAuthProxy(PASSWORD), steps)
    why = "the VNC server refused the connection (bad???[31mred?)"
    assert events == [AuthFailed(why)]


# --------------------------------------------------------------------------
# Hostile or broken peers


@pytest.mark.parametrize(
    "server_messages",
    [
        [V38, b"\x00" + u32(MAX_REASON + 1)],
        [V38, b"\x01\x02", CHALLENGE, FAILED + u32(0xFFFFFFFF)],
        [V33, u32(0) + u32(0x7FFFFFFF)],
    ],
    ids=["no-types", "security-result", "3.3"],
)
def test_hostile_reason_length_is_refused_at_once(server_messages):
    """A reason length above MAX_REASON is a protocol error as soon as the
    length is read, without waiting for (or buffering) the bytes."""
    steps = [("viewer", V38), *[("server", m) for m in server_messages]]
    _, to_viewer, events = run(VncAuthProxy(PASSWORD), steps)
    [event] = events
    assert isinstance(event, ProtocolError) and "reason string" in event.reason
    assert to_viewer == V38 + b"\x00" + reason(
        b"vdsmconsole: the VNC server failed the handshake"
    )


def test_longest_allowed_reason_passes():
    """A reason of exactly MAX_REASON bytes is accepted and passed on."""
    steps = [("viewer", V38), ("server", V38), ("server", b"\x00")]
    steps += [("server", reason(b"x" * MAX_REASON))]
    _, _, events = run(VncAuthProxy(PASSWORD), steps)
    assert [type(e) for e in events] == [AuthFailed]


@pytest.mark.parametrize("side", ["server", "viewer"])
def test_flood_ahead_of_the_handshake(side):
    """A peer that sends more than MAX_PENDING bytes while the handshake
    waits on the other side is a protocol error, its bytes dropped."""
    proxy = VncAuthProxy(PASSWORD)
    s_steps, _ = server_auth_steps((3, 8))
    # Server authenticated, viewer silent: the server floods; or the viewer
    # said its version and floods while the server says nothing.
    steps = s_steps if side == "server" else [("viewer", V38)]
    run(proxy, steps)
    flood = b"\0" * 4096
    events = []
    for _ in range(MAX_PENDING // len(flood) + 1):
        _, _, events = run(proxy, [(side, flood)])
        if events:
            break
    [event] = events
    assert isinstance(event, ProtocolError) and "ahead of the handshake" in event.reason
    assert event.reason.startswith("VNC server" if side == "server" else "viewer")
    assert proxy.failed
    assert run(proxy, [(side, flood)]) == (b"", b"", [])  # ignored from now on


@pytest.mark.parametrize(
    ("steps", "starts"),
    [
        ([("server", b"HTTP/1.1 200")], "VNC server: not an RFB"),
        ([("server", b"RFB 002.000\n")], "VNC server: RFB 2.0 is too old"),
        ([("server", V33 + u32(16))], "VNC server: RFB 3.3 security type 16"),
        ([("viewer", b"GET / HTTP/1\n")], "viewer: not an RFB"),
    ],
)
def test_broken_peers(steps, starts):
    """Garbage for a version, a version below 3.3, a 3.3 security type other
    than 0, 1, 2: protocol errors naming the side."""
    _, _, events = run(VncAuthProxy(PASSWORD), steps)
    [event] = events
    assert isinstance(event, ProtocolError) and event.reason.startswith(starts)


@pytest.mark.parametrize(("viewer", "told"), [((3, 8), True), ((3, 7), False)])
def test_viewer_choosing_another_type(viewer, told):
    """A viewer that picks a type other than None is a protocol error; a 3.8
    viewer gets a failed SecurityResult with the reason first."""
    s_steps, _ = server_auth_steps((3, 8))
    steps = [("viewer", VERSIONS[viewer]), *s_steps, ("viewer", b"\x02")]
    sent, to_viewer, events = run(VncAuthProxy(PASSWORD), steps)
    [event] = events
    assert isinstance(event, ProtocolError) and event.reason.startswith("viewer:")
    failed = FAILED + reason(b"vdsmconsole: only security type None (1) is offered")
    assert to_viewer.endswith(b"\x01\x01" + failed) == told
    assert not sent.endswith(b"\x01" * 2)  # no ClientInit went to the server


def test_server_closing_mid_handshake():
    """The server hanging up before it accepted us: a protocol error, and a
    viewer waiting for its security types is told."""
    proxy = VncAuthProxy(PASSWORD)
    run(proxy, [("viewer", V37), ("server", V38), ("server", b"\x01\x02")])
    proxy.server_closed()
    assert proxy.data_to_viewer() == b"\x00" + reason(
        b"vdsmconsole: the VNC server failed the handshake"
    )
    [event] = proxy.events()
    assert event == ProtocolError(
        "VNC server: it closed the connection during the handshake"
    )


def test_relay_after_done_is_the_callers_job():
    """Once HandshakeDone is out, feeding more bytes is a caller bug."""
    proxy = VncAuthProxy(PASSWORD)
    s_steps, _ = server_auth_steps((3, 3))
    run(proxy, [("viewer", V33), *s_steps, ("viewer", b"\x00")])
    assert proxy.done
    with pytest.raises(RuntimeError, match="relay raw"):
        proxy.server_data(b"ServerInit")


def test_password_must_be_bytes():
    """A str password is a TypeError naming the type, early."""
    with pytest.raises(TypeError, match="str"):
        VncAuthProxy("secret")  # type: ignore[arg-type]
