"""A server context from the certificate, key, CA and CRL files."""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPublicKeyTypes,
)
from OpenSSL import SSL, crypto
from twisted.internet import error, ssl

from vdsmconsole.identity import identity_from_certificate, printable
from vdsmconsole.server.tls.verify import _error_text, _verifier, utc_text

ALPN_PROTOCOLS = [b"h2", b"http/1.1"]


DAY = datetime.timedelta(days=1)


_T = TypeVar("_T")


class TLSConfigError(ValueError):
    """A certificate, key or CA file is missing or unusable."""


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
            f"certificate {printable(identity_from_certificate(cert).name)}"
            f" serial {cert.serial_number:x} valid until {utc_text(self.not_after)}"
        )
        if self.revoked is not None:
            text += f"; CRL with {self.revoked} revoked"
        return text


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
