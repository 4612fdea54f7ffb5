"""``SocketLink``, the relay's viewer side on a websocket, in memory: what it
holds before the websocket opens or the relay starts, why reading is
paused, what a refusal and a lost connection do (no reactor, no sockets)."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from vdsmconsole.server.websockets.graphics import SocketLink
from vdsmconsole.server.websockets.wire import SocketLimits


class FakeTransport:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.producer = None

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


class FakeRequest:
    """What SocketLink uses of a request: its channel, finish, an answer."""

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.channel = SimpleNamespace(transport=self.transport)
        self.finished_d: Deferred[None] = Deferred()
        self.code = 0
        self.body = b""
        self.finished = False
        self.startedWriting = False

    def notifyFinish(self) -> Deferred[None]:
        return self.finished_d

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.startedWriting = True
        self.body += data

    def finish(self) -> None:
        self.finished = True


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)


def test_writes_before_the_websocket_opens_are_sent_in_order_on_open():
    """What the relay writes before the handshake completes is held, then
    sent first, in order; every byte counts as sent."""
    link = SocketLink(FakeRequest(), SocketLimits())
    link.write(b"RFB ")
    link.write(b"003.008\n")
    socket = FakeSocket()
    link.opened(socket)  # type: ignore[arg-type]
    link.write(b"more")
    assert socket.sent == [b"RFB ", b"003.008\n", b"more"]
    assert link.sent == 16


def test_messages_before_the_relay_starts_are_held_then_passed_in_order():
    """Messages that come before ``start`` reach the sink first, in order."""
    link = SocketLink(FakeRequest(), SocketLimits())
    link.message(b"one")
    link.message(b"two")
    got: list[bytes] = []
    link.start(got.append)
    link.message(b"three")
    assert got == [b"one", b"two", b"three"]
    assert link.received == 11


def test_reading_resumes_only_when_every_reason_is_gone():
    """Two reasons to pause: the transport is paused once and resumed only
    after both are resumed; resuming an unknown reason does nothing."""
    request = FakeRequest()
    link = SocketLink(request, SocketLimits())
    link.pauseReading("endpoint")
    link.pauseReading("other")
    link.resumeReading("endpoint")
    link.resumeReading("never-paused")
    assert request.transport.calls == ["pause"]
    link.resumeReading("other")
    assert request.transport.calls == ["pause", "resume"]


def test_refusal_is_an_http_answer_before_the_upgrade_only():
    """Before the websocket: a plain HTTP answer with the code; once gone,
    nothing more is written and the lost-callbacks ran once."""
    request = FakeRequest()
    link = SocketLink(request, SocketLimits())
    link.refuse(502, "the rdp endpoint of VM vm1 refused or failed")
    assert (request.code, request.finished) == (502, True)
    assert b"refused or failed" in request.body
    lost: list[str] = []
    link.whenLost(lambda: lost.append("lost"))
    request.finished_d.errback(Failure(ConnectionLost()))
    link.write(b"late")
    link.whenLost(lambda: lost.append("after"))
    assert lost == ["lost", "after"]
    assert link.gone and link.sent == 0
