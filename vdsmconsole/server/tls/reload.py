"""The port's connection creator: the current context, rebuilt on reload."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from zope.interface import implementer

from vdsmconsole.server.tls.files import DAY, TLSConfigError, TLSFiles, load_server_tls
from vdsmconsole.server.tls.verify import utc_text

# How often, at most, a new connection looks at the CRL file's modification.
log = Logger(namespace="vdsmconsole.tls")
CRL_CHECK_SECONDS = 1.0


FileStamp = tuple[int, int, int, int]


def file_stamp(path: Path | None) -> FileStamp | None:
    """What changes when a file is rewritten or replaced (None: unreadable)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The port's connection creator: the current context, rebuilt on demand.

    ``reload()`` re-reads the certificate, key, CA and CRL and, if they make
    a usable context, uses it for new connections; otherwise it logs one line
    and keeps the previous one.  A change of the CRL file (at most one look
    per ``CRL_CHECK_SECONDS``, when a connection arrives) reloads too.
    """

    def __init__(
        self,
        files: TLSFiles,
        clock: Any,  # IReactorTime; the zope interface confuses mypy
        *,
        require_client_usage: bool = True,
        expiry_warning_days: int = 30,
    ) -> None:
        self.files = files
        self.require_client_usage = require_client_usage
        self.expiry_warning_days = expiry_warning_days
        self._clock = clock
        self._crl_stamp = file_stamp(files.crl)
        self._last_crl_check = clock.seconds()
        self.current = load_server_tls(files, require_client_usage)

    # -- IOpenSSLServerConnectionCreator

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        self._check_crl()
        return self.current.options.serverConnectionForTLS(tlsProtocol)

    # -- reloading

    def reload(self, why: str = "reload requested") -> bool:
        """Build a new context from the files; False (and one log line) if not."""
        self._crl_stamp = file_stamp(self.files.crl)
        self._last_crl_check = self._clock.seconds()
        try:
            loaded = load_server_tls(self.files, self.require_client_usage)
        except Exception as e:  # noqa: BLE001 - whatever it is, keep serving
            # TLSConfigError names the file; anything else is still one line.
            reason = str(e) if isinstance(e, TLSConfigError) else repr(e)
            log.error(
                "TLS reload ({why}) failed, still using the previous certificates: "
                "{error}",
                why=why,
                error=reason,
            )
            return False
        self.current = loaded
        log.info("TLS reloaded ({why}): {summary}", why=why, summary=loaded.summary())
        self.warn_if_expiring()
        return True

    def _check_crl(self) -> None:
        if self.files.crl is None:
            return
        now = self._clock.seconds()
        if now - self._last_crl_check < CRL_CHECK_SECONDS:
            return
        self._last_crl_check = now
        if file_stamp(self.files.crl) != self._crl_stamp:
            self.reload("CRL file changed")

    # -- expiry

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC)

    def days_left(self) -> int:
        return self.current.days_left(self.now())

    def warn_if_expiring(self) -> bool:
        """Log a warning if the server certificate expires soon; True if it did."""
        left = self.current.not_after - self.now()
        if left > self.expiry_warning_days * DAY:
            return False
        if left <= datetime.timedelta(0):
            log.error(
                "server certificate {path} expired at {when}: clients refuse it; "
                "renew it and send SIGHUP",
                path=str(self.files.cert),
                when=utc_text(self.current.not_after),
            )
        else:
            log.warn(
                "server certificate {path} expires in {days} days, at {when}; "
                "renew it and send SIGHUP",
                path=str(self.files.cert),
                days=self.days_left(),
                when=utc_text(self.current.not_after),
            )
        return True

    def capabilities(self) -> dict[str, Any]:
        """What getVdsCapabilities tells about the server's TLS."""
        return {
            "certificateDaysLeft": self.days_left(),
            "certificateNotAfter": utc_text(self.current.not_after),
            "clientUsageRequired": self.require_client_usage,
            "crlChecked": self.current.revoked is not None,
        }
