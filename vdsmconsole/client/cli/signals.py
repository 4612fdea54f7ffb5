"""Signals that end a command with 128+N, and putting them back."""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet import defer


def stop_on_signals(reactor: Any, finished: defer.Deferred[Any]) -> dict[int, Any]:
    """SIGTERM, SIGHUP and SIGINT end ``finished`` with 128+N; returns the old."""
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: object) -> None:
        def end() -> None:
            if not finished.called:
                finished.callback(128 + signum)

        reactor.callFromThread(end)

    def install() -> None:
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            previous[signum] = signal.signal(signum, handler)

    # Twisted installs its own handlers as the reactor starts; ours go after.
    reactor.callWhenRunning(install)
    return previous


def restore_signals(previous: dict[int, Any]) -> None:
    for signum, old in previous.items():
        signal.signal(signum, old)
