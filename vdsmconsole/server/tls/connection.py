"""Audited TLS connections: one log line per failed handshake, the peer's identity.

``AuditedTLSProtocol`` wraps each accepted connection; the HTTP side finds it
below a request (``peer_identity_of``) to learn who is on the other end.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.interfaces import (
    IProtocolFactory,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from vdsmconsole.identity import (
    ANONYMOUS,
    PeerIdentity,
    identity_from_certificate,
    peer_address,
)
from vdsmconsole.server.tls.verify import _error_text

log = Logger(namespace="vdsmconsole.tls")


CONNECTION_DONE = Failure(error.ConnectionDone())


def failure_kind(refusal_kind: str | None, reason: Failure) -> str:
    """Why a handshake failed, in one word of a fixed set (metrics label):
    OpenSSL's verdict on the certificate, no certificate, another TLS
    error, or a connection closed (by either side) before the end."""
    if refusal_kind is not None:
        return refusal_kind
    value = reason.value
    if isinstance(value, SSL.Error):
        if "did not return a certificate" in _error_text(value):
            return "no_certificate"
        return "tls_error"
    return "closed"


def _short_reason(reason: Failure) -> str:
    """One readable phrase from the reason a connection was lost."""
    value = reason.value
    return _error_text(value) if value is not None else "unknown reason"


# What OpenSSL puts in one record (max_send_fragment), and a bound on the
# bytes each record adds around it (header, tag, padding: 22 in TLS 1.3).
RECORD = 2**14
RECORD_OVERHEAD = 64
WRITE_SLICE = 2**20  # handed to SSL_write at once: its records, one call


class BatchedTLSProtocol(TLSMemoryBIOProtocol):
    """TLS whose application write reaches the transport as one write.

    Twisted's ``_write`` hands OpenSSL 16 KiB at a time (a copied slice
    each), reads the memory BIO after each (a 32 KiB buffer for one 16 KiB
    record) and writes each record to the transport on its own: for 64 KiB
    of graphics output, four rounds of Python calls and two extra copies.
    Here ``SSL_write`` takes the whole write (OpenSSL cuts it into the same
    16 KiB records), and what the BIO then holds goes to the transport in
    one write.  The bytes on the wire are the same records.
    """

    def _write(self, bytes: bytes) -> None:  # noqa: A002 - Twisted's name
        if self._lostTLSConnection:
            return
        view = memoryview(bytes)  # slices without copies
        done, total = 0, len(view)
        while done < total:
            try:
                done += self._tlsConnection.send(view[done : done + WRITE_SLICE])
            except SSL.WantReadError:
                self._bufferedWrite(bytes[done:])
                break
            except SSL.Error:
                # As Twisted does: the transport is dropped, the application
                # learns why in connectionLost.
                self._tlsShutdownFinished(Failure())
                return
        self._flushSendBIO(done)

    def _flushSendBIO(self, expect: int = 0) -> None:
        """Write everything the send BIO holds to the transport, at once."""
        size = max(2**15, expect + (expect // RECORD + 2) * RECORD_OVERHEAD)
        transport: Any = self.transport
        while True:
            try:
                data = self._tlsConnection.bio_read(size)
            except SSL.WantReadError:
                return  # nothing (more) in the BIO
            transport.write(data)
            if len(data) < size:
                return


class AuditedTLSProtocol(BatchedTLSProtocol):
    """TLS that logs failed handshakes in one line and remembers the peer.

    Built on ``TLSMemoryBIOProtocol`` (``BatchedTLSProtocol``), not
    Twisted's default ``BufferingTLSTransport``: that one gathers small
    writes for a
    ``callLater(0)``, a reactor round per write, and the streams write in
    whole pieces already (measured in docs/benchmarks.rst: trickle CPU and
    round-trip latency down, bulk unchanged or better).
    """

    _identity: PeerIdentity | None = None
    _handshakeFailureLogged = False
    _refusal: str | None = None
    _refusalKind: str | None = None

    def noteRefusal(self, why: str, kind: str) -> None:
        """Keep the first reason certificate verification gave, for the log
        (and its kind, for the metrics)."""
        if self._refusal is None:
            self._refusal = why
            self._refusalKind = kind

    @property
    def peerIdentity(self) -> PeerIdentity:
        if self._identity is None:
            cert = self.getPeerCertificate()
            if cert is None:
                return ANONYMOUS
            self._identity = identity_from_certificate(cert.to_cryptography())
        return self._identity

    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        # Twisted may call this twice for one connection; log once.  The TLS
        # layer keeps the real reason (say, a refused certificate) in _reason.
        if not self._handshakeDone and not self._handshakeFailureLogged:
            self._handshakeFailureLogged = True
            failures = getattr(self.factory, "handshakeFailures", None)
            if failures is not None:
                failures[failure_kind(self._refusalKind, self._reason or reason)] += 1
            log.warn(
                "TLS handshake with {address} failed: {why}",
                address=peer_address(self),
                why=self._refusal or _short_reason(self._reason or reason),
            )
        super().connectionLost(reason)


class AuditedTLSFactory(TLSMemoryBIOFactory):
    protocol = AuditedTLSProtocol

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Failed handshakes by failure_kind(), for the metrics.
        self.handshakeFailures: Counter[str] = Counter()


def tls_factory(options: Any, wrapped: IProtocolFactory) -> AuditedTLSFactory:
    return AuditedTLSFactory(options, False, wrapped)


def peer_identity_of(transport: object) -> PeerIdentity:
    """Find the TLS layer below an HTTP/1.1 channel's or HTTP/2 stream's transport."""
    seen = 0
    while transport is not None and seen < 5:
        if isinstance(transport, AuditedTLSProtocol):
            return transport.peerIdentity
        transport = getattr(transport, "transport", None)
        seen += 1
    return ANONYMOUS
