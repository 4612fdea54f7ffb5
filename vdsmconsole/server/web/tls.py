"""TLS of the web listener: the server's certificate, no client certificate.

Browsers hold no client certificate; a token authorises each page and
websocket instead.  The key and certificate are those of the mTLS port's
current context, so a reload (SIGHUP) serves the new ones here too.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from vdsmconsole.server.tls.reload import ServerTLS


@implementer(IOpenSSLServerConnectionCreator)
class WebTLS:
    """An IOpenSSLServerConnectionCreator following the server's TLS files."""

    def __init__(self, server_tls: ServerTLS) -> None:
        self.server_tls = server_tls
        self._source: Any = None
        self._options: ssl.CertificateOptions | None = None

    def options(self) -> ssl.CertificateOptions:
        current = self.server_tls.current.options
        if self._options is None or current is not self._source:
            self._source = current
            self._options = ssl.CertificateOptions(
                privateKey=current.privateKey,
                certificate=current.certificate,
                extraCertChain=current.extraCertChain,
                raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            )  # ALPN: the site's (WebSite, listener.py)
        return self._options

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return self.options().serverConnectionForTLS(tlsProtocol)
