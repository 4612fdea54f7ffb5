"""The TLS side of the port: server contexts, peer identity, handshake logging.

Every connection is mutually authenticated: the client must present a
certificate that the configured CA signed, that is valid now, that the CRL
(if one is configured) does not list and, unless configured otherwise, whose
extendedKeyUsage allows client use.  A failed handshake is logged as one line
with the peer address and a readable reason (never a traceback), and the
verified peer identity (subject CN and SANs) travels with each request.

``ServerTLS`` is the connection creator the port uses.  It holds the current
context and builds a new one from the files on ``reload()`` (SIGHUP) and when
the CRL file changes; each new connection takes the context that is current
when it arrives, so established connections, and their streams, keep theirs.
A reload that fails leaves the previous context in use.
"""

from __future__ import annotations

import datetime
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPublicKeyTypes,
)
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import error, ssl
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

# PeerIdentity and ANONYMOUS are re-exported: other modules import them here.
from vdsmconsole.identity import ANONYMOUS as ANONYMOUS
from vdsmconsole.identity import PeerIdentity as PeerIdentity
from vdsmconsole.identity import identity_from_certificate, log_safe

log = Logger(namespace="vdsmconsole.tls")

ALPN_PROTOCOLS = [b"h2", b"http/1.1"]
DAY = datetime.timedelta(days=1)
# How often, at most, a new connection looks at the CRL file's modification.
CRL_CHECK_SECONDS = 1.0
_T = TypeVar("_T")


class TLSConfigError(ValueError):
    """A certificate, key or CA file is missing or unusable."""


CONNECTION_DONE = Failure(error.ConnectionDone())


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TLSConfigError(f"cannot read {what} {path}: {e.strerror}") from None


@dataclass(frozen=True)
class TLSFiles:
    """The files a server context is built from (``crl`` None: no CRL)."""

    ca: Path
    cert: Path
    key: Path
    crl: Path | None = None


@dataclass(frozen=True)
class LoadedTLS:
    """One generation of the server's TLS: options and what they came from."""

    options: ssl.CertificateOptions
    certificate: x509.Certificate
    revoked: int | None  # serials the CRL lists; None without a CRL

    @property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    def days_left(self, now: datetime.datetime) -> int:
        """Whole days until the server certificate expires (negative: expired)."""
        return math.floor((self.not_after - now) / DAY)

    def summary(self) -> str:
        cert = self.certificate
        text = (
            f"certificate {_printable(identity_from_certificate(cert).name)}"
            f" serial {cert.serial_number:x} valid until {_utc(self.not_after)}"
        )
        if self.revoked is not None:
            text += f"; CRL with {self.revoked} revoked"
        return text


def _utc(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _printable(text: str, limit: int = 80) -> str:
    """A name from a certificate, quoted and escaped: it may come from anyone."""
    return "'" + log_safe(text, limit).replace("'", "\\'") + "'"


_CRL_PEM = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.S)


def _load_crls(
    data: bytes, path: Path, ca: x509.Certificate, ca_path: Path
) -> list[x509.CertificateRevocationList]:
    """The CRLs of a PEM file (or the one of a DER file), checked against the CA."""
    try:
        if b"-----BEGIN" in data:
            blocks = _CRL_PEM.findall(data)
            if not blocks:
                raise ValueError("no X509 CRL in the file")
            crls = [x509.load_pem_x509_crl(block) for block in blocks]
        else:
            crls = [x509.load_der_x509_crl(data)]
    except ValueError as e:
        raise TLSConfigError(f"cannot load CRL {path}: {e}") from None
    public_key = cast(CertificateIssuerPublicKeyTypes, ca.public_key())
    for crl in crls:
        try:
            signed = crl.issuer == ca.subject and crl.is_signature_valid(public_key)
        except (TypeError, ValueError):
            signed = False
        if not signed:
            # OpenSSL would refuse every client for want of a CRL from the CA.
            raise TLSConfigError(f"CRL {path} is not signed by the CA in {ca_path}")
    return crls


def _parse(what: str, path: Path, parse: Callable[[], _T]) -> _T:
    try:
        return parse()
    except (SSL.Error, crypto.Error, ValueError) as e:
        raise TLSConfigError(f"cannot load {what} {path}: {_error_text(e)}") from None


