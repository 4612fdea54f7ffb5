"""Console streams over HTTP: GET follows, POST types, duplex does both.

``GET /consoleStream/<vmId>`` registers a ``Follower`` as the response's push
producer.  The follower holds a cursor (an absolute offset) into what the
console retains and pulls from it while the client keeps up; when the
client's connection pushes back, the cursor simply stops moving.  So the
server never holds more for one client than ``[console]
client_buffer_bytes`` and one chunk beyond what it retains anyway (per
stream over HTTP/2: see h2channel.py), and a client that falls behind
everything retained has its response ended (its next request with its last
offset learns what it lost).

``POST`` is rendered as soon as the headers are in (see
``ConsoleRequest.dispatchEarly``): a ``BodyWriter`` hands each body chunk to
the guest as it arrives, and when the guest stops taking input it stops
reading the client (TCP backpressure on HTTP/1.1, flow control on HTTP/2).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web import resource, server
from zope.interface import implementer

from vdsmconsole.authz import stream_permission
from vdsmconsole.console import SERVER_STOPPING
from vdsmconsole.endings import (
    END_HEADER,
    StreamEnd,
    abort_stream,
    down_headers,
    end_stream,
)
from vdsmconsole.interfaces import SourceState
from vdsmconsole.routes import is_stream_target
from vdsmconsole.site import MethodsMixin
from vdsmconsole.spec import is_valid_vm_id
from vdsmconsole.status import no_vm_message
from vdsmconsole.tls import ANONYMOUS

if TYPE_CHECKING:
    from vdsmconsole.console import Console
    from vdsmconsole.server import ServerContext
    from vdsmconsole.site import ConsoleRequest, ConsoleSite, Root

log = Logger(namespace="vdsmconsole.streams")

CHUNK = 64 * 1024  # the most one write to a client carries
# The longest input chunk kept whole (see BodyWriter.bodyChunk).
WHOLE_CHUNK_BYTES = 64 * 1024


# -- the query: pure -----------------------------------------------------------


class QueryError(ValueError):
    """A stream query parameter is malformed (400)."""


@dataclass(frozen=True)
class StreamQuery:
    offset: int | None = None
    tail: int | None = None
    follow: bool = True
    duplex: bool = False


def _non_negative(name: str, values: list[bytes]) -> int:
    if len(values) != 1 or not values[0].isdigit() or len(values[0]) > 20:
        raise QueryError(f"{name} must be a non-negative integer")
    return int(values[0])


def _flag(name: str, values: list[bytes]) -> bool:
    if len(values) != 1 or values[0] not in (b"0", b"1"):
        raise QueryError(f"{name} must be 0 or 1")
    return values[0] == b"1"


def parse_stream_query(args: dict[bytes, list[bytes]]) -> StreamQuery:
    unknown = set(args) - {b"offset", b"tail", b"follow", b"duplex"}
    if unknown:
        name = sorted(unknown)[0].decode("utf-8", "replace")
        raise QueryError(f"unknown parameter {name!r}")
    offset = _non_negative("offset", args[b"offset"]) if b"offset" in args else None
    tail = _non_negative("tail", args[b"tail"]) if b"tail" in args else None
    if offset is not None and tail is not None:
        raise QueryError("give offset or tail, not both")
    follow = _flag("follow", args[b"follow"]) if b"follow" in args else True
    duplex = _flag("duplex", args[b"duplex"]) if b"duplex" in args else False
    return StreamQuery(offset=offset, tail=tail, follow=follow, duplex=duplex)


class BeyondEnd(ValueError):
    """The requested offset is past the end of the console (416)."""


def resolve_start(query: StreamQuery, first: int, end: int) -> tuple[int, int]:
    """Where a stream starts, and how many requested bytes are already gone."""
    if query.offset is not None:
        if query.offset > end:
            raise BeyondEnd(f"offset {query.offset} is beyond the end {end}")
        if query.offset < first:
            return first, first - query.offset
        return query.offset, 0
    if query.tail is not None:
        return max(first, end - query.tail), 0
    if not query.follow:
        return first, 0
    return end, 0


# -- HTTP plumbing ----------------------------------------------------------


def pause_body(request: ConsoleRequest) -> None:
    """Stop reading the client's body: flow control on h2, TCP on HTTP/1.1."""
    if request.isHTTP2:
        request.channel.pauseProducing()
    elif request.channel is not None and request.channel.transport is not None:
        request.channel.transport.pauseProducing()


