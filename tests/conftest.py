"""Fixtures shared by the suite: a PKI, odd certificates, a real server."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.qemuguest import QemuGuestPool, qemu_guest_pool
from tests.serverproc import ServerProcess
from tests.streamhelp import Reader
from tests.tmuxhelp import Tmux
from vdsmconsole import pki as pkimod
from vdsmconsole.pki import PkiPaths, init_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("pki"), hostname="localhost")


@pytest.fixture(scope="session")
def odd_certs(tmp_path_factory: pytest.TempPathFactory, pki: PkiPaths) -> dict:
    """Client certificates the server must refuse: other CA, expired."""
    root = tmp_path_factory.mktemp("odd")
    ca = pkimod.Issued(
        pkimod.x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()),
        pkimod.serialization.load_pem_private_key(pki.ca_key.read_bytes(), None),
    )
    other_ca = pkimod.make_ca("some other CA")
    now = datetime.datetime.now(datetime.UTC)
    made = {
        "other_ca": pkimod.issue(other_ca, "intruder", client=True),
        "expired": pkimod.issue(
            ca,
            "expired",
            client=True,
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        ),
    }
    paths = {}
    for name, issued in made.items():
        cert, key = root / f"{name}.pem", root / f"{name}.key"
        pkimod.write_public(cert, issued.cert_pem())
        pkimod.write_private(key, issued.key_pem())
        paths[name] = (cert, key)
    return paths


@pytest.fixture(scope="session")
def issue_client(tmp_path_factory: pytest.TempPathFactory, pki: PkiPaths):
    """Issue a client certificate from the test CA with any subject and SANs.

    ``issue_client(name, cn, sans)``: ``cn`` None leaves the commonName out,
    ``sans`` are cryptography GeneralNames (URI, email, DirectoryName...).
    Returns the certificate and key paths.
    """
    root = tmp_path_factory.mktemp("issued")
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)

    def issue(name: str, cn: str | None, sans: list | None = None) -> tuple:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        attributes = [x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "tests")]
        if cn is not None:
            attributes.append(x509.NameAttribute(x509.NameOID.COMMON_NAME, cn))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(
                x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(sans), critical=False
            )
        issued = pkimod.Issued(builder.sign(ca_key, hashes.SHA256()), key)
        cert, key_path = root / f"{name}.pem", root / f"{name}.key"
        pkimod.write_public(cert, issued.cert_pem())
        pkimod.write_private(key_path, issued.key_pem())
        return cert, key_path

    return issue


@pytest.fixture
def server_factory(tmp_path: Path, pki: PkiPaths) -> Iterator:
    """Start real servers; every one is stopped by pid when the test ends."""
    started: list[ServerProcess] = []

    def start(config_text: str = "", name: str = "server", **kwargs) -> ServerProcess:
        server = ServerProcess(pki, tmp_path / name, config_text, **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(server_factory) -> ServerProcess:
    return server_factory()


@pytest.fixture
def readers() -> Iterator:
    """Start background readers (streamhelp.Reader); each is killed at the end."""
    started: list[Reader] = []

    def start(argv, out, shell=False) -> Reader:
        reader = Reader(argv, out, shell=shell)
        started.append(reader)
        return reader

    yield start
    for reader in started:
        reader.stop()


@pytest.fixture
def tmux(tmp_path):
    terminal = Tmux(tmp_path)
    try:
        terminal.start()
        yield terminal
    finally:
        terminal.kill()


@pytest.fixture
def guests(tmp_path: Path) -> Iterator[QemuGuestPool]:
    """qemu guests for one test, every one stopped at teardown."""
    yield from qemu_guest_pool(tmp_path / "qemu")