def load_server_tls(files: TLSFiles, require_client_usage: bool = True) -> LoadedTLS:
    """Read the files and build a ready context; TLSConfigError names the bad one."""
    ca_pem = _read(files.ca, "CA certificate")
    cert_pem = _read(files.cert, "server certificate")
    key_pem = _read(files.key, "server key")
    crl_data = _read(files.crl, "CRL") if files.crl is not None else None
    ca = _parse("CA certificate", files.ca, lambda: ssl.Certificate.loadPEM(ca_pem))
    cert = _parse(
        "server certificate", files.cert, lambda: ssl.Certificate.loadPEM(cert_pem)
    )
    # The message names the file, never the key's contents.
    key = _parse(
        "server key", files.key, lambda: ssl.KeyPair.load(key_pem, crypto.FILETYPE_PEM)
    )
    try:
        private = ssl.PrivateCertificate.fromCertificateAndKeyPair(cert, key)
    except error.VerifyError:
        raise TLSConfigError(
            f"server key {files.key} does not match the certificate {files.cert}"
        ) from None
    crls = None
    if crl_data is not None and files.crl is not None:
        crls = _load_crls(crl_data, files.crl, ca.original.to_cryptography(), files.ca)
    options = ssl.CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        trustRoot=ca,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableProtocols=ALPN_PROTOCOLS,
    )
    try:
        # Built (and cached by the options) now, so that the additions below
        # go in before any connection uses it, and a key that does not match
        # the certificate shows here rather than at the first client.
        context = options.getContext()
    except SSL.Error as e:
        raise TLSConfigError(
            f"cannot use {files.cert} with {files.key}: {_error_text(e)}"
        ) from None
    context.set_verify(context.get_verify_mode(), _verifier(require_client_usage))
    if crls is not None:
        store = context.get_cert_store()
        assert store is not None
        for crl in crls:
            store.add_crl(crl)
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
    return LoadedTLS(
        options=options,
        certificate=private.original.to_cryptography(),
        revoked=None if crls is None else sum(len(crl) for crl in crls),
    )


def server_options(
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    crl_file: Path | None = None,
    require_client_usage: bool = True,
) -> ssl.CertificateOptions:
    """TLS 1.2+, our certificate, client certificates required and checked."""
    files = TLSFiles(ca=ca_file, cert=cert_file, key=key_file, crl=crl_file)
    return load_server_tls(files, require_client_usage).options


_Codes = SSL.X509VerificationCodes
_NOT_FROM_OUR_CA = {
    _Codes.ERR_UNABLE_TO_GET_ISSUER_CERT,
    _Codes.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    _Codes.ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
    _Codes.ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
    _Codes.ERR_SELF_SIGNED_CERT_IN_CHAIN,
    _Codes.ERR_CERT_SIGNATURE_FAILURE,
    _Codes.ERR_CERT_UNTRUSTED,
}


def refusal_reason(cert: x509.Certificate, errnum: int, depth: int) -> str:
    """Why OpenSSL refused a client certificate, in words an operator reads."""
    if errnum == _Codes.ERR_CERT_HAS_EXPIRED:
        why = f"expired at {_utc(cert.not_valid_after_utc)}"
    elif errnum == _Codes.ERR_CERT_NOT_YET_VALID:
        why = f"is not valid before {_utc(cert.not_valid_before_utc)}"
    elif errnum in _NOT_FROM_OUR_CA:
        issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(issuer[0].value) if issuer else cert.issuer.rfc4514_string()
        why = f"is not signed by the configured CA (issuer {_printable(name)})"
    elif errnum == _Codes.ERR_CERT_REVOKED:
        why = "is revoked (listed in the CRL)"
    elif errnum == _Codes.ERR_INVALID_PURPOSE:
        why = "is not for client use (its extendedKeyUsage lacks clientAuth)"
    elif errnum == _Codes.ERR_UNABLE_TO_GET_CRL:
        why = "cannot be checked: no CRL from its issuer"
    elif errnum == _Codes.ERR_CRL_HAS_EXPIRED:
        why = "cannot be checked: the CRL is past its nextUpdate"
    elif errnum == _Codes.ERR_CRL_NOT_YET_VALID:
        why = "cannot be checked: the CRL is not valid yet"
    else:
        why = f"failed verification (OpenSSL X509_V_ERR {errnum})"
    who = _printable(identity_from_certificate(cert).name)
    if depth == 0:
        return f"client certificate {who} {why}"
    return f"certificate {who} (depth {depth} of the client's chain) {why}"


_VerifyCallback = Callable[[SSL.Connection, crypto.X509, int, int, int], bool]


def _verifier(require_client_usage: bool) -> _VerifyCallback:
    """OpenSSL's verdict, with its reason noted on the connection for the log.

    OpenSSL already checks a client certificate's purpose: one whose
    extendedKeyUsage lacks clientAuth fails with X509_V_ERR_INVALID_PURPOSE.
    ``require_client_usage=False`` forgives that one error on the leaf.
    """

    def verify(
        connection: SSL.Connection,
        certificate: crypto.X509,
        errnum: int,
        depth: int,
        ok: int,
    ) -> bool:
        if ok:
            return True
        if (
            errnum == _Codes.ERR_INVALID_PURPOSE
            and depth == 0
            and not require_client_usage
        ):
            return True
        protocol = connection.get_app_data()
        if isinstance(protocol, AuditedTLSProtocol):
            protocol.noteRefusal(
                refusal_reason(certificate.to_cryptography(), errnum, depth)
            )
        return False

    return verify


FileStamp = tuple[int, int, int, int]


