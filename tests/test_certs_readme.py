"""certs/README.rst: its openssl commands work, and the server runs on their result."""

from __future__ import annotations

import os
import re
import ssl
import stat
import subprocess
import sys
import textwrap
import xmlrpc.client
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.serverproc import ServerProcess
from tests.tools import require_tool
from vdsmconsole.pki import PkiPaths

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
README = REPO / "certs" / "README.rst"
LIST_CONSOLES = REPO / "contrib" / "examples" / "list_consoles.py"

KEYOPTS = {
    "ec-p256": "-algorithm EC -pkeyopt ec_paramgen_curve:P-256",
    "rsa-3072": "-algorithm RSA -pkeyopt rsa_keygen_bits:3072",
}


def code_blocks(text: str) -> list[str]:
    """The bodies of every ``.. code-block:: sh`` directive, dedented."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if re.fullmatch(r"\.\. code-block:: sh\s*", lines[i]):
            body = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i][0] == " "):
                body.append(lines[i])
                i += 1
            blocks.append(textwrap.dedent("\n".join(body)).strip() + "\n")
        else:
            i += 1
    return blocks


def test_readme_has_numbered_code_blocks():
    """The README's procedure is several sh blocks starting with the variables."""
    blocks = code_blocks(README.read_text())
    assert len(blocks) >= 5
    assert blocks[0].startswith("CA_DIR=${CA_DIR:-")
    assert "PKI=${PKI:-/etc/pki/vdsm}" in blocks[0]


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def ekus(certificate: x509.Certificate) -> set:
    return set(
        certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )


@pytest.fixture
def servers():
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


@pytest.mark.parametrize("keyopts", sorted(KEYOPTS))
def test_readme_commands_make_a_pki_the_server_accepts(tmp_path, servers, keyopts):
    """The README's commands, run as written, give a PKI the server and a client use."""
    require_tool("openssl", "openssl")
    script = tmp_path / "certs.sh"
    script.write_text("\n".join(code_blocks(README.read_text())))
    ca_dir, host_pki, engine_pki = tmp_path / "ca", tmp_path / "pki", tmp_path / "eng"
    env = dict(
        os.environ,
        CA_DIR=str(ca_dir),
        PKI=str(host_pki),
        ENGINE_PKI=str(engine_pki),
        HOST="localhost",
        KEYOPTS=KEYOPTS[keyopts],
    )
    result = subprocess.run(
        ["bash", "-e", "-u", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr

    # VDSM's layout, keys readable by their owner only.
    paths = PkiPaths(host_pki)
    for path in (paths.ca_cert, paths.server_cert, paths.server_key):
        assert path.is_file(), path
    engine_cert = engine_pki / "certs/enginecert.pem"
    engine_key = engine_pki / "keys/enginekey.pem"
    for key in (paths.server_key, engine_key, ca_dir / "cakey.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert not (host_pki / "keys/cakey.pem").exists()
    assert not list(host_pki.rglob("*.csr"))

    server_cert, client_cert = cert(paths.server_cert), cert(engine_cert)
    assert ekus(server_cert) == {ExtendedKeyUsageOID.SERVER_AUTH}
    assert ekus(client_cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    sans = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert {str(name.value) for name in sans.value} == {
        "localhost",
        "127.0.0.1",
        "::1",
    }
    cn = client_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "engine"

    # The real server on that PKI, and xmlrpc.client with the engine's pair.
    server = ServerProcess(paths, tmp_path / "server")
    servers.append(server)
    server.start()
    context = ssl.create_default_context(cafile=engine_pki / "certs/cacert.pem")
    context.load_cert_chain(engine_cert, engine_key)
    for host in ("localhost", "127.0.0.1"):
        proxy = xmlrpc.client.ServerProxy(
            f"https://{host}:{server.port}/RPC2", context=context
        )
        assert proxy.ping() == {"status": {"code": 0, "message": "Done"}}

    # contrib's example client works with the engine's directory as written.
    listing = subprocess.run(
        [
            sys.executable,
            str(LIST_CONSOLES),
            "--pki",
            str(engine_pki),
            f"localhost:{server.port}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split() == ["vmId", "status", "type", "source", "nextOffset"]
