"""``init_pki`` and ``vdsmconsole pki init``: VDSM's layout, safe keys, right usages."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vdsmconsole.pki import PkiPaths, init_pki

REPO = Path(__file__).resolve().parent.parent
LAYOUT = {
    "certs/cacert.pem",
    "certs/vdsmcert.pem",
    "certs/enginecert.pem",
    "keys/vdsmkey.pem",
    "keys/enginekey.pem",
    "keys/cakey.pem",
}


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def ekus(cert: x509.Certificate) -> set:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return {str(name.value) for name in ext.value}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("pki") / "vdsm", hostname="host1.example")


def test_layout_is_vdsms(made):
    """init_pki writes exactly VDSM's files: CA, server pair, engine pair, CA key."""
    files = {str(p.relative_to(made.root)) for p in made.root.rglob("*") if p.is_file()}
    assert files == LAYOUT
    assert made.ca_cert == made.root / "certs/cacert.pem"
    assert made.server_cert == made.root / "certs/vdsmcert.pem"
    assert made.server_key == made.root / "keys/vdsmkey.pem"
    assert made.client_cert == made.root / "certs/enginecert.pem"
    assert made.client_key == made.root / "keys/enginekey.pem"


@pytest.mark.parametrize("attr", ["ca_key", "server_key", "client_key"])
def test_keys_are_mode_0600(made, attr):
    """Every private key is readable by its owner only."""
    assert stat.S_IMODE(getattr(made, attr).stat().st_mode) == 0o600


def test_keys_dir_not_world_readable(made):
    """The keys directory gives nothing to group or others."""
    assert stat.S_IMODE((made.root / "keys").stat().st_mode) & 0o077 == 0


@pytest.mark.parametrize(
    "cert_attr,key_attr",
    [
        ("ca_cert", "ca_key"),
        ("server_cert", "server_key"),
        ("client_cert", "client_key"),
    ],
)
def test_each_key_matches_its_certificate(made, cert_attr, key_attr):
    """Each key file holds the private key of the certificate next to it (EC P-256)."""
    key = load_pem_private_key(getattr(made, key_attr).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert key.public_key() == load(getattr(made, cert_attr)).public_key()


@pytest.mark.parametrize("attr", ["server_cert", "client_cert"])
def test_leaves_are_signed_by_the_ca(made, attr):
    """Server and client certificates verify against the CA and are not CAs."""
    ca, leaf = load(made.ca_cert), load(getattr(made, attr))
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca is False


def test_ca_is_a_ca(made):
    """The CA certificate is self-signed and may sign certificates."""
    ca = load(made.ca_cert)
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_server_sans_and_usage(made):
    """The server certificate names localhost, 127.0.0.1, ::1, the host; serverAuth."""
    server = load(made.server_cert)
    assert sans(server) == {"localhost", "127.0.0.1", "::1", "host1.example"}
    ext = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("::1") in ext.get_values_for_type(x509.IPAddress)
    assert "localhost" in ext.get_values_for_type(x509.DNSName)
    assert cn(server) == "host1.example"
    assert ekus(server) == {ExtendedKeyUsageOID.SERVER_AUTH}


def test_client_is_engine_with_client_auth(made):
    """The client certificate's CN is engine and its usage is clientAuth."""
    client = load(made.client_cert)
    assert cn(client) == "engine"
    assert ekus(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_default_hostname_is_this_host(tmp_path):
    """Without --hostname the server certificate names this host."""
    paths = init_pki(tmp_path)
    assert socket.gethostname() in sans(load(paths.server_cert))


def test_refuses_to_overwrite_without_force(tmp_path):
    """A second init in the same directory fails and leaves the PKI untouched."""
    paths = init_pki(tmp_path, hostname="a")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.pem")}
    with pytest.raises(FileExistsError):
        init_pki(tmp_path, hostname="b")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.pem")} == before
    init_pki(tmp_path, hostname="b", force=True)
    assert sans(load(paths.server_cert)) >= {"b"}
    assert paths.ca_cert.read_bytes() != before[paths.ca_cert]


def test_force_keeps_key_modes_0600(tmp_path):
    """Overwriting with force leaves key files 0600 even if they were loosened."""
    paths = init_pki(tmp_path, hostname="a")
    os.chmod(paths.server_key, 0o644)
    init_pki(tmp_path, hostname="a", force=True)
    assert stat.S_IMODE(paths.server_key.stat().st_mode) == 0o600


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vdsmconsole", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


@pytest.mark.e2e  # runs the real program
def test_cli_pki_init_prints_paths_not_keys(tmp_path):
    """`vdsmconsole pki init DIR` prints where the files are, never key material."""
    root = tmp_path / "pki"
    result = run_cli("pki", "init", str(root), "--hostname", "h.example")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    paths = PkiPaths(root)
    for path in (paths.ca_cert, paths.server_cert, paths.server_key):
        assert str(path) in result.stdout
    assert str(paths.client_cert) in result.stdout
    assert str(paths.client_key) in result.stdout
    assert "PRIVATE KEY" not in output
    assert "BEGIN" not in output
    assert stat.S_IMODE(paths.server_key.stat().st_mode) == 0o600
    assert "h.example" in sans(load(paths.server_cert))


@pytest.mark.e2e  # runs the real program
def test_cli_pki_init_refuses_existing_dir(tmp_path):
    """A second `pki init` on the same DIR exits 2 with one line and no traceback."""
    assert run_cli("pki", "init", str(tmp_path), "--hostname", "h").returncode == 0
    before = PkiPaths(tmp_path).ca_cert.read_bytes()
    result = run_cli("pki", "init", str(tmp_path), "--hostname", "h")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert PkiPaths(tmp_path).ca_cert.read_bytes() == before
