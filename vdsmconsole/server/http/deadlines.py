"""The deadlines of one connection, over an injected clock (pure)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class HandshakeTimeout(Exception):
    """The TLS handshake did not complete in time (the TLS layer logs this)."""


class ConnectionDeadlines:
    """The deadlines of one connection: its TLS handshake, then request headers.

    Plain bookkeeping over an injected clock (``IReactorTime``): the
    connection says what happened (``handshakeDone``, ``requestStarted``,
    ``headersDone``) and ``expired("handshake" | "headers")`` is called when a
    deadline passes first.  The header deadline of the first request runs from
    the connection's start, so a client that completes TLS and then says
    nothing is closed too; for later requests it runs from their first byte.
    """

    def __init__(
        self,
        clock: Any,
        handshake_timeout: float,
        header_timeout: float,
        expired: Callable[[str], None],
    ) -> None:
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.header_timeout = header_timeout
        self._expired = expired
        self._handshake: Any = None  # IDelayedCall
        self._headers: Any = None
        self.handshakeComplete = False

    def start(self, tls: bool) -> None:
        if tls:
            self._handshake = self.clock.callLater(
                self.handshake_timeout, self._fire, "handshake"
            )
        else:
            self.handshakeComplete = True
        self.requestStarted()

    def handshakeDone(self) -> None:
        self.handshakeComplete = True
        self._handshake = _cancel(self._handshake)

    def requestStarted(self) -> None:
        if self._headers is None:
            self._headers = self.clock.callLater(
                self.header_timeout, self._fire, "headers"
            )

    def headersDone(self) -> None:
        self._headers = _cancel(self._headers)

    def stop(self) -> None:
        self._handshake = _cancel(self._handshake)
        self._headers = _cancel(self._headers)

    def _fire(self, which: str) -> None:
        if which == "handshake":
            self._handshake = None
        else:
            self._headers = None
        if not self.handshakeComplete:
            which = "handshake"  # headers cannot come before the handshake
        self.stop()
        self._expired(which)


def _cancel(call: Any) -> Any:
    """Cancel a delayed call if it is pending; returns None to store."""
    if call is not None and call.active():
        call.cancel()
    return None
