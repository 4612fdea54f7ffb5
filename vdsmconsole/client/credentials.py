"""The CA we trust, the certificate we present, and the TLS policy of both."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from OpenSSL import crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
)
from twisted.internet.ssl import (
    Certificate,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.web.iweb import (
    IPolicyForHTTPS,
)
from zope.interface import implementer

from vdsmconsole.client.errors import CredentialsError

VDSM_PKI = Path("/etc/pki/vdsm")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CredentialsError(f"cannot read {what} {path}: {e.strerror}") from None


_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


@dataclass(frozen=True)
class ClientCredentials:
    """The CA we trust and the certificate and key we present.

    ``from_pki_dir`` reads a ``vdsmconsole pki init`` directory (the engine's
    client certificate); ``vdsm_host`` reads VDSM's own files, as vdsClient
    used the host's certificate; ``resolve`` applies flags and environment.
    """

    ca: Path
    cert: Path
    key: Path

    ENV_CA = "VDSMCONSOLE_CA"
    ENV_CERT = "VDSMCONSOLE_CERT"
    ENV_KEY = "VDSMCONSOLE_KEY"
    ENV_PKI = "VDSMCONSOLE_PKI"

    @classmethod
    def from_pki_dir(cls, root: Path) -> ClientCredentials:
        """``certs/cacert.pem``, ``certs/enginecert.pem``, ``keys/enginekey.pem``."""
        root = Path(root)
        return cls(
            root / "certs/cacert.pem",
            root / "certs/enginecert.pem",
            root / "keys/enginekey.pem",
        )

    @classmethod
    def vdsm_host(cls, root: Path = VDSM_PKI) -> ClientCredentials:
        """VDSM's host files: ``certs/vdsmcert.pem`` and ``keys/vdsmkey.pem``."""
        root = Path(root)
        return cls(
            root / "certs/cacert.pem",
            root / "certs/vdsmcert.pem",
            root / "keys/vdsmkey.pem",
        )

    @classmethod
    def resolve(
        cls,
        *,
        pki: Path | None = None,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> ClientCredentials:
        """Pick each file; the first that applies wins.

        ``--ca/--cert/--key``, then ``--pki DIR``, then ``VDSMCONSOLE_CA``,
        ``VDSMCONSOLE_CERT``, ``VDSMCONSOLE_KEY``, then ``VDSMCONSOLE_PKI``,
        then VDSM's ``/etc/pki/vdsm`` host files.
        """
        if pki is not None:
            base = cls.from_pki_dir(pki)
        else:
            env_pki = environ.get(cls.ENV_PKI)
            base = cls.from_pki_dir(Path(env_pki)) if env_pki else cls.vdsm_host()
            base = cls(
                Path(environ.get(cls.ENV_CA) or base.ca),
                Path(environ.get(cls.ENV_CERT) or base.cert),
                Path(environ.get(cls.ENV_KEY) or base.key),
            )
        return cls(ca or base.ca, cert or base.cert, key or base.key)

    def load(self) -> tuple[Any, PrivateCertificate]:
        """The trust root and our certificate with its key, checked."""
        cas = _PEM_CERT.findall(_read(self.ca, "CA certificate"))
        if not cas:
            raise CredentialsError(f"no PEM certificate in {self.ca}")
        try:
            trust = trustRootFromCertificates([Certificate.loadPEM(c) for c in cas])
        except Exception as e:  # noqa: BLE001 - any parse error is the file's
            raise CredentialsError(f"bad CA certificate {self.ca}: {e}") from None
        cert_pem = _read(self.cert, "certificate")
        key_pem = _read(self.key, "private key")
        try:
            certificate = Certificate.loadPEM(cert_pem)
        except Exception as e:  # noqa: BLE001
            raise CredentialsError(f"bad certificate {self.cert}: {e}") from None
        try:
            key = KeyPair.load(key_pem, crypto.FILETYPE_PEM)
        except Exception as e:  # noqa: BLE001
            raise CredentialsError(f"bad private key {self.key}: {e}") from None
        try:
            mine = PrivateCertificate.fromCertificateAndKeyPair(certificate, key)
            # Fails now, not at the first handshake, when they do not match.
            mine.options()
        except Exception:  # noqa: BLE001
            raise CredentialsError(
                f"private key {self.key} does not match certificate {self.cert}"
            ) from None
        return trust, mine


@implementer(IPolicyForHTTPS)
class MutualTLSPolicy:
    """An ``IPolicyForHTTPS`` like ``BrowserLikePolicyForHTTPS``, with our CA.

    Verifies the server's certificate against our CA and its name against the
    host we connect to (service-identity), presents our client certificate,
    and refuses anything older than TLS 1.2.
    """

    def __init__(self, trust_root: Any, client_cert: PrivateCertificate) -> None:
        self.trust_root = trust_root
        self.client_cert = client_cert

    def creatorForNetloc(
        self, hostname: bytes, port: int
    ) -> IOpenSSLClientConnectionCreator:
        name = hostname.decode("ascii").strip("[]")
        return optionsForClientTLS(
            name,
            trustRoot=self.trust_root,
            clientCertificate=self.client_cert,
            extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
        )
