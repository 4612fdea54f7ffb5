"""Connection deadlines and header limits of the site, on a Clock, without sockets."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import resource, server

from vdsmconsole.config import Config
from vdsmconsole.site import ConnectionDeadlines, ConsoleSite, Root
from vdsmconsole.streams import headers_received

# -- ConnectionDeadlines: pure bookkeeping ---------------------------------------


def deadlines(clock: Clock) -> tuple[ConnectionDeadlines, list[str]]:
    fired: list[str] = []
    return ConnectionDeadlines(clock, 10, 30, fired.append), fired


def test_no_handshake_expires_at_the_handshake_timeout():
    """A TLS connection that never completes its handshake expires at 10 s."""
    clock = Clock()
    d, fired = deadlines(clock)
    d.start(tls=True)
    clock.advance(9.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == ["handshake"]
    clock.advance(100)
    assert fired == ["handshake"]  # once, and the header deadline is gone too


def test_silent_client_after_handshake_expires_at_the_header_timeout():
    """TLS done, no request: the first request's deadline runs from the start."""
    clock = Clock()
    d, fired = deadlines(clock)
    d.start(tls=True)
    clock.advance(5)
    d.handshakeDone()
    clock.advance(24.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == ["headers"]


def test_headers_in_time_cancel_the_deadline():
    """Headers complete before the deadline: nothing fires, ever."""
    clock = Clock()
    d, fired = deadlines(clock)
    d.start(tls=True)
    d.handshakeDone()
    d.requestStarted()
    clock.advance(29)
    d.headersDone()
    clock.advance(1000)
    assert fired == []
    assert clock.getDelayedCalls() == []


def test_a_later_request_gets_its_own_deadline_from_its_first_byte():
    """After a request, the next one's 30 s start at its first byte, not before."""
    clock = Clock()
    d, fired = deadlines(clock)
    d.start(tls=False)
    d.headersDone()
    clock.advance(500)  # an idle keep-alive connection: not our business
    d.requestStarted()
    clock.advance(20)
    d.requestStarted()  # more header bytes do not push the deadline back
    clock.advance(10)
    assert fired == ["headers"]


def test_header_deadline_before_handshake_counts_as_handshake():
    """With header_timeout < handshake_timeout, a missing handshake is named so."""
    clock = Clock()
    fired: list[str] = []
    d = ConnectionDeadlines(clock, 10, 5, fired.append)
    d.start(tls=True)
    clock.advance(5)
    assert fired == ["handshake"]


def test_stop_cancels_everything():
    """A closed connection leaves no delayed call behind."""
    clock = Clock()
    d, fired = deadlines(clock)
    d.start(tls=True)
    d.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert fired == []


# -- the site over an in-memory transport ----------------------------------------


class Forever(resource.Resource):
    """A stream stand-in: answers headers, then never finishes."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        request.write(b"")
        return server.NOT_DONE_YET

    def render_POST(self, request: Any) -> Any:
        request.write(b"")
        return server.NOT_DONE_YET


class Quick(resource.Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        return b"ok"


def make_site(clock: Clock, **config: Any) -> ConsoleSite:
    context = SimpleNamespace(config=Config(**config), reactor=clock)
    root = Root(Quick(), lambda vm_id: Forever())
    site = ConsoleSite(root, context)  # type: ignore[arg-type]
    site.headersReceivedHook = headers_received  # stream POSTs render early
    return site


def connect(site: ConsoleSite) -> tuple[Any, StringTransport]:
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    return protocol, transport


def status_line(transport: StringTransport) -> bytes:
    return transport.value().split(b"\r\n", 1)[0]


def test_too_many_headers_is_431_with_a_body_and_close():
    """501 header lines: 431 with a short body and Connection: close."""
    site = make_site(Clock())
    protocol, transport = connect(site)
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(501))
    protocol.dataReceived(b"GET /RPC2 HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert status_line(transport) == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert b"Connection: close" in transport.value()
    assert transport.value().endswith(b"\r\n\r\nrequest header fields too large\n")
    assert transport.disconnecting


def test_500_headers_are_fine():
    """Exactly Twisted's limit of 500 headers is still served."""
    site = make_site(Clock())
    protocol, transport = connect(site)
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(498))
    protocol.dataReceived(
        b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n" + headers + b"Content-Length: 0\r\n\r\n"
    )
    assert status_line(transport) == b"HTTP/1.1 200 OK"


