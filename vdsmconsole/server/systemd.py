"""Tell systemd how the server is doing: READY, STOPPING, the watchdog.

sd_notify(3)'s protocol is one datagram per message, ``KEY=value`` lines, to
the unix socket that ``NOTIFY_SOCKET`` names: a path, or an abstract name
written with a leading ``@``.  That is a dozen lines, so no library: the
python-systemd binding needs libsystemd's headers to build, and the
pure-Python ``sdnotify`` package swallows every error and knows no watchdog.

``Notifier.from_environment`` takes the variables out of the environment, as
``sd_notify(unset_environment=1)`` does, so that commands a ``spawn`` console
runs cannot speak for the server.  Outside systemd (no ``NOTIFY_SOCKET``)
every call does nothing.  The watchdog is fed from the reactor, at half of
``WATCHDOG_USEC`` as sd_watchdog_enabled(3) asks: a reactor that hangs stops
feeding it, and systemd restarts the server.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from typing import Any

from twisted.internet import task
from twisted.logger import Logger

log = Logger(namespace="vdsmconsole.systemd")

__all__ = ["Notifier", "socket_address"]


def socket_address(value: str) -> str | bytes | None:
    """The address ``NOTIFY_SOCKET`` names: a path, or an abstract name
    (``@name`` -> ``b"\\0name"``); None for what a unix socket cannot be."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # empty, or vsock: (systemd 254 and later), not for us


def watchdog_interval(
    environ: MutableMapping[str, str], pid: int
) -> tuple[float | None, str]:
    """Seconds between two ``WATCHDOG=1`` (half the timeout), or None with why."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None, ""
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None, f"the watchdog is for pid {owner}, not {pid}"
    try:
        value = int(usec)
    except ValueError:
        return None, f"WATCHDOG_USEC={usec!r} is not a number"
    if value <= 0:
        return None, f"WATCHDOG_USEC={usec!r} is not positive"
    return value / 2e6, ""


class Notifier:
    """Datagrams to systemd's notification socket, never raising."""

    def __init__(
        self,
        address: str | bytes | None,
        reactor: Any,
        watchdog_seconds: float | None = None,
    ) -> None:
        self.address = address
        self.reactor = reactor
        self.watchdog_seconds = watchdog_seconds
        self._socket: socket.socket | None = None
        self._watchdog: task.LoopingCall | None = None
        self._failed = False

    @classmethod
    def from_environment(
        cls,
        reactor: Any,
        environ: MutableMapping[str, str] | None = None,
        pid: int | None = None,
    ) -> Notifier:
        """What systemd set (then removed from ``environ``, os.environ by
        default); a notifier that does nothing when nothing was set."""
        environ = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        value = environ.pop("NOTIFY_SOCKET", "")
        seconds, why = watchdog_interval(environ, pid)
        for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            environ.pop(name, None)
        address = socket_address(value) if value else None
        if value and address is None:
            log.warn("NOTIFY_SOCKET={value!r} is not a unix socket", value=value)
        if why:
            log.warn("no watchdog: {why}", why=why)
        return cls(address, reactor, seconds if address is not None else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False if it did not go."""
        if self.address is None:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                # A full queue drops one message rather than stall the reactor;
                # the watchdog sends again at the next tick.
                self._socket.setblocking(False)
            self._socket.sendto(payload, self.address)
        except OSError as e:
            if not self._failed:  # once: a watchdog would repeat it forever
                log.warn("cannot notify systemd: {error}", error=e.strerror or e)
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str = "") -> None:
        """The port listens: ``READY=1``, then the watchdog if one is set."""
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))
        if self.watchdog_seconds is not None and self._watchdog is None:
            self._watchdog = task.LoopingCall(self.notify, "WATCHDOG=1")
            self._watchdog.clock = self.reactor
            self._watchdog.start(self.watchdog_seconds, now=True)

    def stopping(self, status: str = "") -> None:
        """Shutdown began: ``STOPPING=1``; systemd stops the watchdog itself."""
        self._stop_watchdog()
        self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        self._stop_watchdog()
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None
