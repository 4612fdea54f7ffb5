"""Which names of a real certificate authorise, and how they are logged."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from vdsmconsole.accesslog import access_log_line
from vdsmconsole.authz import Authorizer
from vdsmconsole.identity import PeerIdentity, identity_from_certificate, log_safe

ADMIN1_DN = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin1")])


def load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_names_are_sorted_by_what_they_may_do(issue_client):
    """CN, DNS, IP authorise plainly; URI/email need a scheme; DirectoryName never."""
    cert, _ = issue_client(
        "all-kinds",
        "host1",
        [
            x509.DNSName("host1.example.com"),
            x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
            x509.UniformResourceIdentifier("spiffe://example.org/engine"),
            x509.RFC822Name("ops@example.org"),
            x509.DirectoryName(ADMIN1_DN),
            x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
        ],
    )
    identity = identity_from_certificate(load(cert))
    assert identity.names() == ("host1", "host1.example.com", "192.0.2.7")
    assert identity.qualified_names() == (
        "uri:spiffe://example.org/engine",
        "email:ops@example.org",
    )
    assert identity.other == ("dirname:CN=admin1", "rid:1.2.3.4")
    assert str(identity) == "host1"


def test_a_directory_name_is_shown_readably_not_as_a_repr(issue_client):
    """A certificate named only by a DirectoryName shows it as RFC 4514 text."""
    cert, _ = issue_client("dirname-only", None, [x509.DirectoryName(ADMIN1_DN)])
    identity = identity_from_certificate(load(cert))
    assert str(identity) == "dirname:CN=admin1"
    assert identity.names() == () and identity.qualified_names() == ()


@pytest.mark.parametrize(
    "san",
    [
        x509.UniformResourceIdentifier("admin1"),
        x509.RFC822Name("admin1"),
        x509.DirectoryName(ADMIN1_DN),
    ],
    ids=["uri", "email", "dirname"],
)
def test_only_cn_dns_and_ip_match_plain_patterns(issue_client, san):
    """A URI, email or DirectoryName SAN reading admin1 is not the name admin1."""
    cert, _ = issue_client(f"plain-{type(san).__name__}", "nobody", [san])
    identity = identity_from_certificate(load(cert))
    authz = Authorizer.from_mapping({"admin1": "admin", "*admin1*": "admin"})
    assert authz.role_for(identity) is None


@pytest.mark.parametrize(
    "san,pattern",
    [
        (x509.UniformResourceIdentifier("spiffe://example.org/engine"), "uri:spiffe:*"),
        (x509.RFC822Name("ops@example.org"), "email:*@example.org"),
    ],
)
def test_scheme_qualified_patterns_match_uri_and_email_sans(issue_client, san, pattern):
    """uri:/email: patterns match those SANs, and only those."""
    cert, _ = issue_client(f"qualified-{type(san).__name__}", "nobody", [san])
    identity = identity_from_certificate(load(cert))
    assert Authorizer.from_mapping({pattern: "operator"}).role_for(identity) == (
        "operator"
    )
    # A DNS name that reads like a qualified name is still only a DNS name.
    fake = PeerIdentity("nobody", sans=(pattern.replace("*", "x"),))
    assert Authorizer.from_mapping({pattern: "operator"}).role_for(fake) is None


@pytest.mark.parametrize(
    "raw,logged",
    [
        ("engine", "engine"),
        ("evil\nTLS reloaded", "evil\\nTLS reloaded"),
        ("tab\tcr\r", "tab\\tcr\\r"),
        ("esc\x1b[31mred", "esc\\x1b[31mred"),
        ("line\u2028sep", "line\\u2028sep"),
        ("back\\slash", "back\\\\slash"),
        ("né", "né"),
    ],
)
def test_log_safe_escapes_what_could_forge_a_line(raw, logged):
    """Control, separator and other invisible characters are escaped; text stays."""
    assert log_safe(raw) == logged
    assert str(PeerIdentity(raw)) == logged


def test_a_long_name_is_cut_in_logs():
    """A name is shown up to 256 characters, then '...'."""
    assert str(PeerIdentity("a" * 1000)) == "a" * 256 + "..."


def test_access_log_line_escapes_every_field():
    """Name, path and headers with control characters stay on one line."""
    headers = {b"referer": b"r\nx", b"user-agent": b'ua "\x1b[2J'}
    request = SimpleNamespace(
        getHeader=headers.get,
        getClientAddress=lambda: SimpleNamespace(host="192.0.2.1"),
        peerIdentity=PeerIdentity("ops\nFORGED line"),
        method=b"GET",
        uri=b"/RPC2?\r\nx",
        clientproto=b"HTTP/2",
        code=200,
        sentLength=5,
    )
    line = access_log_line("[ts]", request)
    assert line == (
        '"192.0.2.1" - ops\\nFORGED%20line [ts] "GET /RPC2?\\r\\nx HTTP/2" 200 5 '
        '"r\\nx" "ua%20%22\\x1b[2J"'
    )
