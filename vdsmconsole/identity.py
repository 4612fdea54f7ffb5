"""Who a client certificate names, which of those names authorise, how they are logged.

A certificate may carry many names; only some are fit to decide a role:

- the subject's first commonName, DNS names and IP addresses (SANs) are
  matched by plain patterns in ``[authorization]``;
- URI and email SANs only by patterns written with their scheme,
  ``uri:spiffe://example.org/engine`` or ``email:ops@example.org``: a URI
  or email SAN reading ``admin1`` must not pass for the host ``admin1``;
- every other SAN (a DirectoryName, a registeredID, an otherName) never
  authorises; it is only shown, in a readable form, when the certificate has
  nothing better to be called by.

Names come from whoever asked the CA, so none goes into a log as it is:
``log_safe`` escapes control and other non-printable characters (and the
backslash, so that an escape cannot be faked), and ``str(identity)`` is that
escaped form, the one every log line (access log, audit log, TLS lines) uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = [
    "ANONYMOUS",
    "QUALIFIED_SCHEMES",
    "PeerIdentity",
    "identity_from_certificate",
    "log_safe",
]

# Pattern prefixes that match URI and email SANs (and nothing else).
QUALIFIED_SCHEMES = ("uri:", "email:")
# The longest name shown in a log line; a certificate may carry much more.
SHOWN_NAME_CHARS = 256
_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def log_safe(text: str, limit: int | None = None) -> str:
    """``text`` with non-printable characters and ``\\`` escaped, Python-style."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    return "".join(out)


@dataclass(frozen=True)
class PeerIdentity:
    """Who is on the other end, as the CA vouched for it.

    ``sans`` are the DNS names and IP addresses (they authorise like the CN);
    ``uris`` and ``emails`` authorise only through scheme-qualified patterns;
    ``other`` (DirectoryName and the rest) is for display only.
    """

    cn: str
    sans: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    other: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The one name to call this peer by (raw; ``str()`` is the logged form)."""
        for name in (self.cn, *self.sans, *self.qualified_names(), *self.other):
            if name:
                return name
        return ""

    def __str__(self) -> str:
        return log_safe(self.name, SHOWN_NAME_CHARS) or "-"

    def names(self) -> tuple[str, ...]:
        """The names plain patterns match: the CN, then DNS and IP SANs."""
        return ((self.cn,) if self.cn else ()) + self.sans

    def qualified_names(self) -> tuple[str, ...]:
        """The names ``uri:``/``email:`` patterns match, with their scheme."""
        return tuple("uri:" + u for u in self.uris) + tuple(
            "email:" + e for e in self.emails
        )


ANONYMOUS = PeerIdentity(cn="")


def identity_from_certificate(cert: x509.Certificate) -> PeerIdentity:
    """The names of a (verified) certificate, sorted by what they may do."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return PeerIdentity(cn=cn)
    sans: list[str] = []
    uris: list[str] = []
    emails: list[str] = []
    other: list[str] = []
    for general in ext.value:
        if isinstance(general, x509.DNSName | x509.IPAddress):
            sans.append(str(general.value))
        elif isinstance(general, x509.UniformResourceIdentifier):
            uris.append(general.value)
        elif isinstance(general, x509.RFC822Name):
            emails.append(general.value)
        elif isinstance(general, x509.DirectoryName):
            other.append("dirname:" + general.value.rfc4514_string())
        elif isinstance(general, x509.RegisteredID):
            other.append("rid:" + general.value.dotted_string)
        elif isinstance(general, x509.OtherName):
            other.append("othername:" + general.type_id.dotted_string)
    return PeerIdentity(
        cn=cn,
        sans=tuple(sans),
        uris=tuple(uris),
        emails=tuple(emails),
        other=tuple(other),
    )
