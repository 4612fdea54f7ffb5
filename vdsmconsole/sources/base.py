"""What every source shares: its sink, its state, pausing, coalescing, stopping."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IPushProducer,
)
from twisted.logger import Logger
from zope.interface import implementer

from vdsmconsole.core.interfaces import SourceSink, SourceState
from vdsmconsole.sources.options import _DEFAULT_OPTIONS, Reactor, SourceOptions

# Named as when sources were one module: log filters keep working.
_log = Logger(namespace="vdsmconsole.sources")


# A sink that raises must not take the source down with it: a pty source that
# lost its fds can never come back.  Shared, as failureHandler advises, because
# sourceData is the hot path.
_sinkFailures = _log.failureHandler("while reporting to a console source's sink:")


@implementer(IPushProducer)
class _InputGate:
    """Registered on a write transport: its pause/resume say the guest's side
    is full/drained.  One per transport, dead once that transport is gone."""

    def __init__(self, source: _SourceBase) -> None:
        self._source = source
        self.active = True

    def pauseProducing(self) -> None:
        if self.active:
            self._source._inputPaused()

    def resumeProducing(self) -> None:
        if self.active:
            self._source._inputResumed()

    def stopProducing(self) -> None:
        # The transport is gone; the source hears of that through its own
        # connectionLost and decides what input pausing means then.
        self.active = False


class _SourceBase:
    """What all sources share: the sink, the state, pausing, stopping."""

    kind = ""

    def __init__(self, reactor: Reactor, options: SourceOptions | None = None) -> None:
        self._reactor = reactor
        self.state = SourceState.DOWN
        self._reason = "not started"
        self._lastError = ""
        self._sink: SourceSink | None = None
        self._stopping = False
        self._stopped = False
        self._stopWaiters: list[Deferred[None]] = []
        self._readingPaused = False
        self._inputIsPaused = False
        self._gate: _InputGate | None = None
        options = options or _DEFAULT_OPTIONS
        self._coalesceDelay = options.coalesce_delay
        self._smallRead = options.small_read
        self._interactiveWindow = options.interactive_window
        # Reading held back for a moment after a small read (see
        # SourceOptions.coalesce_delay), on top of pauseReading's pause.
        self._coalescing = False
        self._coalesceCall: Any = None
        # Input went to the guest since the last read: what comes back
        # answers it and is not held (what counts when the window is 0).
        self._inputSent = False
        # When input last went to the guest (reactor time): within
        # interactive_window of it, nothing is held.
        self._lastInput = float("-inf")
        # When the last data was read (reactor time): with its size, the
        # guest's rate, which decides whether holding back is worth it.
        self._lastData = float("-inf")

    @property
    def _holdReading(self) -> bool:
        """Whether the read side should be stopped now (for _applyReading)."""
        return self._readingPaused or self._coalescing

    # -- ConsoleSource

    def start(self, sink: SourceSink) -> None:
        if self._sink is not None or self._stopping:
            raise RuntimeError(f"{self!r} was already started or stopped")
        self._sink = sink
        self._start()

    def write(self, data: bytes) -> bool:
        transport = self._writeTransport()
        if self.state is not SourceState.CONNECTED or transport is None:
            return False
        if data:
            transport.write(data)
            # The guest will answer: read it as soon as it does, and all
            # that follows while someone is typing.
            self._inputSent = True
            self._lastInput = self._reactor.seconds()
            if self._coalescing:
                self._endCoalescing()
        return True

    def pauseReading(self) -> None:
        self._readingPaused = True
        self._applyReading()

    def resumeReading(self) -> None:
        self._readingPaused = False
        self._applyReading()

    def stop(self) -> Deferred[None]:
        if self._stopped:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._stopWaiters.append(waiter)
        if not self._stopping:
            # Say so once (a source already down keeps its reason), then
            # nothing more: whatever the teardown below reports (a lost
            # connection, a child's exit) is our own doing.
            if self.state is not SourceState.DOWN:
                self._setState(SourceState.DOWN, "stopped")
            self._stopping = True
            self._endCoalescing()
            self._stop()
        return waiter

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"type": self.kind}
        facts.update(self._target())
        facts.update(
            state=self.state.value, reason=self._reason, lastError=self._lastError
        )
        facts.update(self._moreFacts())
        return facts

    # -- what each kind provides

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        """Tear down, then call _stopDone (now or later)."""
        raise NotImplementedError

    def _writeTransport(self) -> Any:
        """Where input goes now, or None."""
        raise NotImplementedError

    def _applyReading(self) -> None:
        """Make the current read side match _holdReading."""
        raise NotImplementedError

    def _target(self) -> dict[str, Any]:
        raise NotImplementedError

    def _moreFacts(self) -> dict[str, Any]:
        return {}

    # -- helpers for the kinds

    def _stopDone(self) -> None:
        self._stopped = True
        self._sink = None
        waiters, self._stopWaiters = self._stopWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _emitData(self, data: bytes) -> None:
        if self._stopping or self._sink is None:
            return
        with _sinkFailures:
            self._sink.sourceData(data)
        now = self._reactor.seconds()
        since, self._lastData = now - self._lastData, now
        n = len(data)
        if self._inputSent:
            # An answer to input: the next bytes may be its rest, keep reading.
            self._inputSent = False
        elif (
            n < self._smallRead
            and self._coalesceDelay > 0
            # Nobody typed lately: no echo or answer is waiting on this.
            and now - self._lastInput >= self._interactiveWindow
            # A slow guest only: at the rate these bytes came, the guest
            # writes less than small_read while it is left unread, far from
            # filling the pty.  A busy guest that was merely caught up with
            # is read on at once, never held back.
            and n * self._coalesceDelay < since * self._smallRead
        ):
            self._startCoalescing()

    def _startCoalescing(self) -> None:
        """Leave the guest's output unread for coalesce_delay (see SourceOptions)."""
        if self._coalescing or self._stopping:
            return
        self._coalescing = True
        self._applyReading()
        self._coalesceCall = self._reactor.callLater(
            self._coalesceDelay, self._endCoalescing
        )

    def _endCoalescing(self) -> None:
        call, self._coalesceCall = self._coalesceCall, None
        if call is not None and call.active():
            call.cancel()
        if self._coalescing:
            self._coalescing = False
            if not self._stopping:
                self._readAfterHold()

    def _readAfterHold(self) -> None:
        """Reading may go on after a coalescing wait: by default, poll again."""
        self._applyReading()

    def _setState(self, state: SourceState, reason: str) -> None:
        if self._stopping:
            return
        self.state = state
        self._reason = reason
        if self._sink is None:
            _log.info(
                "{source}: {state}: {reason}", source=self, state=state, reason=reason
            )
        else:
            # The sink (a console) logs the change with its vmId: one line
            # a change, not two (a burst of creates logged each twice).
            with _sinkFailures:
                self._sink.sourceStateChanged(state, reason)

    def _inputPaused(self) -> None:
        if self._inputIsPaused or self._stopping:
            return
        self._inputIsPaused = True
        if self._sink is not None:
            with _sinkFailures:
                self._sink.sourceInputPaused()

    def _inputResumed(self) -> None:
        if not self._inputIsPaused or self._stopping:
            return
        self._inputIsPaused = False
        if self._sink is not None:
            with _sinkFailures:
                self._sink.sourceInputResumed()

    def _registerGate(self, transport: Any) -> None:
        """Map the write transport's buffer onto input paused/resumed."""
        self._dropGate()
        self._gate = _InputGate(self)
        transport.registerProducer(self._gate, True)
        # A fresh transport has an empty buffer: input flows again.  While
        # there was none, input stayed paused so that the console kept its
        # writers waiting rather than dropping what they sent.
        self._inputResumed()

    def _dropGate(self) -> None:
        # Transports tell their producer stopProducing when they go, but a
        # late pause from a dead transport must not pause the next one, so
        # the source does not rely on that.
        if self._gate is not None:
            self._gate.active = False
            self._gate = None

    def __repr__(self) -> str:
        target = ",".join(f"{k}={v}" for k, v in self._target().items())
        return f"<{type(self).__name__} {target} {self.state.value}>"
