"""OpenSSL's verdicts in words an operator reads."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from vdsmconsole.identity import identity_from_certificate, printable


@runtime_checkable
class RefusalListener(Protocol):
    """A TLS protocol that keeps the reason its peer was refused, for its log
    line (``connection.AuditedTLSProtocol``)."""

    def noteRefusal(self, why: str, kind: str) -> None: ...


def utc_text(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_Codes = SSL.X509VerificationCodes


_NOT_FROM_OUR_CA = {
    _Codes.ERR_UNABLE_TO_GET_ISSUER_CERT,
    _Codes.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    _Codes.ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
    _Codes.ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
    _Codes.ERR_SELF_SIGNED_CERT_IN_CHAIN,
    _Codes.ERR_CERT_SIGNATURE_FAILURE,
    _Codes.ERR_CERT_UNTRUSTED,
}


# OpenSSL's verdict -> the ``reason`` label of vdsmconsole_tls_refusals_total:
# a fixed set, whatever the certificate says.
_KINDS = {
    _Codes.ERR_CERT_HAS_EXPIRED: "certificate_expired",
    _Codes.ERR_CERT_NOT_YET_VALID: "certificate_not_yet_valid",
    _Codes.ERR_CERT_REVOKED: "certificate_revoked",
    _Codes.ERR_INVALID_PURPOSE: "not_for_clients",
    _Codes.ERR_UNABLE_TO_GET_CRL: "crl_unusable",
    _Codes.ERR_CRL_HAS_EXPIRED: "crl_unusable",
    _Codes.ERR_CRL_NOT_YET_VALID: "crl_unusable",
    **dict.fromkeys(_NOT_FROM_OUR_CA, "unknown_ca"),
}


def refusal_kind(errnum: int) -> str:
    """A refusal's kind in one word, from a fixed set (metrics label)."""
    return _KINDS.get(errnum, "certificate_invalid")


def refusal_reason(cert: x509.Certificate, errnum: int, depth: int) -> str:
    """Why OpenSSL refused a client certificate, in words an operator reads."""
    if errnum == _Codes.ERR_CERT_HAS_EXPIRED:
        why = f"expired at {utc_text(cert.not_valid_after_utc)}"
    elif errnum == _Codes.ERR_CERT_NOT_YET_VALID:
        why = f"is not valid before {utc_text(cert.not_valid_before_utc)}"
    elif errnum in _NOT_FROM_OUR_CA:
        issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(issuer[0].value) if issuer else cert.issuer.rfc4514_string()
        why = f"is not signed by the configured CA (issuer {printable(name)})"
    elif errnum == _Codes.ERR_CERT_REVOKED:
        why = "is revoked (listed in the CRL)"
    elif errnum == _Codes.ERR_INVALID_PURPOSE:
        why = "is not for client use (its extendedKeyUsage lacks clientAuth)"
    elif errnum == _Codes.ERR_UNABLE_TO_GET_CRL:
        why = "cannot be checked: no CRL from its issuer"
    elif errnum == _Codes.ERR_CRL_HAS_EXPIRED:
        why = "cannot be checked: the CRL is past its nextUpdate"
    elif errnum == _Codes.ERR_CRL_NOT_YET_VALID:
        why = "cannot be checked: the CRL is not valid yet"
    else:
        why = f"failed verification (OpenSSL X509_V_ERR {errnum})"
    who = printable(identity_from_certificate(cert).name)
    if depth == 0:
        return f"client certificate {who} {why}"
    return f"certificate {who} (depth {depth} of the client's chain) {why}"


_VerifyCallback = Callable[[SSL.Connection, crypto.X509, int, int, int], bool]


def _verifier(require_client_usage: bool) -> _VerifyCallback:
    """OpenSSL's verdict, with its reason noted on the connection for the log.

    OpenSSL already checks a client certificate's purpose: one whose
    extendedKeyUsage lacks clientAuth fails with X509_V_ERR_INVALID_PURPOSE.
    ``require_client_usage=False`` forgives that one error on the leaf.
    """

    def verify(
        connection: SSL.Connection,
        certificate: crypto.X509,
        errnum: int,
        depth: int,
        ok: int,
    ) -> bool:
        if ok:
            return True
        if (
            errnum == _Codes.ERR_INVALID_PURPOSE
            and depth == 0
            and not require_client_usage
        ):
            return True
        protocol = connection.get_app_data()
        if isinstance(protocol, RefusalListener):
            protocol.noteRefusal(
                refusal_reason(certificate.to_cryptography(), errnum, depth),
                refusal_kind(errnum),
            )
        return False

    return verify


def _error_text(value: BaseException) -> str:
    """One readable phrase from an OpenSSL error list (or any other exception)."""
    if isinstance(value, SSL.Error | crypto.Error) and value.args:
        if isinstance(value.args[0], list):
            parts = [str(entry[-1]) for entry in value.args[0] if entry]
            if parts:
                return "; ".join(parts)
    text = str(value).strip() or type(value).__name__
    return text.splitlines()[0]
