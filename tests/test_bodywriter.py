"""BodyWriter: a POST body reaches the guest chunk by chunk, each chunk whole.

The console is the real one on a FakeSource (vdsmconsole.testing) that
records each write the guest gets; the request is a stand-in with the few
parts BodyWriter uses (its channel's transport is Twisted's StringTransport,
which records pauses).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from twisted.internet.testing import StringTransport

from vdsmconsole.core.console import Console
from vdsmconsole.server.streams.input import WHOLE_CHUNK_BYTES, BodyWriter
from vdsmconsole.testing import FakeSource, make_console


class StandInRequest:
    isHTTP2 = False

    def __init__(self) -> None:
        self.channel = SimpleNamespace(transport=StringTransport())
        self.bodyConsumer = None
        self.finished = False
        self.headers: dict[bytes, bytes] = {}
        self.body = b""

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name] = value

    def write(self, data: bytes) -> None:
        self.body += data

    def finish(self) -> None:
        self.finished = True


def start_writer(console: Console) -> tuple[BodyWriter, StandInRequest]:
    request = StandInRequest()
    writer = BodyWriter(request, console, duplex=False, follower=None)
    writer.start()
    return writer, request


def test_a_chunk_split_in_pieces_reaches_the_guest_as_one_write() -> None:
    source = FakeSource()
    console = make_console(source)
    a, _ = start_writer(console)
    b, _ = start_writer(console)
    a.bodyChunk(b"AAAA", continues=True)
    b.bodyChunk(b"BB")
    a.bodyChunk(b"AAAA", continues=True)
    a.bodyChunk(b"AA")
    assert source.written == [b"BB", b"AAAAAAAAAA"]


def test_a_chunk_longer_than_the_bound_goes_on_in_pieces() -> None:
    """The server holds at most WHOLE_CHUNK_BYTES of a chunk per client."""
    source = FakeSource()
    writer, _ = start_writer(make_console(source))
    piece = b"x" * (WHOLE_CHUNK_BYTES // 4)
    for _ in range(4 * 3):
        writer.bodyChunk(piece, continues=True)
    assert len(writer.partial) < WHOLE_CHUNK_BYTES
    assert source.written
    assert all(len(w) <= WHOLE_CHUNK_BYTES for w in source.written)
    writer.bodyChunk(b"end")
    assert b"".join(source.written) == piece * 12 + b"end"


def test_the_answer_counts_every_byte_written() -> None:
    source = FakeSource()
    writer, request = start_writer(make_console(source))
    writer.bodyChunk(b"hello ", continues=True)
    writer.bodyChunk(b"world")
    writer.bodyEnded()
    assert request.finished
    assert json.loads(request.body) == {"written": 11}
    assert source.written == [b"hello world"]
