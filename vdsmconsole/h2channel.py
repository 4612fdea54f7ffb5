"""HTTP/2 on the port: Twisted's H2Connection, bounded per stream and calm
with hostile frames.

Twisted's HTTP/2 server, as it is, fails this server in four ways (issue 11;
each case and its test are in docs/reliability.rst):

- **Unbounded output.**  A stream's writes go into a per-stream queue, and
  its producer is paused only when the client's flow-control window is used
  up; pausing the connection does not pause its streams.  A client that
  advertises a huge window and stops reading made the server queue a
  follower's whole backlog (20 streams: 60 MB to 630 MB).  Here a stream
  whose unsent bytes (its queue plus the connection's transport buffer)
  pass ``[console] client_buffer_bytes`` has its producer paused, and it is
  resumed when the connection is writable and the queue is down to half.
- **Early answers.**  A stream POST is rendered as soon as its headers are in
  (see site.ConsoleRequest.dispatchEarly), which over HTTP/2 happens inside
  H2Stream's constructor, before the connection has made the stream's send
  queue: the first write raised KeyError and took the connection down.  The
  render now waits until the stream is set up (``callWhenSetUp``), and a
  response that ends while the client is still sending its body ends the
  stream with RST_STREAM NO_ERROR (RFC 9113 section 8.1), so that later DATA
  frames do not reach a stream Twisted has forgotten.
- **Events for streams that are gone.**  h2 reads a whole batch of frames
  before Twisted handles its events, so a stream opened and reset in one
  read (Rapid Reset) was rendered after h2 had closed it, and a RST_STREAM
  for a stream Twisted had finished raised KeyError.  Such events are
  dropped (the reset still counts against Twisted's Rapid Reset budget), and
  once the connection is closed nothing more is read: one GOAWAY, not one
  per read.
- **Limits.**  PRIORITY frames for streams that were never opened are kept
  for at most ``IDLE_PRIORITY_LIMIT`` streams (the priority tree refused a
  1001st with an exception); more is GOAWAY ENHANCE_YOUR_CALM.  PRIORITY
  for a closed stream is ignored (Twisted put it back in the tree for
  good).  A header block in HEADERS and 64 CONTINUATION frames (h2's
  limit) is ENHANCE_YOUR_CALM, as for an oversized header list, not
  PROTOCOL_ERROR.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections import deque
from collections.abc import Callable
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
from h2.frame_buffer import CONTINUATION_BACKLOG, FrameBuffer
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web._http2 import H2Connection, H2Stream

from vdsmconsole.tls import peer_address

__all__ = [
    "ConsoleH2Connection",
    "ConsoleH2Stream",
    "bound_send_buffer",
    "start_http2",
    "transport_buffered",
    "when_set_up",
]

log = Logger(namespace="vdsmconsole.h2channel")

DEFAULT_BOUND = 256 * 1024  # [console] client_buffer_bytes' default
# Streams the client has not opened that PRIORITY frames may name at once.
IDLE_PRIORITY_LIMIT = 100
CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def transport_buffered(transport: Any) -> int:
    """Bytes written to a connection that the kernel has not taken yet.

    Walks down the transports (TLS, then TCP): TLS holds cleartext only
    before its handshake; the TCP transport holds the ciphertext that did not
    fit into the socket.  (isinstance, not hasattr: TLS forwards unknown
    attributes to the transport below it.)
    """
    total = 0
    while transport is not None:
        if isinstance(transport, FileDescriptor):
            pending = len(transport.dataBuffer) - transport.offset
            return total + pending + transport._tempDataLen
        if isinstance(transport, TLSMemoryBIOProtocol):
            total += sum(len(b) for b in transport._appSendBuffer or ())
        transport = getattr(transport, "transport", None)
    return total


def bound_send_buffer(transport: Any, bound: int) -> None:
    """Pause a connection's producer once ``bound`` bytes wait to be sent.

    Twisted's TCP transport pauses its producer beyond ``bufferSize`` (64 KiB
    by default) and resumes it when the buffer is empty: that is what bounds
    an HTTP/1.1 follower, so ``client_buffer_bytes`` is its ``bufferSize``.
    """
    while transport is not None:
        if isinstance(transport, FileDescriptor):
            transport.bufferSize = bound
            return
        transport = getattr(transport, "transport", None)


_trim: Any = None  # glibc's malloc_trim, found once; False where there is none
_trimCall: Any = None
_trimmed = float("-inf")  # when it last ran (reactor seconds)
TRIM_INTERVAL = 1.0  # seconds: at most one trim per second, whoever asks


def give_back_memory(reactor: Any) -> None:
    """Hand the heap's free pages back to the system, soon.

    Output queued for a stalled client is freed when it goes, but into
    glibc's heap, where the 64 KiB pieces sit among live objects: the
    process keeps that RSS.  ``malloc_trim(0)`` releases the free pages (a
    few milliseconds for a heap of this size), at most once a second however
    many connections go; without glibc, nothing.
    """
    global _trim, _trimCall
    if _trim is None:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        _trim = getattr(libc, "malloc_trim", None) or False
    if not _trim or (_trimCall is not None and _trimCall.active()):
        return
    wait = max(0.0, _trimmed + TRIM_INTERVAL - reactor.seconds())
    _trimCall = reactor.callLater(wait, _run_trim, reactor)


def _run_trim(reactor: Any) -> None:
    global _trimmed
    _trimmed = reactor.seconds()
    _trim(0)


def start_http2(generic: Any) -> None:
    """Put a ConsoleH2Connection where Twisted would put its own H2Connection.

    ``generic`` is the site's ``_GenericHTTPChannelProtocol``; this runs
    before its first ``dataReceived``, and does what that does when ALPN
    picked ``h2`` (twisted.web.http), with this module's class.
    """
    if generic._negotiatedProtocol is not None:
        return
    old = generic._channel
    if getattr(old.transport, "negotiatedProtocol", None) != b"h2":
        return
    network = old._networkProducer
    network.unregisterProducer()
    old.setTimeout(None)
    site = generic._site
    conn: Any = ConsoleH2Connection(getattr(site, "reactor", None))
    if site is not None:
        conn.bufferBound = site.context.config.client_buffer_bytes
    conn.requestFactory = generic._requestFactory
    conn.site = site
    conn.factory = generic._factory
    conn.timeOut = generic._timeOut
    conn.callLater = generic._callLater
    generic._channel = conn
    generic._negotiatedProtocol = b"h2"
    conn.makeConnection(old.transport)
    network.registerProducer(conn, True)


def when_set_up(channel: Any, f: Callable[..., None], *args: Any) -> None:
    """Call ``f`` now, or, on an HTTP/2 stream, once the connection has set
    the stream up: HTTP/2 has the headers in inside H2Stream's constructor,
    before the stream can be written to."""
    later = getattr(channel, "callWhenSetUp", None)
    if later is not None:
        later(f, *args)
    else:
        f(*args)


class CalmFrameBuffer(FrameBuffer):  # type: ignore[misc]
    """h2's frame buffer, with a CONTINUATION flood told apart.

    h2 refuses a header block in over 64 frames with a plain
    ProtocolError (PROTOCOL_ERROR); it is a resource limit like the 64 KiB
    header list, which h2 answers ENHANCE_YOUR_CALM.
    """

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except h2.exceptions.DenialOfServiceError:
            raise
        except h2.exceptions.ProtocolError as e:
            if len(self._headers_buffer) > CONTINUATION_BACKLOG:
                raise h2.exceptions.DenialOfServiceError(str(e)) from e
            raise


class ConsoleH2Stream(H2Stream):  # type: ignore[misc]
    """A stream that renders once set up and pauses on a full send buffer."""

    def __init__(self, *args: Any) -> None:
        self._whenSetUp: list[tuple[Callable[..., None], tuple[Any, ...]]] | None = []
        self.bufferFull = False
        super().__init__(*args)

    def callWhenSetUp(self, f: Callable[..., None], *args: Any) -> None:
        """Call ``f`` once the connection has set this stream up (or now)."""
        if self._whenSetUp is None:
            f(*args)
        else:
            self._whenSetUp.append((f, args))

    def setUp(self) -> None:
        calls, self._whenSetUp = self._whenSetUp or [], None
        for f, args in calls:
            f(*args)

    def windowUpdated(self) -> None:
        if not self.bufferFull:  # else the drain resumes it
            super().windowUpdated()

    def pauseForBuffer(self) -> None:
        self.bufferFull = True
        if self.producer is not None and self._producerProducing:
            self._producerProducing = False
            self.producer.pauseProducing()

    def resumeForBuffer(self) -> None:
        self.bufferFull = False
        super().windowUpdated()  # resumes the producer if the window allows


class ConsoleH2Connection(H2Connection):  # type: ignore[misc]
    """Twisted's HTTP/2 connection with the fixes the module docstring lists."""

    bufferBound = DEFAULT_BOUND
    requestFactory: Any  # set by start_http2, as Twisted sets it

    def __init__(self, reactor: Any = None) -> None:
        super().__init__(reactor)
        self.conn.incoming_buffer = CalmFrameBuffer(server=True)
        self.closed = False
        self._bufferPaused: set[int] = set()
        self._heldBuffers = False  # a stream filled its buffer at some time
        self._idlePriority: set[int] = set()

    def connectionLost(
        self, reason: Failure = connectionDone, _cancelTimeouts: bool = True
    ) -> None:
        self.closed = True
        super().connectionLost(reason, _cancelTimeouts)
        if self._heldBuffers:
            self._heldBuffers = False
            give_back_memory(self._reactor)

    # -- reading -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Twisted's loop, minus events for streams that are already gone."""
        if self.closed:
            return  # after our GOAWAY: what the client still sends is moot
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._terminate(Failure())  # h2 has queued its GOAWAY
            return
        self.resetTimeout()
        # Streams the client reset in this same batch: h2 has closed them.
        reset = {e.stream_id for e in events if isinstance(e, h2.events.StreamReset)}
        for event in events:
            if self.closed:
                return
            if isinstance(event, h2.events.RequestReceived):
                if event.stream_id not in reset:
                    self._requestReceived(event)
            elif isinstance(event, h2.events.DataReceived):
                if event.stream_id in self.streams:
                    self._requestDataReceived(event)
                else:  # the connection window still counts these bytes
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            elif isinstance(event, h2.events.StreamEnded):
                if event.stream_id in self.streams:
                    self._requestEnded(event)
            elif isinstance(event, h2.events.StreamReset):
                self._requestAborted(event)
            elif isinstance(event, h2.events.WindowUpdated):
                self._handleWindowUpdate(event)
            elif isinstance(event, h2.events.PriorityUpdated):
                self._handlePriorityUpdate(event)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._close(Failure(ConnectionLost("Remote peer sent GOAWAY")))
                return
        self._tryToWriteControlData()

    def _requestReceived(self, event: h2.events.RequestReceived) -> None:
        """Twisted's, with ConsoleH2Stream, set up before it may render."""
        stream_id = event.stream_id
        self._forgetIdleStreams(stream_id)
        stream = ConsoleH2Stream(
            stream_id,
            self,
            event.headers,
            self.requestFactory,
            self.site,
            self.factory,
        )
        self.streams[stream_id] = stream
        self._streamCleanupCallbacks[stream_id] = Deferred()
        self._outboundStreamQueues[stream_id] = deque()
        if stream_id in self._idlePriority:
            self._idlePriority.discard(stream_id)  # PRIORITY put it in the tree
        else:
            self.priority.insert_stream(stream_id)
            self.priority.block(stream_id)
        stream.setUp()

    def _requestAborted(self, event: h2.events.StreamReset) -> None:
        if event.stream_id in self.streams:
            super()._requestAborted(event)
            return
        # Its response had ended, or it was reset in the batch that opened
        # it: nothing to abort, but it counts as Twisted's Rapid Reset
        # defence (CVE-2023-44487) counts every reset.
        now = self._reactor.seconds()
        elapsed = max(0.0, now - self._resetTokenTimestamp)
        self._resetTokens = min(
            self._resetTokenBurst,
            self._resetTokens + elapsed * self._resetTokenRate,
        )
        self._resetTokenTimestamp = now
        if self._resetTokens < 1:
            self._calmDown("too many stream resets")
        else:
            self._resetTokens -= 1

    def _handlePriorityUpdate(self, event: h2.events.PriorityUpdated) -> None:
        if event.stream_id is None or not self._admitPriority(event.stream_id):
            return
        parent = event.depends_on
        if parent and not self._admitPriority(parent):
            event.depends_on = 0  # on a closed stream: on the root instead
        if not self.closed:
            super()._handlePriorityUpdate(event)

    def _admitPriority(self, stream_id: int) -> bool:
        """Whether the priority tree may hold ``stream_id`` (open or idle)."""
        if stream_id in self.streams or stream_id in self._idlePriority:
            return True
        if stream_id <= self.conn.highest_inbound_stream_id:
            return False  # closed: nothing left to order
        if len(self._idlePriority) >= IDLE_PRIORITY_LIMIT:
            self._calmDown(f"PRIORITY for over {IDLE_PRIORITY_LIMIT} unopened streams")
            return False
        self._idlePriority.add(stream_id)
        return True

    def _forgetIdleStreams(self, opened: int) -> None:
        """Opening a stream closes every idle stream below it (RFC 9113 5.1.1)."""
        for stream_id in [i for i in self._idlePriority if i < opened]:
            self._idlePriority.discard(stream_id)
            self.priority.remove_stream(stream_id)

    def _terminate(self, reason: Failure) -> None:
        if self._tryToWriteControlData():  # else it was aborted
            self._close(reason)

    def _close(self, reason: Failure) -> None:
        """Close after what is queued, and be sure the close happens.

        TLS does not start its close while a producer is registered (it
        would wait for it to finish), so the connection lets go of it first,
        and writes the control frames (the GOAWAY) it held back while the
        transport was full, since nothing resumes it now; a client that
        never answers TLS's close is cut after ``abortTimeout`` (15 s), as
        Twisted does after an idle timeout.
        """
        transport: Any = self.transport
        transport.unregisterProducer()
        while self._bufferedControlFrames:  # at most 17 KiB (Twisted's cap)
            transport.write(self._bufferedControlFrames.popleft())
        self._bufferedControlFrameBytes = 0
        transport.loseConnection()
        if self._abortingCall is None and self.abortTimeout is not None:
            self._abortingCall = self.callLater(
                self.abortTimeout, self.forceAbortClient
            )
        self.connectionLost(reason, _cancelTimeouts=False)

    def _calmDown(self, why: str) -> None:
        """One GOAWAY ENHANCE_YOUR_CALM, then close."""
        if self.closed:
            return
        log.info(
            "closing an HTTP/2 connection from {peer}: {why}",
            peer=peer_address(self.transport),
            why=why,
        )
        self.conn.close_connection(error_code=CALM)
        self._terminate(Failure(ConnectionLost(why)))

    # -- writing -------------------------------------------------------------

    def _requestDone(self, streamID: int) -> None:
        super()._requestDone(streamID)
        self._bufferPaused.discard(streamID)
        if self.closed:
            return
        stream = self.conn.streams.get(streamID)
        if stream is not None and not stream.closed:
            # The response ended before the request body: stop the client
            # sending it (RFC 9113 8.1), so no DATA comes for a gone stream.
            self.conn.reset_stream(streamID, h2.errors.ErrorCodes.NO_ERROR)
            self._tryToWriteControlData()

    def writeDataToStream(self, streamID: int, data: bytes) -> None:
        super().writeDataToStream(streamID, data)
        stream = self.streams.get(streamID)
        if (
            isinstance(stream, ConsoleH2Stream)
            and not stream.bufferFull
            and self._queued(streamID) + transport_buffered(self.transport)
            > self.bufferBound
        ):
            self._bufferPaused.add(streamID)
            self._heldBuffers = True
            stream.pauseForBuffer()

    def _sendPrioritisedData(self, *args: Any) -> None:
        super()._sendPrioritisedData(*args)
        self._resumeDrained()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        self._resumeDrained()

    def _queued(self, streamID: int) -> int:
        queue = self._outboundStreamQueues.get(streamID, ())
        return sum(len(chunk) for chunk in queue if isinstance(chunk, bytes))

    def _resumeDrained(self) -> None:
        """Resume the streams paused for their buffer that have drained."""
        if not self._bufferPaused or self._consumerBlocked is not None:
            return  # the transport's own buffer is full: wait for it
        low = self.bufferBound // 2
        for stream_id in list(self._bufferPaused):
            stream = self.streams.get(stream_id)
            if stream is None:
                self._bufferPaused.discard(stream_id)
            elif self._queued(stream_id) <= low:
                self._bufferPaused.discard(stream_id)
                stream.resumeForBuffer()
