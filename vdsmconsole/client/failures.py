"""Low-level failures turned into one ``ClientError`` line; timeouts."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, error
from twisted.python.failure import Failure

from vdsmconsole.client.credentials import ClientCredentials
from vdsmconsole.client.errors import (
    ClientError,
    ConnectError,
    ConnectionLost,
    Timeout,
    TLSError,
)

# Alerts by which a server says it refused our certificate.
_CLIENT_CERT_ALERTS = (
    "unknown ca",
    "bad certificate",
    "certificate required",
    "certificate unknown",
    "certificate expired",
    "certificate revoked",
    "unsupported certificate",
    "access denied",
    "decrypt error",
)


def _reasons(reason: Failure) -> list[Failure]:
    """The innermost failures of Twisted's wrapped web client errors."""
    nested = getattr(reason.value, "reasons", None)
    if nested:
        found: list[Failure] = []
        for inner in nested:
            found.extend(_reasons(inner))
        return found
    return [reason]


def _ssl_reasons(value: SSL.Error) -> list[str]:
    texts = []
    for entry in value.args[0] if value.args and value.args[0] else []:
        if isinstance(entry, tuple) and entry:
            texts.append(str(entry[-1]))
        else:
            texts.append(str(entry))
    return texts or [str(value)]


def describe_failure(
    reason: Failure, where: str, credentials: ClientCredentials | None = None
) -> ClientError:
    """The ``ClientError`` for a failed request to ``where`` (host:port)."""
    if isinstance(reason.value, ClientError):
        return reason.value
    for inner in _reasons(reason):
        value = inner.value
        if isinstance(value, error.ConnectionRefusedError):
            return ConnectError(f"cannot connect to {where}: connection refused")
        if isinstance(value, error.DNSLookupError):
            return ConnectError(f"cannot connect to {where}: unknown host")
        if isinstance(value, error.TimeoutError):
            return Timeout(f"cannot connect to {where}: timed out")
        if isinstance(value, error.NoRouteError):
            return ConnectError(f"cannot connect to {where}: no route to host")
        if isinstance(value, VerificationError):
            return TLSError(
                f"TLS handshake with {where} failed: the server's certificate "
                f"is not valid for the name {where.rsplit(':', 1)[0]}",
                side="server",
            )
        if isinstance(value, SSL.Error):
            return _describe_ssl(value, where, credentials)
        if isinstance(value, error.ConnectError):
            detail = str(value).strip().rstrip(".") or type(value).__name__
            return ConnectError(f"cannot connect to {where}: {detail}")
    return ConnectionLost(f"connection to {where} lost: {_short(reason)}")


def _describe_ssl(
    value: SSL.Error, where: str, credentials: ClientCredentials | None
) -> TLSError:
    texts = _ssl_reasons(value)
    joined = "; ".join(texts)
    ca = f" ({credentials.ca})" if credentials else ""
    cert = f" ({credentials.cert})" if credentials else ""
    if any("certificate verify failed" in t for t in texts):
        return TLSError(
            f"TLS handshake with {where} failed: the server's certificate is "
            f"not trusted by our CA{ca}",
            side="server",
        )
    if any(alert in t for t in texts for alert in _CLIENT_CERT_ALERTS):
        return TLSError(
            f"TLS handshake with {where} failed: the server refused our client "
            f"certificate{cert} ({joined})",
            side="client",
        )
    return TLSError(f"TLS handshake with {where} failed: {joined}")


def _short(reason: Failure) -> str:
    inner = _reasons(reason)[0].value
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return text or type(inner).__name__


def _timed(
    clock: Any, d: defer.Deferred[Any], seconds: float | None, what: str
) -> defer.Deferred[Any]:
    """Cancel ``d`` after ``seconds``; the failure is then ``Timeout``."""
    if not seconds:
        return d
    expired: list[bool] = []

    def expire() -> None:
        expired.append(True)
        d.cancel()

    call = clock.callLater(seconds, expire)

    def done(result: Any) -> Any:
        if call.active():
            call.cancel()
        if expired and isinstance(result, Failure):
            raise Timeout(f"{what}: no answer within {seconds:g}s")
        return result

    return d.addBoth(done)
