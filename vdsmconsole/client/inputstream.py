"""A request body that stays open: each ``write()`` is sent at once."""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
)
from twisted.web.iweb import (
    UNKNOWN_LENGTH,
    IBodyProducer,
)
from zope.interface import implementer

INPUT_BUFFER = 1024 * 1024  # what InputStream holds while the server pushes back


@implementer(IBodyProducer, IConsumer)
class InputStream:
    """A request body that stays open: each ``write()`` is sent at once.

    Created by ``ConsoleClient.open_input``.  While the connection pushes
    back (or before it is up) writes wait here, up to ``INPUT_BUFFER`` bytes;
    a push producer registered with ``registerProducer`` is paused instead
    of letting more pile up.  ``finish()`` ends the body; ``done`` fires with
    the server's ``written`` count, or fails.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, max_buffer: int = INPUT_BUFFER) -> None:
        self.max_buffer = max_buffer
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.dropped = 0
        self.paused = False
        self.stopped = False
        self.finishing = False
        self.done: defer.Deferred[int] = defer.Deferred()
        self._consumer: Any = None  # IConsumer
        self._body_done: defer.Deferred[None] = defer.Deferred()
        self._producer: Any = None  # IPushProducer

    @property
    def open(self) -> bool:
        """Whether writes can still reach the guest."""
        return not (self.stopped or self.finishing or self.done.called)

    # The caller's side
    def write(self, data: bytes) -> None:
        """Send ``data`` now, or as soon as the connection takes it."""
        if not data or not self.open:
            return
        if self._consumer is not None and not self.paused and not self.pending:
            self._consumer.write(data)
            return
        if self.pending_bytes + len(data) > self.max_buffer:
            self.dropped += len(data)
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self._producer is not None:
            self._producer.pauseProducing()

    def finish(self) -> None:
        """End the body once what is pending has gone out."""
        self.finishing = True
        self._flush()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        if not streaming:
            raise ValueError("InputStream takes push producers only")
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._producer = None

    # IBodyProducer: the HTTP client's side
    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        self._consumer = consumer
        self._flush()
        return self._body_done

    def pauseProducing(self) -> None:
        self.paused = True
        if self._producer is not None:
            self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self._flush()
        if self._producer is not None and not self.pending:
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self.stopped = True
        self.pending.clear()
        self.pending_bytes = 0
        if self._producer is not None:
            self._producer.stopProducing()

    def _flush(self) -> None:
        if self._consumer is None or self.stopped:
            return
        while self.pending and not self.paused:
            data = self.pending.popleft()
            self.pending_bytes -= len(data)
            self._consumer.write(data)
        if self.finishing and not self.pending and not self._body_done.called:
            self._body_done.callback(None)
