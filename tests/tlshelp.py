"""TLS test helpers: a PKI under a temporary directory whose CRL and server
certificate tests can change, and a fake reactor whose clock reads the real
time (the certificates are real)."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock

from vdsmconsole import pki as pkimod
from vdsmconsole.pki import Issued
from vdsmconsole.server.tls.files import TLSFiles


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def now_clock() -> MemoryReactorClock:
    """A fake reactor whose clock reads the real time (certificates are real)."""
    clock = MemoryReactorClock()
    clock.advance(time.time())
    return clock


class Pki:
    """A PKI under tmp_path: CA, server certificate, CRL, and more on demand."""

    def __init__(self, root: Path) -> None:
        self.paths = pkimod.init_pki(root, hostname="localhost")
        self.ca = pkimod.load_issued(self.paths.ca_cert, self.paths.ca_key)
        self.crl = root / "crl.pem"
        self.write_crl([])

    def files(self, crl: bool = True) -> TLSFiles:
        p = self.paths
        return TLSFiles(
            p.ca_cert, p.server_cert, p.server_key, self.crl if crl else None
        )

    def write_crl(self, revoked: list[Issued], ca: Issued | None = None) -> None:
        crl = pkimod.make_crl(ca or self.ca, [r.cert for r in revoked])
        tmp = self.crl.with_suffix(".new")
        tmp.write_bytes(pkimod.crl_pem(crl))
        tmp.replace(self.crl)

    def renew_server(self, **kwargs) -> Issued:
        renewed = pkimod.issue(
            self.ca, "localhost", sans=["localhost"], server=True, **kwargs
        )
        pkimod.write_private(self.paths.server_key, renewed.key_pem())
        pkimod.write_public(self.paths.server_cert, renewed.cert_pem())
        return renewed