def file_stamp(path: Path | None) -> FileStamp | None:
    """What changes when a file is rewritten or replaced (None: unreadable)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The port's connection creator: the current context, rebuilt on demand.

    ``reload()`` re-reads the certificate, key, CA and CRL and, if they make
    a usable context, uses it for new connections; otherwise it logs one line
    and keeps the previous one.  A change of the CRL file (at most one look
    per ``CRL_CHECK_SECONDS``, when a connection arrives) reloads too.
    """

    def __init__(
        self,
        files: TLSFiles,
        clock: Any,  # IReactorTime; the zope interface confuses mypy
        *,
        require_client_usage: bool = True,
        expiry_warning_days: int = 30,
    ) -> None:
        self.files = files
        self.require_client_usage = require_client_usage
        self.expiry_warning_days = expiry_warning_days
        self._clock = clock
        self._crl_stamp = file_stamp(files.crl)
        self._last_crl_check = clock.seconds()
        self.current = load_server_tls(files, require_client_usage)

    # -- IOpenSSLServerConnectionCreator

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        self._check_crl()
        return self.current.options.serverConnectionForTLS(tlsProtocol)

    # -- reloading

    def reload(self, why: str = "reload requested") -> bool:
        """Build a new context from the files; False (and one log line) if not."""
        self._crl_stamp = file_stamp(self.files.crl)
        self._last_crl_check = self._clock.seconds()
        try:
            loaded = load_server_tls(self.files, self.require_client_usage)
        except Exception as e:  # noqa: BLE001 - whatever it is, keep serving
            # TLSConfigError names the file; anything else is still one line.
            reason = str(e) if isinstance(e, TLSConfigError) else repr(e)
            log.error(
                "TLS reload ({why}) failed, still using the previous certificates: "
                "{error}",
                why=why,
                error=reason,
            )
            return False
        self.current = loaded
        log.info("TLS reloaded ({why}): {summary}", why=why, summary=loaded.summary())
        self.warn_if_expiring()
        return True

    def _check_crl(self) -> None:
        if self.files.crl is None:
            return
        now = self._clock.seconds()
        if now - self._last_crl_check < CRL_CHECK_SECONDS:
            return
        self._last_crl_check = now
        if file_stamp(self.files.crl) != self._crl_stamp:
            self.reload("CRL file changed")

    # -- expiry

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC)

    def days_left(self) -> int:
        return self.current.days_left(self.now())

    def warn_if_expiring(self) -> bool:
        """Log a warning if the server certificate expires soon; True if it did."""
        left = self.current.not_after - self.now()
        if left > self.expiry_warning_days * DAY:
            return False
        if left <= datetime.timedelta(0):
            log.error(
                "server certificate {path} expired at {when}: clients refuse it; "
                "renew it and send SIGHUP",
                path=str(self.files.cert),
                when=_utc(self.current.not_after),
            )
        else:
            log.warn(
                "server certificate {path} expires in {days} days, at {when}; "
                "renew it and send SIGHUP",
                path=str(self.files.cert),
                days=self.days_left(),
                when=_utc(self.current.not_after),
            )
        return True

    def capabilities(self) -> dict[str, Any]:
        """What getVdsCapabilities tells about the server's TLS."""
        return {
            "certificateDaysLeft": self.days_left(),
            "certificateNotAfter": _utc(self.current.not_after),
            "clientUsageRequired": self.require_client_usage,
            "crlChecked": self.current.revoked is not None,
        }


def _error_text(value: BaseException) -> str:
    """One readable phrase from an OpenSSL error list (or any other exception)."""
    if isinstance(value, SSL.Error | crypto.Error) and value.args:
        if isinstance(value.args[0], list):
            parts = [str(entry[-1]) for entry in value.args[0] if entry]
            if parts:
                return "; ".join(parts)
    text = str(value).strip() or type(value).__name__
    return text.splitlines()[0]


def peer_address(transport: Any) -> str:
    """``host:port`` of a connection's peer, for log lines ("?" if unknown)."""
    peer = transport.getPeer() if transport is not None else None
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


def _short_reason(reason: Failure) -> str:
    """One readable phrase from the reason a connection was lost."""
    value = reason.value
    return _error_text(value) if value is not None else "unknown reason"


class AuditedTLSProtocol(TLSMemoryBIOProtocol):
    """TLS that logs failed handshakes in one line and remembers the peer.

    Built on ``TLSMemoryBIOProtocol``, not Twisted's default
    ``BufferingTLSTransport``: that one gathers small writes for a
    ``callLater(0)``, a reactor round per write, and the streams write in
    whole pieces already (measured in docs/benchmarks.rst: trickle CPU and
    round-trip latency down, bulk unchanged or better).
    """

    _identity: PeerIdentity | None = None
    _handshakeFailureLogged = False
    _refusal: str | None = None

    def noteRefusal(self, why: str) -> None:
        """Keep the first reason certificate verification gave, for the log."""
        if self._refusal is None:
            self._refusal = why

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
            log.warn(
                "TLS handshake with {address} failed: {why}",
                address=peer_address(self),
                why=self._refusal or _short_reason(self._reason or reason),
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
