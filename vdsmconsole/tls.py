"""The TLS side of the port: server options, peer identity, handshake logging.

Every connection is mutually authenticated: the client must present a
certificate that the configured CA signed.  A failed handshake is logged as
one line with the peer address (never a traceback), and the verified peer
identity (subject CN and SANs) travels with each request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import error, ssl
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure

log = Logger(namespace="vdsmconsole.tls")

ALPN_PROTOCOLS = [b"h2", b"http/1.1"]


class TLSConfigError(ValueError):
    """A certificate, key or CA file is missing or unusable."""


@dataclass(frozen=True)
class PeerIdentity:
    """Who is on the other end, as the CA vouched for it."""

    cn: str
    sans: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.cn or (self.sans[0] if self.sans else "-")

    def names(self) -> tuple[str, ...]:
        """Every name an authorization rule may match: CN first, then SANs."""
        return ((self.cn,) if self.cn else ()) + self.sans


ANONYMOUS = PeerIdentity(cn="")
CONNECTION_DONE = Failure(error.ConnectionDone())


def identity_from_certificate(cert: x509.Certificate) -> PeerIdentity:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    sans: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        pass
    else:
        for general in ext.value:
            sans.append(str(general.value))
    return PeerIdentity(cn=cn, sans=tuple(sans))


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TLSConfigError(f"cannot read {what} {path}: {e.strerror}") from None


def server_options(
    ca_file: Path, cert_file: Path, key_file: Path
) -> ssl.CertificateOptions:
    """TLS 1.2+, our certificate, client certificates required and checked."""
    ca_pem = _read(ca_file, "CA certificate")
    cert_pem = _read(cert_file, "server certificate")
    key_pem = _read(key_file, "server key")
    try:
        ca = ssl.Certificate.loadPEM(ca_pem)
        private = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except (SSL.Error, ValueError) as e:
        # The message names files, never the key's contents.
        raise TLSConfigError(
            f"cannot load {cert_file} / {key_file} / {ca_file}: {e}"
        ) from None
    return ssl.CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        trustRoot=ca,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableProtocols=ALPN_PROTOCOLS,
    )


def _short_reason(reason: Failure) -> str:
    """One readable phrase from an OpenSSL error list (or any other reason)."""
    value = reason.value
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        parts = [str(entry[-1]) for entry in value.args[0] if entry]
        if parts:
            return "; ".join(parts)
    text = str(value).strip() or type(value).__name__
    return text.splitlines()[0]


class AuditedTLSProtocol(BufferingTLSTransport):
    """TLS that logs failed handshakes in one line and remembers the peer."""

    _identity: PeerIdentity | None = None
    _handshakeFailureLogged = False

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
            peer = self.getPeer()
            address = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
            log.warn(
                "TLS handshake with {address} failed: {why}",
                address=address,
                why=_short_reason(self._reason or reason),
            )
        super().connectionLost(reason)


class AuditedTLSFactory(TLSMemoryBIOFactory):
    protocol = AuditedTLSProtocol


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
