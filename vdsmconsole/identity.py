"""Who is on the other end of a connection, as the CA vouched for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID


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


def identity_of(request: object) -> PeerIdentity:
    """The verified peer of a request (``ConsoleRequest.peerIdentity``);
    ``ANONYMOUS`` for anything that has none."""
    identity = getattr(request, "peerIdentity", ANONYMOUS)
    return identity if isinstance(identity, PeerIdentity) else ANONYMOUS


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


def printable(text: str, limit: int = 80) -> str:
    """A name from a certificate, quoted and escaped: it may come from anyone."""
    return repr(text[:limit])


def peer_address(transport: Any) -> str:
    """``host:port`` of a connection's peer, for log lines ("?" if unknown)."""
    peer = transport.getPeer() if transport is not None else None
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
