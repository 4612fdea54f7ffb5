"""Fixtures shared by the suite: a PKI, odd certificates, a real server."""

from __future__ import annotations

import datetime
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.serverproc import ServerProcess
from vdsmconsole import pki as pkimod
from vdsmconsole.pki import PkiPaths, init_pki

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip for ``reason``; under CI=true fail, for there a missing tool or
    privilege is a broken runner, not a reason to test less."""
    if IN_CI:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, package: str) -> str:
    """The path of a tool; under CI a missing tool fails, elsewhere it skips."""
    path = shutil.which(name)
    if path:
        return path
    unavailable(f"{name} not found (apt-get install {package})")


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
