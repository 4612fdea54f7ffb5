"""Odd certificate names on the real server: what they may do, how they are logged.

Issue 11: a newline in a CN split the access-log line (a forged line followed
it); a URI or email SAN reading ``admin1`` granted what the pattern
``admin1`` grants; a DirectoryName SAN was logged, and matched globs, as a
Python repr.  Certificates are real, issued by the test CA.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import xmlrpc.client

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.serverproc import ServerProcess, client_context, wait_for
from tests.streamhelp import DEMO_CONFIG, create_demo
from vdsmconsole import pki as pkimod

pytestmark = pytest.mark.e2e

DENIED = 101
FORGED = 'FORGED "POST /RPC2 HTTP/1.1" 200 - "-" "-"'
NEWLINE_CN = "ops\n" + FORGED
ADMIN1_DN = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin1")])
AUTHORIZATION = """
[authorization]
"engine" = "admin"
"admin1" = "admin"
"*CN=admin1*" = "admin"
"email:*@ops.example.org" = "operator"
"uri:spiffe://example.org/viewer" = "viewer"
"""


def proxy(server: ServerProcess, cert_key: tuple) -> xmlrpc.client.ServerProxy:
    context = client_context(server.pki, *cert_key)
    return xmlrpc.client.ServerProxy(server.url(), context=context)


def code(reply: dict) -> int:
    return reply["status"]["code"]


def audit_entries(server: ServerProcess) -> list[dict]:
    lines = (server.state_dir / "audit.log").read_text().splitlines()
    return [json.loads(line) for line in lines]  # every line whole JSON


def test_newline_in_a_cn_cannot_forge_log_lines(server_factory, issue_client):
    """A CN with a newline: one access-log line, one audit line, escaped."""
    server = server_factory(DEMO_CONFIG)
    create_demo(server, "vm1")
    cert_key = issue_client("newline", NEWLINE_CN)
    assert code(proxy(server, cert_key).ping()) == 0
    conn = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=client_context(server.pki, *cert_key)
    )
    conn.request("GET", "/consoleStream/vm1?follow=0")
    assert conn.getresponse().read()
    conn.close()
    escaped = "ops\\n" + FORGED.replace('"', "%22").replace(" ", "%20")
    wait_for(lambda: escaped in server.log(), 10, "the access-log lines")
    for line in server.log().splitlines():
        if "FORGED" in line:
            # Never a line of its own: escaped once (access log) or twice (the
            # audit's JSON in the server log).
            assert re.search(r"ops(\\)+nFORGED", line), line
    attaches = [e for e in audit_entries(server) if e["event"] == "attach"]
    assert [e["identity"] for e in attaches] == ["ops\\n" + FORGED]


def test_newline_in_a_refused_cn_is_one_tls_line(server_factory, tmp_path):
    """The TLS failure line for an odd CN names it escaped, on one line."""
    server = server_factory()
    other_ca = pkimod.make_ca("some other CA")
    issued = pkimod.issue(other_ca, "x\nTLS reloaded (SIGHUP): fake", client=True)
    cert, key = tmp_path / "odd.pem", tmp_path / "odd.key"
    pkimod.write_public(cert, issued.cert_pem())
    pkimod.write_private(key, issued.key_pem())
    with pytest.raises((ssl.SSLError, ConnectionError)):
        proxy(server, (cert, key)).ping()
    needle = "client certificate 'x\\nTLS reloaded (SIGHUP): fake' is not signed"
    wait_for(lambda: needle in server.log(), 10, "the TLS failure line")
    for line in server.log().splitlines():
        if "fake" in line:
            assert needle in line, line


@pytest.mark.parametrize(
    "name,cn,sans,expected",
    [
        ("uri-admin1", "someone", [x509.UniformResourceIdentifier("admin1")], DENIED),
        ("email-admin1", "someone", [x509.RFC822Name("admin1")], DENIED),
        ("dirname-admin1", None, [x509.DirectoryName(ADMIN1_DN)], DENIED),
        ("dns-admin1", "someone", [x509.DNSName("admin1")], 0),
        ("cn-admin1", "admin1", [], 0),
    ],
)
def test_only_cn_dns_and_ip_sans_match_plain_patterns(
    server_factory, issue_client, name, cn, sans, expected
):
    """ "admin1" grants admin to a CN or DNS SAN admin1, never to URI/email/DN."""
    server = server_factory(DEMO_CONFIG + AUTHORIZATION)
    cert_key = issue_client(name, cn, sans)
    reply = proxy(server, cert_key).create(
        {"vmId": "vm-" + name, "console": {"type": "spawn", "command": "mute"}}
    )
    assert code(reply) == expected, reply
    if expected == DENIED:
        (denial,) = [e for e in audit_entries(server) if e["event"] == "denied"]
        shown = cn or "dirname:CN=admin1"  # readable, not "<Name(...)>"
        assert denial["identity"] == shown


@pytest.mark.parametrize(
    "san,role_can_write",
    [
        (x509.RFC822Name("alice@ops.example.org"), True),  # operator
        (x509.UniformResourceIdentifier("spiffe://example.org/viewer"), False),
    ],
    ids=["email-operator", "uri-viewer"],
)
def test_scheme_qualified_patterns_grant_their_role(
    server_factory, issue_client, san, role_can_write
):
    """email:/uri: patterns grant their role to matching SANs, and no more."""
    server = server_factory(DEMO_CONFIG + AUTHORIZATION)
    create_demo(server, "vm1")
    rpc = proxy(server, issue_client("q-" + type(san).__name__, "nobody", [san]))
    assert code(rpc.ping()) == 0
    assert (code(rpc.consoleWrite("vm1", "echo hi\r")) == 0) is role_can_write
    assert code(rpc.destroy("vm1")) == DENIED