@pytest.mark.parametrize(
    "request_bytes,expected",
    [
        (b"GET /RPC2 HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (
            b"GET /RPC2 HTTP/1.1\r\nX-A: "
            + b"a" * 9000
            + b"\r\nX-B: "
            + b"b" * 9000
            + b"\r\n",
            431,
        ),
        (b"GET /RPC2?" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /RPC2?" + b"a" * 20000, 414),  # no end of line yet: still refused
    ],
)
def test_oversized_lines_are_refused_cleanly(request_bytes, expected):
    """A header line or headers over 16 KiB: 431; a request line over it: 414."""
    site = make_site(Clock())
    protocol, transport = connect(site)
    protocol.dataReceived(request_bytes)
    assert status_line(transport).startswith(b"HTTP/1.1 %d " % expected)
    assert transport.disconnecting
    protocol.dataReceived(b"\r\nGET /RPC2 HTTP/1.1\r\n\r\n")  # ignored
    assert transport.value().count(b"HTTP/1.1") == 1


@pytest.mark.parametrize(
    "head",
    [
        b"GET /RPC2 HTTP/1.1\r\n\r\n",
        b"GET /consoleStream/vm1 HTTP/1.1\r\n\r\n",
        b"POST /RPC2 HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 0\r\n\r\n",
        b"POST /consoleStream/vm1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    ],
)
def test_http11_without_one_host_is_400_and_not_served(head):
    """No Host (or two): 400 and closed; the request is never rendered."""
    site = make_site(Clock())
    protocol, transport = connect(site)
    protocol.dataReceived(head)
    assert status_line(transport) == b"HTTP/1.1 400 Bad Request"
    assert transport.value().count(b"\r\n\r\n") == 1  # one answer
    assert transport.disconnecting
    assert not site.inFlight


def test_trickled_headers_get_408_at_the_header_timeout():
    """Headers trickled a byte a second: 408 and closed at 30 s, one refusal."""
    clock = Clock()
    site = make_site(clock)
    protocol, transport = connect(site)
    for byte in b"GET /RPC2 HTTP/1.1\r\nHost: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx":
        protocol.dataReceived(bytes([byte]))
        clock.advance(1)
        if transport.disconnecting:
            break
    assert clock.seconds() == 30
    assert status_line(transport) == b"HTTP/1.1 408 Request Timeout"
    assert transport.disconnecting


def test_configured_header_timeout_applies():
    """header_timeout from the configuration, not a constant."""
    clock = Clock()
    site = make_site(clock, header_timeout=2.5)
    protocol, transport = connect(site)
    protocol.dataReceived(b"GET /RPC2 HTTP/1.1\r\n")
    clock.advance(2.4)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert status_line(transport) == b"HTTP/1.1 408 Request Timeout"


def test_keep_alive_request_after_idle_gets_a_fresh_deadline():
    """A second request 100 s after the first has its own 30 s for its headers."""
    clock = Clock()
    site = make_site(clock, header_timeout=30.0)
    site.timeOut = 1000  # no idle timeout in the way here
    protocol, transport = connect(site)
    protocol.dataReceived(
        b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    assert status_line(transport) == b"HTTP/1.1 200 OK"
    clock.advance(100)
    assert not transport.disconnecting
    protocol.dataReceived(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n")
    clock.advance(29)
    assert not transport.disconnecting
    protocol.dataReceived(b"Content-Length: 0\r\n\r\n")
    assert transport.value().count(b"HTTP/1.1 200 OK") == 2
    clock.advance(200)
    assert b"408" not in transport.value()


def test_console_stream_is_never_idle_timed_out():
    """A GET stream outlives Twisted's 60 s idle timeout by far."""
    clock = Clock()
    site = make_site(clock)
    protocol, transport = connect(site)
    protocol.dataReceived(b"GET /consoleStream/vm1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_line(transport) == b"HTTP/1.1 200 OK"
    clock.advance(3600)
    assert not transport.disconnecting


def test_open_post_stream_is_not_idle_timed_out():
    """A duplex-style POST whose client sends nothing for an hour stays open."""
    clock = Clock()
    site = make_site(clock)
    protocol, transport = connect(site)
    protocol.dataReceived(
        b"POST /consoleStream/vm1?duplex=1 HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    assert status_line(transport) == b"HTTP/1.1 200 OK"
    clock.advance(3600)
    assert not transport.disconnecting
    assert len(site.inFlight) == 1


@pytest.mark.parametrize(
    "head",
    [
        b"GET /%63onsoleStream/vm1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /%63onsoleStream/vm1?duplex=1 HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
    ],
    ids=["GET", "POST"],
)
def test_encoded_stream_path_is_a_stream_too(head):
    """/%63onsoleStream/ is the stream: dispatched early and held from idle timeout."""
    clock = Clock()
    site = make_site(clock)
    protocol, transport = connect(site)
    protocol.dataReceived(head)
    assert status_line(transport) == b"HTTP/1.1 200 OK"
    clock.advance(3600)
    assert not transport.disconnecting


def test_idle_keep_alive_connection_still_times_out():
    """Without a stream, Twisted's idle timeout still closes a silent connection."""
    clock = Clock()
    site = make_site(clock)
    protocol, transport = connect(site)
    protocol.dataReceived(
        b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    assert status_line(transport) == b"HTTP/1.1 200 OK"
    clock.advance(site.timeOut + 1)  # type: ignore[operator]
    assert transport.disconnecting


def test_idle_timeout_comes_back_after_a_finished_stream():
    """A stream that ended (follow=0 style) gives the connection its idle timeout."""
    clock = Clock()
    site = make_site(clock)
    protocol, transport = connect(site)
    protocol.dataReceived(b"GET /consoleStream/vm1 HTTP/1.1\r\nHost: x\r\n\r\n")
    (request,) = site.inFlight
    request.finish()
    assert not transport.disconnecting
    clock.advance(site.timeOut + 1)  # type: ignore[operator]
    assert transport.disconnecting