def resume_body(request: ConsoleRequest) -> None:
    if request.isHTTP2:
        request.channel.resumeProducing()
    elif request.channel is not None and request.channel.transport is not None:
        request.channel.transport.resumeProducing()


def answer(
    request: Any, code: int, message: str, headers: dict[bytes, bytes] | None = None
) -> bytes:
    """A short text/plain answer (for render_* to return)."""
    body = message.encode("utf-8") + b"\n"
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % len(body))
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    return body


def end_with(
    request: Any, code: int, message: str, headers: dict[bytes, bytes] | None = None
) -> None:
    """Answer and finish a request that is already rendering asynchronously."""
    if request.finished or getattr(request, "_disconnected", False):
        return
    if not request.startedWriting:
        request.write(answer(request, code, message, headers))
    request.finish()


# -- following ---------------------------------------------------------------


@implementer(IPushProducer)
class Follower:
    """Streams a console's output to one response, from its own cursor."""

    def __init__(
        self, request: Any, console: Console, start: int, follow: bool
    ) -> None:
        self.request = request
        self.console = console
        self.start_offset = start
        self.cursor = start
        self.limit = None if follow else console.end
        self.sent = 0
        self.paused = False
        self.done = False
        self._pumping = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.console.subscribe(self)
        self.pump()

    # Subscriber
    def dataAvailable(self) -> None:
        self.pump()

    def consoleDown(self) -> None:
        self.pump()  # ends the response once the client has what is retained

    def consoleClosed(self, why: str) -> None:
        if why == SERVER_STOPPING:
            self.stop()
            abort_stream(self.request)
        else:
            self.end(StreamEnd.DESTROYED)

    # IPushProducer
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.pump()

    def stopProducing(self) -> None:
        self.stop()

    def pump(self) -> None:
        """Write what the client has not seen, until it pushes back."""
        if self._pumping:
            return  # a write made the transport resume us: the loop goes on
        self._pumping = True
        console = self.console
        ring = console.ring
        try:
            while not self.paused and not self.done:
                end = ring.end if self.limit is None else self.limit
                cursor = self.cursor
                if cursor >= end:
                    if self.limit is not None:
                        self.end(StreamEnd.COMPLETE)
                    elif console.state == SourceState.DOWN and not console.closed:
                        self.end(StreamEnd.DOWN)  # nothing more will come
                    return
                want = min(CHUNK, end - cursor)
                # The hot path (a follower keeping up) reads the ring straight;
                # the console falls back to its log for older offsets.
                if cursor >= ring.start:
                    result = ring.read(cursor, want)
                else:
                    result = console.read(cursor, want)
                if result.lost:
                    # Fell behind everything retained: end; a resume is told.
                    self.console.count_lost(result.lost)
                    log.info(
                        "console {vm}: a follower fell {n} bytes behind; ending it",
                        vm=self.console.vm_id,
                        n=result.lost,
                    )
                    self.end(StreamEnd.BEHIND)
                    return
                self.cursor = result.offset + len(result.data)
                self.sent += len(result.data)
                self.request.write(result.data)
        finally:
            self._pumping = False

    def end(self, why: StreamEnd) -> None:
        """End the response cleanly, saying why (see endings.py)."""
        if not self.done:
            self.stop()
            end_stream(self.request, why)

    def stop(self) -> None:
        """Send no more; the response is left as it is."""
        if self.done:
            return
        self.done = True
        self.console.unsubscribe(self)


# -- typing ----------------------------------------------------------------


