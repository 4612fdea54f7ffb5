"""A request body to the guest, chunk by chunk, with backpressure."""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from vdsmconsole.core.console import Console
from vdsmconsole.core.interfaces import SERVER_STOPPING, SourceState
from vdsmconsole.server.http.endings import StreamEnd, abort_stream, down_headers
from vdsmconsole.server.http.resources import end_with
from vdsmconsole.server.http.site import ConsoleRequest
from vdsmconsole.server.streams.follower import Follower
from vdsmconsole.status import no_vm_message

# The longest input chunk kept whole (see BodyWriter.bodyChunk).
WHOLE_CHUNK_BYTES = 64 * 1024


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
