"""Connection caps, a descriptor reserve, and a short wait for the first request.

A descriptor per connection is what a flood of idle TLS connections spends:
with systemd's default soft limit of 1024, a thousand of them used to lock
every new client out until ``header_timeout`` (30 s) closed them.  So:

- at start the soft ``RLIMIT_NOFILE`` is raised to the hard limit (the
  systemd unit sets ``LimitNOFILE``);
- ``[server] max_connections_per_address``: a connection over it is closed
  as soon as it is accepted, before any TLS work;
- ``[server] max_connections_per_identity``: checked once the handshake
  says who it is; the extra connection is closed;
- the descriptor reserve: a connection accepted while fewer than
  ``descriptor_reserve`` descriptors are left closes the oldest connection
  that has not sent a byte of a request yet (a client mid-handshake or
  silent after it), so that a new client always gets in; with none to
  close, the new connection is refused;
- ``[server] first_request_timeout``: a connection that completed TLS and
  sent no byte of a request by then is closed.

Refusals are logged at most once per ``REFUSAL_LOG_SECONDS`` per kind, with
a count of the ones not logged, so that a flood cannot flood the log too.
"""

from __future__ import annotations

import os
import resource
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.python.failure import Failure

from vdsmconsole.identity import peer_address
from vdsmconsole.server.tls.connection import (
    CONNECTION_DONE,
    AuditedTLSFactory,
    AuditedTLSProtocol,
)

__all__ = [
    "ConnectionLimits",
    "LimitedTLSFactory",
    "LimitedTLSProtocol",
    "raise_open_file_limit",
]