@implementer(IPushProducer)
class BodyWriter:
    """Hands a request body to the guest chunk by chunk, with backpressure.

    At most the chunks already read from the client wait here while the guest
    does not take input; reading the client stops until they are through.
    """

    def __init__(
        self, request: Any, console: Console, duplex: bool, follower: Follower | None
    ) -> None:
        self.request = request
        self.console = console
        self.duplex = duplex
        self.follower = follower
        self.pending: deque[bytes] = deque()
        # The start of a chunk whose rest has not arrived yet.
        self.partial = bytearray()
        self.written = 0
        self.blocked = False
        self.body_paused = False
        self.body_ended = False
        self.done = False

    def start(self) -> None:
        self.console.add_writer(self)
        self.request.bodyConsumer = self

    # From the request
    def bodyChunk(self, data: bytes, continues: bool = False) -> None:
        """A piece of the body; ``continues``: the rest of its chunk is to come.

        A chunk goes to the guest whole, in one write, so that writes from
        several clients interleave chunk by chunk and never split one (the
        contract); a chunk longer than WHOLE_CHUNK_BYTES goes on in pieces of
        that size, so that a client cannot make the server hold more.
        """
        if self.done or not data:
            return
        partial = self.partial
        if continues and len(partial) + len(data) < WHOLE_CHUNK_BYTES:
            partial += data
            return
        if partial:
            data = bytes(partial) + data
            partial.clear()
        self.pending.append(data)
        self._flush()

    def bodyEnded(self) -> None:
        self.body_ended = True
        self._flush()

    # From the console (IPushProducer: the guest's input side pushes back)
    def pauseProducing(self) -> None:
        self.blocked = True

    def resumeProducing(self) -> None:
        self.blocked = False
        self._flush()

    def stopProducing(self) -> None:
        self.stop()

    def consoleDown(self) -> None:
        self._guest_gone(StreamEnd.DOWN)

    def consoleClosed(self, why: str) -> None:
        if why == SERVER_STOPPING:
            self.stop()
            abort_stream(self.request)
        else:
            self._guest_gone(StreamEnd.DESTROYED)

    def _flush(self) -> None:
        console = self.console
        while self.pending and not self.blocked and not self.done:
            if console.closed or console.source.state is SourceState.DOWN:
                gone = StreamEnd.DESTROYED if console.closed else StreamEnd.DOWN
                self._guest_gone(gone)
                return
            if not console.write(self.pending[0]):
                break  # reconnecting: resumeProducing comes when it is back
            self.written += len(self.pending.popleft())
        if self.done:
            return
        if self.pending or self.blocked:
            if not self.body_paused:
                self.body_paused = True
                pause_body(self.request)
            return
        if self.body_ended:
            self._complete()
        elif self.body_paused:
            self.body_paused = False
            resume_body(self.request)

    def _complete(self) -> None:
        if self.duplex:
            return  # output keeps flowing until the client leaves
        self.stop()
        body = json.dumps({"written": self.written}).encode() + b"\n"
        if not self.request.finished:
            self.request.setHeader(b"content-type", b"application/json")
            self.request.setHeader(b"content-length", b"%d" % len(body))
            self.request.write(body)
            self.request.finish()

    def _guest_gone(self, why: StreamEnd) -> None:
        if self.done:
            return
        self.stop()
        vm_id = self.console.vm_id
        if self.follower is not None:
            # A duplex: its output ends the response (a down guest's once the
            # client has what is retained).
            if why is StreamEnd.DESTROYED:
                self.follower.end(why)
            return
        if why is StreamEnd.DESTROYED:
            end_with(self.request, 404, no_vm_message(vm_id))
        else:
            end_with(self.request, 503, f"console {vm_id} is down", down_headers())

    def stop(self) -> None:
        if self.done:
            return
        self.done = True
        self.pending.clear()
        self.console.remove_writer(self)


# -- the resource ---------------------------------------------------------------


