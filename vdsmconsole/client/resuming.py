"""Following a console across lost connections, from the last offset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from vdsmconsole.backoff import Backoff
from vdsmconsole.client.api import ConsoleClient
from vdsmconsole.client.errors import (
    BeyondEnd,
    ClientError,
    ConnectError,
    ConnectionLost,
    ConsoleUnavailable,
    CredentialsError,
    HTTPError,
    NoSuchConsole,
    TLSError,
)
from vdsmconsole.client.stream import Stream
from vdsmconsole.status import no_vm_message
from vdsmconsole.streamend import StreamEnd


class ResumingFollow:
    """Follow a console for as long as it exists, across lost connections.

    ``start()`` attaches (its failure is the caller's to report: nothing is
    retried before the first attach).  After that a lost or ended stream is
    re-requested with backoff (``initial_delay`` doubling to ``max_delay``)
    from the last offset received, so nothing still retained is missed and
    what is no longer retained is counted: ``on_lost(error)`` is called once
    when the connection goes (or the server stops), ``on_resumed(stream,
    lost)`` when it is back.  ``done`` fires when ``stop()`` is called, or
    fails with the error that makes resuming pointless: ``NoSuchConsole``
    (the console was destroyed), ``ConsoleUnavailable`` (its guest is gone
    for good and everything retained was received), TLS refused.
    """

    RETRIED = (ConnectError, ConnectionLost, ConsoleUnavailable, HTTPError)

    def __init__(
        self,
        client: ConsoleClient,
        vm_id: str,
        on_data: Callable[[bytes], object],
        *,
        offset: int | None = None,
        tail: int | None = None,
        on_lost: Callable[[ClientError], object] | None = None,
        on_resumed: Callable[[Stream, int], object] | None = None,
        initial_delay: float = 0.25,
        max_delay: float = 5.0,
    ) -> None:
        self.client = client
        self.vm_id = vm_id
        self.on_data = on_data
        self.first_offset = offset
        self.first_tail = tail
        self.on_lost = on_lost
        self.on_resumed = on_resumed
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self._offset: int | None = None
        self.lost = 0
        self.stream: Stream | None = None
        self.stopped = False
        self.done: defer.Deferred[None] = defer.Deferred()
        self._retry: Any = None  # IDelayedCall
        self._backoff = Backoff(initial_delay, max_delay)
        self._attempt: defer.Deferred[Stream] | None = None

    @property
    def connected(self) -> bool:
        return self.stream is not None

    @property
    def offset(self) -> int | None:
        """The absolute offset of the next byte (None before the first attach)."""
        return self.stream.offset if self.stream is not None else self._offset

    def start(self) -> defer.Deferred[Stream]:
        """Attach for the first time; fires with the stream."""
        d = self.client.follow(
            self.vm_id, self.on_data, offset=self.first_offset, tail=self.first_tail
        )
        return d.addCallback(self._attached)

    def stop(self) -> None:
        """Stop following; ``done`` fires."""
        if self.stopped:
            return
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._attempt is not None:
            self._attempt.cancel()
        if self.stream is not None:
            self.stream.close()
        if not self.done.called:
            self.done.callback(None)

    def _attached(self, stream: Stream) -> Stream:
        self.stream = stream
        self._offset = stream.start_offset
        self.lost += stream.lost
        self._backoff.reset()
        stream.done.addBoth(self._ended, stream)
        return stream

    def _ended(self, result: Any, stream: Stream) -> None:
        if stream is not self.stream:
            return
        self._offset = stream.offset
        self.stream = None
        if self.stopped:
            return
        final = self._final_error(stream) if not isinstance(result, Failure) else None
        if final is not None:
            # The server said the console is gone: no resuming, no "lost".
            self.stopped = True
            if not self.done.called:
                self.done.errback(final)
            return
        reason = (
            result.value
            if isinstance(result, Failure) and isinstance(result.value, ClientError)
            else ConnectionLost(f"console stream from {self.client.where} ended")
        )
        if self.on_lost is not None:
            self.on_lost(reason)
        self._schedule(0.0)

    def _final_error(self, stream: Stream) -> ClientError | None:
        """The error a cleanly ended stream leaves to report, if it is final."""
        if stream.end is StreamEnd.DESTROYED:
            return NoSuchConsole(404, no_vm_message(self.vm_id))
        if stream.end is StreamEnd.DOWN:
            return ConsoleUnavailable(503, f"console {self.vm_id} is down")
        return None

    def _schedule(self, delay: float) -> None:
        self._retry = self.client.reactor.callLater(delay, self._reattach)

    def _reattach(self) -> None:
        self._retry = None
        expected = self.offset
        self._attempt = self.client.follow(self.vm_id, self.on_data, offset=expected)
        self._attempt.addCallbacks(
            self._reattached, self._reattach_failed, errbackArgs=(expected,)
        )

    def _reattached(self, stream: Stream) -> None:
        self._attempt = None
        if self.stopped:
            stream.close()
            return
        self._attached(stream)
        if self.on_resumed is not None:
            self.on_resumed(stream, stream.lost)

    def _reattach_failed(self, reason: Failure, expected: int | None) -> None:
        self._attempt = None
        if self.stopped:
            return
        if reason.check(BeyondEnd) and expected is not None:
            # The server has less than we saw (it lost its newest bytes in a
            # crash): go on from its end; the caller sees the smaller offset.
            self._offset = None
            self._attempt = self.client.follow(self.vm_id, self.on_data)
            self._attempt.addCallbacks(
                self._reattached, self._reattach_failed, errbackArgs=(None,)
            )
            return
        if reason.check(NoSuchConsole, TLSError, CredentialsError) or not reason.check(
            *self.RETRIED
        ):
            self.stopped = True
            if not self.done.called:
                self.done.errback(reason)
            return
        self._schedule(self._backoff.next_delay())
