"""Make a CA, a server certificate and a client certificate in VDSM's layout.

``vdsmconsole pki init DIR`` writes::

    DIR/certs/cacert.pem     the CA that signs both sides
    DIR/certs/vdsmcert.pem   the server (SANs: localhost, 127.0.0.1, ::1, host name)
    DIR/keys/vdsmkey.pem     its key, mode 0600
    DIR/certs/enginecert.pem the client, CN "engine"
    DIR/keys/enginekey.pem   its key, mode 0600
    DIR/keys/cakey.pem       the CA key, mode 0600 (to issue more clients)

The building blocks are public so the tests can make the odd certificates
they need (expired, from another CA, for another usage) and the CRLs that
revoke them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey
DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _new_key() -> PrivateKey:
    # P-256: fast to generate (tests make many) and accepted everywhere.
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vdsmconsole"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_ca(cn: str = "vdsmconsole CA", days: int = 3650) -> Issued:
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + days * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def issue(
    ca: Issued,
    cn: str,
    *,
    sans: list[str] | None = None,
    server: bool = False,
    client: bool = False,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Issued:
    """Issue a leaf certificate signed by ``ca``."""
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - DAY)
        .not_valid_after(not_after or now + 825 * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(_san(sans), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def load_issued(cert_path: Path, key_path: Path) -> Issued:
    """Read a certificate and its (unencrypted) key back from PEM files."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not an EC private key")
    return Issued(cert, key)


def make_crl(
    ca: Issued,
    revoked: Iterable[x509.Certificate] = (),
    *,
    last_update: datetime.datetime | None = None,
    next_update: datetime.datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``ca`` that revokes ``revoked`` (by serial number)."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(last_update or now - DAY)
        .next_update(next_update or now + 30 * DAY)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - DAY)
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256())


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes) -> None:
    """Write a key file that only its owner can read, from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@dataclass(frozen=True)
class PkiPaths:
    """The files of a PKI directory in VDSM's layout."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "certs/cacert.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "keys/cakey.pem"

    @property
    def server_cert(self) -> Path:
        return self.root / "certs/vdsmcert.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "keys/vdsmkey.pem"

    @property
    def client_cert(self) -> Path:
        return self.root / "certs/enginecert.pem"

    @property
    def client_key(self) -> Path:
        return self.root / "keys/enginekey.pem"


def init_pki(root: Path, hostname: str | None = None, force: bool = False) -> PkiPaths:
    """Create a CA, server and client pair under ``root``; refuse to overwrite."""
    paths = PkiPaths(root)
    if paths.ca_cert.exists() and not force:
        raise FileExistsError(f"{paths.ca_cert} exists; not overwriting a PKI")
    hostname = hostname or socket.gethostname()
    ca = make_ca()
    server = issue(
        ca,
        hostname,
        sans=sorted({"localhost", "127.0.0.1", "::1", hostname}),
        server=True,
    )
    client = issue(ca, "engine", client=True)
    (root / "keys").mkdir(parents=True, exist_ok=True, mode=0o700)
    write_public(paths.ca_cert, ca.cert_pem())
    write_private(paths.ca_key, ca.key_pem())
    write_public(paths.server_cert, server.cert_pem())
    write_private(paths.server_key, server.key_pem())
    write_public(paths.client_cert, client.cert_pem())
    write_private(paths.client_key, client.key_pem())
    return paths
