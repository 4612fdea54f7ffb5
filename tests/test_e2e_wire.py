"""The real server's XML-RPC responses, read by a strict checker and by Perl's client.

Python's ``xmlrpc.client`` reads malformed responses without a word, so it
cannot be the only reader: every response here is also checked against the
specification's structure (``tests/xmlrpcspec.py``) and read by Perl's
RPC::XML over mutual TLS, whose parser refuses what the spec does not allow.
"""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import client_context
from tests.streamhelp import DEMO_CONFIG, PROMPT, create_demo
from tests.tools import require_tool, unavailable
from tests.xmlrpcspec import read_response
from vdsmconsole.xmlrpcwire import dumps_response

pytestmark = pytest.mark.e2e

PERL_CLIENT = Path(__file__).with_name("xmlrpc_client.pl")
PERL_MODULES = {
    "RPC::XML::Client": "librpc-xml-perl",
    "LWP::Protocol::https": "liblwp-protocol-https-perl",
}


@pytest.fixture(scope="module")
def perl() -> str:
    """perl with RPC::XML and HTTPS; under CI a missing module fails."""
    perl = require_tool("perl", "perl")
    for module, package in PERL_MODULES.items():
        probe = subprocess.run([perl, f"-M{module}", "-e1"], capture_output=True)
        if probe.returncode != 0:
            unavailable(f"perl module {module} missing (apt-get install {package})")
    return perl


@pytest.fixture
def demo_server(server_factory):
    server = server_factory(DEMO_CONFIG)
    create_demo(server, "demo")
    return server


def post(server, pki, body: bytes) -> bytes:
    """One POST /RPC2 over HTTP/1.1; the response's bytes as sent."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=client_context(pki), timeout=10
    )
    try:
        conn.request("POST", "/RPC2", body=body, headers={"Content-Type": "text/xml"})
        response = conn.getresponse()
        data = response.read()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/xml")
        assert response.getheader("Content-Length") == str(len(data))
        return data
    finally:
        conn.close()


def plain(value: Any) -> Any:
    """Python's reading of a value in the Perl client's JSON form."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, xmlrpc.client.Binary | bytes):
        data = value.data if isinstance(value, xmlrpc.client.Binary) else value
        return {"base64": base64.b64encode(data).decode()}
    return value


def perl_call(perl: str, server, pki, method: str, *args: Any) -> dict:
    """Call through Perl's RPC::XML::Client with the engine certificate."""
    result = subprocess.run(
        [
            perl,
            str(PERL_CLIENT),
            f"https://localhost:{server.port}/RPC2",
            str(pki.ca_cert),
            str(pki.client_cert),
            str(pki.client_key),
            method,
            json.dumps(args),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, f"Perl's client refused {method}: {result.stderr}"
    return json.loads(result.stdout)


CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("ping", ()),
    ("list", ()),
    ("list", (True,)),
    ("list", (True, ["demo"])),
    ("getVdsCapabilities", ()),
    ("getVmStats", ("demo",)),
    ("getAllVmStats", ()),
    ("consoleRead", ("demo", 0, 4096)),
    ("consoleWrite", ("demo", xmlrpc.client.Binary(b"\n"))),
    ("getVmStats", ("no-such-vm",)),
    ("consoleRead", ("demo", str(2**40))),
    ("create", ({"vmId": "wire", "console": {"type": "spawn", "command": "mute"}},)),
    ("destroy", ("wire",)),
    ("system.listMethods", ()),
    ("system.methodHelp", ("consoleRead",)),
    ("noSuchMethod", ()),
    (
        "system.multicall",
        (
            [
                {"methodName": "ping", "params": []},
                {"methodName": "getVmStats", "params": ["no-such-vm"]},
                {"methodName": "noSuchMethod", "params": []},
                "not a call",
            ],
        ),
    ),
    ("system.multicall", ("not an array",)),
]


def test_every_response_follows_the_spec(demo_server, pki):
    """Each method's response bytes (and each fault's) pass the spec checker."""
    for method, args in CALLS:
        body = xmlrpc.client.dumps(args, method).encode()
        data = post(demo_server, pki, body)
        kind, value = read_response(data)
        # Python's lenient reading is the same value, or the same fault.
        try:
            expected = xmlrpc.client.loads(data, use_builtin_types=True)[0][0]
        except xmlrpc.client.Fault as fault:
            expected = {"faultCode": fault.faultCode, "faultString": fault.faultString}
            assert kind == "fault", method
        assert value == expected, method
    for garbage in [b"\x00not xml<<", b"<methodCall></methodCall>"]:
        kind, value = read_response(post(demo_server, pki, garbage))
        assert kind == "fault"


def test_perl_client_reads_what_python_reads(perl, demo_server, pki):
    """Perl's strict client reads each answer over mTLS as Python's does."""
    proxy = demo_server.rpc()
    stable = [
        ("ping", ()),
        ("getVdsCapabilities", ()),
        ("consoleRead", ("demo", 0, 64)),
        ("getVmStats", ("no-such-vm",)),
        ("system.listMethods", ()),
        (
            "system.multicall",
            (
                [
                    {"methodName": "ping", "params": []},
                    {"methodName": "consoleRead", "params": ["demo", 0, 16]},
                    {"methodName": "noSuchMethod", "params": []},
                ],
            ),
        ),
    ]
    for method, args in stable:
        expected = getattr(proxy, method)(*args)
        assert perl_call(perl, demo_server, pki, method, *args) == {
            "result": plain(expected)
        }, method
    # Perl sends an offset beyond 32 bits as <i8>; Python can only send text.
    beyond = perl_call(perl, demo_server, pki, "consoleRead", "demo", 2**40)
    assert beyond == {"result": proxy.consoleRead("demo", str(2**40))}
    assert perl_call(perl, demo_server, pki, "noSuchMethod") == {
        "fault": {"faultCode": 8001, "faultString": "procedure noSuchMethod not found"}
    }


def test_perl_client_sends_structs_and_base64(perl, demo_server, pki):
    """create with a nested struct and consoleWrite of base64, sent from Perl."""
    spec = {"vmId": "from-perl", "console": {"type": "spawn", "command": "mute"}}
    created = perl_call(perl, demo_server, pki, "create", spec)["result"]
    assert created["status"]["code"] == 0, created
    assert created["vmList"][0]["vmId"] == "from-perl"
    listed = perl_call(perl, demo_server, pki, "list", True)["result"]["vmList"]
    assert sorted(vm["vmId"] for vm in listed) == ["demo", "from-perl"]
    written = perl_call(
        perl, demo_server, pki, "consoleWrite", "demo", {"base64": "echo perl\n"}
    )
    assert written["result"] == {
        "status": {"code": 0, "message": "Done"},
        "written": 10,
    }
    gone = perl_call(perl, demo_server, pki, "destroy", "from-perl")["result"]
    assert gone["status"]["code"] == 0


@pytest.mark.parametrize(
    "value",
    [
        {"nextOffset": 2**40, "lost": -(2**35), "small": 7},
        {"data": xmlrpc.client.Binary(bytes(range(256)) + PROMPT)},
        {"a": {"b": [{"c": [True, False, "x"]}, {}], "d": []}, "e": 0.5},
    ],
    ids=["i8", "base64", "nested"],
)
def test_perl_parser_reads_wide_ints_binary_and_nesting(perl, value):
    """Perl's parser reads the server's <i8>, <base64> and nested structs."""
    result = subprocess.run(
        [perl, str(PERL_CLIENT), "--parse"],
        input=dumps_response(value),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"result": plain(value)}