log = Logger(namespace="vdsmconsole.connlimits")
REFUSAL_LOG_SECONDS = 10.0
RECOUNT_SECONDS = 1.0


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one; (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, hard
    return soft, soft


class RefusalLog:
    """One line per kind of refusal per interval, with what it left out."""

    def __init__(self, clock: Any, interval: float = REFUSAL_LOG_SECONDS) -> None:
        self._clock = clock
        self._interval = interval
        self._next: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()  # every refusal, for the metrics

    def note(self, kind: str, text: str, **fields: Any) -> None:
        self.counts[kind] += 1
        now = self._clock.seconds()
        if now < self._next.get(kind, 0.0):
            self._unlogged[kind] += 1
            return
        self._next[kind] = now + self._interval
        more = self._unlogged.pop(kind, 0)
        if more:
            text += f" ({more} more like it not logged)"
        log.warn(text, **fields)


def count_open_descriptors() -> int:
    """Descriptors this process has open now (0 if /proc cannot tell)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the listing's own
    except OSError:
        return 0


class ConnectionLimits:
    """Counts by peer address and identity; decides who gets in.

    ``open_files`` is the soft descriptor limit the process runs under.
    Descriptors in use are the connections' (counted here) and the rest
    (console sources and logs, the listening socket...), counted from
    ``/proc`` when the connections alone come near the limit, at most once
    per ``RECOUNT_SECONDS``.
    """

    def __init__(
        self,
        clock: Any,
        *,
        per_address: int,
        per_identity: int,
        reserve: int,
        first_request_timeout: float,
        open_files: int,
        count_open: Callable[[], int] = count_open_descriptors,
    ) -> None:
        self.clock = clock
        self.per_address = per_address
        self.per_identity = per_identity
        self.first_request_timeout = first_request_timeout
        self.budget = max(open_files - reserve, 0)
        self.by_address: Counter[str] = Counter()
        self.by_identity: Counter[str] = Counter()
        self.refusals = RefusalLog(clock)
        self.connections = 0  # admitted and not yet lost
        self.closing = 0  # of those, closed to keep the reserve, not yet lost
        self._count_open = count_open
        self._others = count_open()
        self._counted = clock.seconds()

    def admit_address(self, host: str) -> bool:
        if self.by_address[host] < self.per_address:
            self.by_address[host] += 1
            self.connections += 1
            return True
        self.refusals.note(
            "address",
            "refused a connection from {host}: {count} connections from it "
            "already (the per-address limit)",
            host=host,
            count=self.by_address[host],
        )
        return False

    def admit_identity(self, name: str, peer: str) -> bool:
        if self.by_identity[name] < self.per_identity:
            self.by_identity[name] += 1
            return True
        self.refusals.note(
            "identity",
            "closed a connection from {peer}: {count} connections of {who} "
            "already (the per-identity limit)",
            peer=peer,
            count=self.by_identity[name],
            who=name,
        )
        return False

    def short_of_descriptors(self, descriptor: int) -> bool:
        """Whether, with a new connection on ``descriptor``, fewer than the
        reserve would be left once the connections being closed are gone."""
        # Linux hands out the lowest free number: all below it are in use.
        at_least = descriptor + 1 - self.closing
        in_use = self.connections - self.closing + self._others
        if max(in_use, at_least) < self.budget:
            return False
        now = self.clock.seconds()
        if now - self._counted >= RECOUNT_SECONDS:
            self._counted = now
            self._others = max(self._count_open() - self.connections, 0)
            in_use = self.connections - self.closing + self._others
        return max(in_use, at_least) >= self.budget

    def release(self, host: str | None, name: str | None, closing: bool) -> None:
        self.connections -= 1
        if closing:
            self.closing -= 1
        for counter, key in ((self.by_address, host), (self.by_identity, name)):
            if key is not None:
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]


class LimitedTLSProtocol(AuditedTLSProtocol):
    """The TLS layer of one connection, counted against the limits."""

    factory: LimitedTLSFactory
    limitHost: str | None = None  # counted against this address
    limitName: str | None = None  # and, after the handshake, this identity
    _firstRequest: Any = None  # IDelayedCall
    _released = False
    closedForReserve = False

    @property
    def awaitingRequest(self) -> bool:
        """No byte of a request yet: mid-handshake, or silent after it."""
        return not getattr(self.wrappedProtocol, "dataSeen", True)

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        fileno = getattr(transport, "fileno", None)
        if fileno is not None and self.factory.limits.short_of_descriptors(fileno()):
            self.factory.keepReserve(self)

    def _checkHandshakeStatus(self) -> None:
        done = self._handshakeDone
        super()._checkHandshakeStatus()
        if done or not self._handshakeDone or self._aborted:
            return
        limits = self.factory.limits
        name = str(self.peerIdentity)  # the name logs show, escaped
        if not limits.admit_identity(name, peer_address(self)):
            self.abortConnection()
            return
        self.limitName = name
        self._firstRequest = limits.clock.callLater(
            limits.first_request_timeout, self._noRequest
        )

    def _noRequest(self) -> None:
        self._firstRequest = None
        if self.awaitingRequest and not self.disconnecting:
            limits = self.factory.limits
            limits.refusals.note(
                "silent",
                "closed a connection from {peer}: no request within {seconds:g} s "
                "of its TLS handshake",
                peer=peer_address(self),
                seconds=limits.first_request_timeout,
            )
            self.abortConnection()

    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        if not self._released:  # Twisted may call this twice
            self._released = True
            if self._firstRequest is not None and self._firstRequest.active():
                self._firstRequest.cancel()
            self.factory.limits.release(
                self.limitHost, self.limitName, self.closedForReserve
            )
        super().connectionLost(reason)


class LimitedTLSFactory(AuditedTLSFactory):
    """Builds connections only within the limits."""

    protocol = LimitedTLSProtocol

    def __init__(
        self, options: Any, wrapped: Any, limits: ConnectionLimits, clock: Any
    ) -> None:
        super().__init__(options, False, wrapped, clock=clock)
        self.limits = limits

    def buildProtocol(self, addr: IAddress | None) -> Any:
        host = str(getattr(addr, "host", "?"))
        if not self.limits.admit_address(host):
            return None  # the port closes the socket at once
        protocol = cast(LimitedTLSProtocol, super().buildProtocol(addr))
        protocol.limitHost = host
        return protocol

    def keepReserve(self, newcomer: LimitedTLSProtocol) -> None:
        """Few descriptors left: close the oldest connection still awaiting a
        request to make room for ``newcomer``, or refuse the newcomer."""
        for protocol in self.protocols:  # oldest first
            if (
                protocol is not newcomer
                and isinstance(protocol, LimitedTLSProtocol)
                and protocol.awaitingRequest
                and not protocol.disconnecting
            ):
                self.limits.refusals.note(
                    "reserve",
                    "closed a connection from {peer} that sent no request yet, "
                    "to keep the descriptor reserve",
                    peer=peer_address(protocol),
                )
                protocol.closedForReserve = True
                self.limits.closing += 1
                protocol.abortConnection()
                return
        self.limits.refusals.note(
            "reserve-full",
            "refused a connection from {peer}: only the descriptor reserve is "
            "left and every connection is busy",
            peer=peer_address(newcomer),
        )
        newcomer.closedForReserve = True
        self.limits.closing += 1
        newcomer.abortConnection()
