"""The plain parts of vdsmconsole.h2channel, without sockets."""

from __future__ import annotations

from typing import Any

import h2.exceptions
import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame
from twisted.internet.abstract import FileDescriptor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from vdsmconsole import h2channel


def tcp_under_a_wrapper() -> tuple[FileDescriptor, ProtocolWrapper]:
    """A TCP-like transport with a wrapper above it that forwards attributes,
    as TLS does."""
    tcp = FileDescriptor(reactor=MemoryReactor())
    wrapper = ProtocolWrapper(WrappingFactory(None), None)  # type: ignore[arg-type]
    wrapper.transport = tcp
    return tcp, wrapper


def test_bound_send_buffer_sets_the_tcp_transport_not_the_wrapper():
    """client_buffer_bytes lands on the transport that pauses (TCP), not on a
    wrapper that only forwards reads of it."""
    tcp, wrapper = tcp_under_a_wrapper()
    h2channel.bound_send_buffer(wrapper, 8 << 20)
    assert tcp.bufferSize == 8 << 20
    assert "bufferSize" not in vars(wrapper)


def test_transport_buffered_counts_what_tcp_holds():
    """Unsent bytes: the TCP buffer past what was sent, plus pending writes."""
    tcp, wrapper = tcp_under_a_wrapper()
    tcp.dataBuffer = b"x" * 1000
    tcp.offset = 400
    tcp._tempDataBuffer = [b"y" * 50]
    tcp._tempDataLen = 50
    assert h2channel.transport_buffered(wrapper) == 650
    assert h2channel.transport_buffered(None) == 0


def test_give_back_memory_runs_at_most_once_a_second(monkeypatch: Any):
    """However many connections go, the heap is trimmed once, then not again
    within a second."""
    calls: list[int] = []
    monkeypatch.setattr(h2channel, "_trim", calls.append)
    monkeypatch.setattr(h2channel, "_trimCall", None)
    monkeypatch.setattr(h2channel, "_trimmed", float("-inf"))
    clock = Clock()
    clock.advance(100)
    for _ in range(5):
        h2channel.give_back_memory(clock)
    clock.advance(0)
    assert calls == [0]
    h2channel.give_back_memory(clock)
    clock.advance(0.5)
    assert calls == [0]
    clock.advance(0.5)
    assert calls == [0, 0]


@pytest.mark.parametrize("nframes,calm", [(63, False), (64, True)])
def test_continuation_flood_is_a_denial_of_service_error(nframes, calm):
    """A header block in HEADERS and 64 CONTINUATION frames is h2's
    DenialOfServiceError (ENHANCE_YOUR_CALM), not a plain ProtocolError."""
    buffer = h2channel.CalmFrameBuffer(server=False)
    buffer.max_frame_size = 16384
    buffer.add_data(HeadersFrame(1, b"").serialize())
    buffer.add_data(ContinuationFrame(1, b"").serialize() * nframes)
    if calm:
        with pytest.raises(h2.exceptions.DenialOfServiceError):
            list(buffer)
    else:
        assert list(buffer) == []  # still waiting for END_HEADERS
