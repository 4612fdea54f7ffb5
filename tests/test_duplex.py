"""The duplex request's own HTTP/1.1 speaker, over an in-memory transport.

``_DuplexProtocol`` writes the request head and each ``write()`` as a chunk,
and parses the response: its head (status, ``X-Console-*``), then a chunked
body for ``on_data``, or a refusal's body for the caller's ``describe``.
Bytes arrive in pieces of every size, as TCP may cut them.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from vdsmconsole.client.duplex import MAX_HEAD, DuplexStream, _DuplexProtocol
from vdsmconsole.streamend import StreamEnd

HEAD = b"POST /consoleStream/vm1?duplex=1 HTTP/1.1\r\nHost: h:1\r\n\r\n"
OK = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    b"X-Console-Offset: 4096\r\nX-Console-Lost: 7\r\n\r\n"
)


class Refused(Exception):
    pass


class Lost(Exception):
    pass


class Exchange:
    """One protocol on a StringTransport, recording what it reports."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.protocol = _DuplexProtocol(
            HEAD,
            "vm1",
            self.output.extend,
            describe=lambda code, body, end: Refused(code, body, end),
            lost=lambda reason: Lost(reason.getErrorMessage()),
        )
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.started: list[Any] = []
        self.protocol.started.addBoth(self.started.append)

    def feed(self, data: bytes, piece: int) -> None:
        for i in range(0, len(data), piece):
            self.protocol.dataReceived(data[i : i + piece])

    @property
    def stream(self) -> DuplexStream:
        (result,) = self.started
        assert isinstance(result, DuplexStream), result
        return result

    def failure(self) -> BaseException:
        (result,) = self.started
        assert isinstance(result, Failure), result
        return result.value


def test_the_request_head_goes_out_at_once():
    """connectionMade writes the request head, nothing else."""
    assert Exchange().transport.value() == HEAD


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_head_then_chunked_output_then_the_end(piece):
    """The stream starts with the head's offsets; chunks reach on_data decoded;
    the last chunk ends the stream cleanly and hangs up."""
    exchange = Exchange()
    exchange.feed(OK + b"5\r\nhello\r\n3\r\n, w\r\n", piece)
    stream = exchange.stream
    assert (stream.start_offset, stream.lost) == (4096, 7)
    assert exchange.output == b"hello, w"
    assert (stream.received, stream.offset) == (8, 4104)
    done: list[Any] = []
    stream.done.addBoth(done.append)
    exchange.feed(b"0\r\n\r\n", piece)
    assert done == [stream]
    assert exchange.transport.disconnecting


def test_writes_are_chunks_and_finish_is_the_last_chunk():
    """write() sends one chunk each, finish() the empty chunk; a write after
    finish() raises, as does a write of text."""
    exchange = Exchange()
    exchange.feed(OK, 1000)
    stream = exchange.stream
    exchange.transport.clear()
    stream.write(b"ls\r")
    stream.write(b"")
    stream.finish()
    assert exchange.transport.value() == b"3\r\nls\r\r\n0\r\n\r\n"
    with pytest.raises(ValueError):
        stream.write(b"x")
    with pytest.raises(TypeError):
        stream.write("x")  # type: ignore[arg-type]


@pytest.mark.parametrize("piece", [1, 1000])
def test_a_refusal_with_a_body_is_described(piece):
    """A 404 (or any non-200) with Content-Length: the caller's describe()
    gets the code and exactly that body; the connection is dropped."""
    exchange = Exchange()
    body = b"no such console\n"
    exchange.feed(
        b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%sjunk"
        % (len(body), body),
        piece,
    )
    assert exchange.failure().args == (404, body, None)
    assert exchange.transport.disconnecting


def test_a_refusal_without_a_length_is_described_when_the_connection_ends():
    """A refusal whose body ends with the connection: described with what came."""
    exchange = Exchange()
    exchange.feed(b"HTTP/1.1 503 Service Unavailable\r\n\r\ndown", 1000)
    assert exchange.started == []
    exchange.protocol.connectionLost(Failure(ConnectionError("closed")))
    assert exchange.failure().args == (503, b"down", None)


def test_an_endless_refusal_without_a_length_is_cut_at_max_head():
    """A refusal's text that never ends is not kept past MAX_HEAD: described
    with its first MAX_HEAD bytes, and the connection dropped."""
    exchange = Exchange()
    exchange.feed(b"HTTP/1.1 502 Bad Gateway\r\n\r\n", 1000)
    exchange.feed(b"x" * (MAX_HEAD + 4096), 4096)
    assert exchange.failure().args == (502, b"x" * MAX_HEAD, None)
    assert exchange.transport.disconnecting
    exchange.feed(b"x" * MAX_HEAD, 4096)  # until the close: dropped
    assert len(exchange.protocol._buffer) <= MAX_HEAD + 4096


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"garbage\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nX-Console-Offset: x\r\n\r\n", "bad X-Console-* header"),
        (b"x" * (MAX_HEAD + 1), "response head too long"),
    ],
)
def test_a_malformed_head_fails_the_start(data, message):
    """A status line without a code, a bad offset header, an endless head:
    the start fails with a ValueError saying which (the caller describes it)."""
    exchange = Exchange()
    exchange.feed(data, 4096)
    error = exchange.failure()
    assert isinstance(error, ValueError) and message in str(error)


def test_a_malformed_body_ends_the_stream_with_the_loss():
    """Chunked framing that breaks mid-stream ends it through lost()."""
    exchange = Exchange()
    exchange.feed(OK + b"zz\r\n", 1000)
    done: list[Any] = []
    exchange.stream.done.addBoth(done.append)
    (failure,) = done
    assert isinstance(failure, Failure) and failure.check(Lost)
    assert "malformed chunked response" in str(failure.value)


def test_close_leaves_and_the_stream_ends_cleanly():
    """close() drops the connection; its loss then ends the stream, not as an
    error, and output that still arrives is not handed on."""
    exchange = Exchange()
    exchange.feed(OK, 1000)
    stream = exchange.stream
    done: list[Any] = []
    stream.done.addBoth(done.append)
    stream.close()
    assert exchange.transport.disconnecting
    exchange.feed(b"3\r\nabc\r\n", 1000)
    assert exchange.output == b""
    exchange.protocol.connectionLost(Failure(ConnectionError("closed")))
    assert done == [stream]


def test_the_end_reason_comes_from_the_trailer_or_the_refusal():
    """A clean end's X-Console-End trailer sets stream.end; a 503's
    X-Console-End header reaches describe()."""
    exchange = Exchange()
    exchange.feed(OK + b"2\r\nhi\r\n0\r\nX-Console-End: destroyed\r\n\r\n", 5)
    assert exchange.stream.end is StreamEnd.DESTROYED
    refused = Exchange()
    refused.feed(
        b"HTTP/1.1 503 Service Unavailable\r\nX-Console-End: stopping\r\n"
        b"Content-Length: 0\r\n\r\n",
        1000,
    )
    assert refused.failure().args == (503, b"", StreamEnd.STOPPING)
