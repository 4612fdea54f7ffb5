"""A response's head and first body bytes leave in one transport write
(one TLS record, one send), and a head without a body is never held back."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import resource, server

from vdsmconsole.server.config import Config
from vdsmconsole.server.http.resources import Root
from vdsmconsole.server.http.site import ConsoleSite
from vdsmconsole.server.service import site_limits


class CountingTransport(StringTransport):
    """Counts the writes the channel makes (each would be a TLS record)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def writeSequence(self, seq: Any) -> None:
        self.writes += 1
        super().write(b"".join(seq))


class Answers(resource.Resource):
    """/RPC2 stand-in: POST answers with a body, GET with 204, PUT with
    headers at once and the body later (as a stream does)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.later: list[Any] = []

    def render_POST(self, request: Any) -> bytes:
        return b"<answer/>"

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(204)
        return b"ignored"

    def render_PUT(self, request: Any) -> Any:
        request.write(b"")
        self.later.append(request)
        return server.NOT_DONE_YET


def connect() -> tuple[Any, CountingTransport, Answers]:
    answers = Answers()
    site = ConsoleSite(
        Root(answers, lambda vm: answers), Clock(), site_limits(Config())
    )
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    protocol = site.buildProtocol(address)
    transport = CountingTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport, answers


def request(method: bytes, body: bytes = b"") -> bytes:
    return (
        method
        + b" /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )


def test_an_answer_is_one_write():
    """An RPC answer: status line, headers and body in a single write."""
    protocol, transport, _ = connect()
    protocol.dataReceived(request(b"POST", b"<call/>"))
    assert transport.writes == 1
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Length: 9" in head
    assert body == b"<answer/>"


def test_a_head_without_body_is_written_and_the_connection_goes_on():
    """204 (no body allowed): the head still goes out, nothing stays held,
    and the next request on the connection is answered whole."""
    protocol, transport, _ = connect()
    protocol.dataReceived(request(b"GET"))
    assert transport.value().startswith(b"HTTP/1.1 204 ")
    assert b"ignored" not in transport.value()
    transport.clear()
    transport.writes = 0
    protocol.dataReceived(request(b"POST", b"<call/>"))
    assert transport.writes == 1
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert transport.value().endswith(b"<answer/>")


def test_a_stream_head_goes_out_before_its_first_bytes():
    """write(b"") (a stream announcing itself) sends the head at once; the
    body's chunks follow as they come."""
    protocol, transport, answers = connect()
    protocol.dataReceived(request(b"PUT"))
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert transport.value().endswith(b"\r\n\r\n")
    answers.later[0].write(b"guest output")
    assert transport.value().endswith(b"c\r\nguest output\r\n")