class ConsoleStreamResource(MethodsMixin, resource.Resource):
    isLeaf = True

    def __init__(self, context: ServerContext, vm_id: bytes) -> None:
        super().__init__()
        self.context = context
        self.raw_vm_id = vm_id

    def _console(self) -> Console | None:
        try:
            vm_id = self.raw_vm_id.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not is_valid_vm_id(vm_id):
            return None
        return self.context.registry.find(vm_id)  # type: ignore[no-any-return]

    def _start(self, request: Any, console: Console, query: StreamQuery) -> int | None:
        """Headers for a stream; returns its start offset, or None after an error."""
        try:
            start, lost = resolve_start(query, console.first_offset, console.end)
        except BeyondEnd as e:
            request.write(answer(request, 416, str(e)))
            request.finish()
            return None
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-console-offset", b"%d" % start)
        request.setHeader(b"trailer", END_HEADER)
        if lost:
            request.setHeader(b"x-console-lost", b"%d" % lost)
        return start

    def _query(self, request: Any) -> StreamQuery | bytes:
        try:
            return parse_stream_query(request.args)
        except QueryError as e:
            return answer(request, 400, str(e))

    def _denied(self, request: Any) -> bytes | None:
        """403 unless the peer's role allows this method (and an audit line)."""
        identity = getattr(request, "peerIdentity", ANONYMOUS)
        if self.context.authz.allows(identity, stream_permission(request.method)):
            return None
        self.context.audit.record(
            "denied",
            identity,
            vmId=self.raw_vm_id.decode("utf-8", "replace"),
            method=request.method.decode("ascii", "replace"),
        )
        return answer(request, 403, f"{identity} may not do that")

    def _admit(self, request: Any) -> tuple[Console, StreamQuery] | bytes:
        """The console and query of a stream request, or the error to answer."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        console = self._console()
        if console is None:
            vm_id = self.raw_vm_id.decode("utf-8", "replace")
            return answer(
                request, 404, no_vm_message(vm_id if is_valid_vm_id(vm_id) else "")
            )
        query = self._query(request)
        if isinstance(query, bytes):
            return query
        return console, query

    def render_HEAD(self, request: Any) -> bytes:
        admitted = self._admit(request)
        if isinstance(admitted, bytes):
            return admitted
        console, _ = admitted
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"x-console-offset", b"%d" % console.end)
        return b""

    def render_GET(self, request: Any) -> Any:
        admitted = self._admit(request)
        if isinstance(admitted, bytes):
            return admitted
        console, query = admitted
        if query.duplex:
            return answer(request, 400, "duplex=1 needs POST")
        start = self._start(request, console, query)
        if start is None:
            return server.NOT_DONE_YET
        follower = Follower(request, console, start, query.follow)
        self._audit(request, console, "follow", follower, None)
        # Headers go out at once, before the guest says anything.
        request.write(b"")
        follower.start()
        return server.NOT_DONE_YET

    def render_POST(self, request: Any) -> Any:
        admitted = self._admit(request)
        if isinstance(admitted, bytes):
            return admitted
        console, query = admitted
        if console.closed or console.state == SourceState.DOWN:
            return answer(
                request, 503, f"console {console.vm_id} is down", down_headers()
            )
        follower = None
        if query.duplex:
            start = self._start(request, console, query)
            if start is None:
                return server.NOT_DONE_YET
            follower = Follower(request, console, start, follow=True)
        writer = BodyWriter(request, console, query.duplex, follower)
        self._audit(
            request, console, "duplex" if query.duplex else "send", follower, writer
        )
        writer.start()
        if follower is not None:
            request.write(b"")  # headers at once
            follower.start()
        return server.NOT_DONE_YET

    # curl -T - sends PUT: the same as POST for a console.
    render_PUT = render_POST

    def _audit(
        self,
        request: Any,
        console: Console,
        mode: str,
        follower: Follower | None,
        writer: BodyWriter | None,
    ) -> None:
        identity = getattr(request, "peerIdentity", "-")
        audit = self.context.audit
        fields: dict[str, Any] = {"vmId": console.vm_id, "mode": mode}
        if follower is not None:
            fields["offset"] = follower.start_offset
        audit.record("attach", identity, **fields)

        def detached(result: object) -> None:
            if follower is not None:
                follower.stop()
                fields["endOffset"] = follower.cursor
                fields["bytesSent"] = follower.sent
            if writer is not None:
                writer.stop()
                fields["bytesWritten"] = writer.written
            audit.record("detach", identity, **fields)

        request.notifyFinish().addBoth(detached)


def headers_received(request: ConsoleRequest) -> None:
    """A POST to a stream renders now: its body flows to the guest as it comes."""
    if request.earlyMethod in (b"POST", b"PUT") and is_stream_target(request.earlyPath):
        request.dispatchEarly()


def install_streams(site: ConsoleSite, root: Root, context: ServerContext) -> None:
    """Route /consoleStream/<vmId> and let stream POSTs take their bodies early."""
    root.streams = lambda vm_id: ConsoleStreamResource(context, vm_id)
    site.headersReceivedHook = headers_received
