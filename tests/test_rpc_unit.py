"""The XML-RPC resource in memory (treq's StubTreq): VDSM status codes, no sockets."""

from __future__ import annotations

import time
import xmlrpc.client
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from tests.rpchelp import RPC, code
from vdsmconsole.server.config import Config
from vdsmconsole.server.context import ServerContext
from vdsmconsole.server.service import build_context
from vdsmconsole.spec import METHODS
from vdsmconsole.status import success
from vdsmconsole.xmlrpcwire import dumps_response

SPAWN = {"demo": ("/usr/bin/python3", "-m", "vdsmconsole.demoguest")}
URL = "https://localhost/RPC2"


@pytest.fixture
def context(tmp_path: Path) -> ServerContext:
    config = Config(state_dir=tmp_path / "state", spawn_commands=SPAWN)
    return build_context(config, Clock())


@pytest.fixture
def rpc(context: ServerContext) -> RPC:
    return RPC(context)


# -- the basics ------------------------------------------------------------------------


def test_ping(rpc):
    """ping answers status Done and nothing else."""
    assert rpc.call("ping") == {"status": {"code": 0, "message": "Done"}}


@pytest.mark.parametrize("params", [(), (False,), (True,), (True, [])])
def test_list_empty(rpc, params):
    """list on an empty registry is Done with an empty vmList, in every form."""
    assert rpc.call("list", *params) == {
        "status": {"code": 0, "message": "Done"},
        "vmList": [],
    }


def test_list_names_unknown_vm_ids_skips_them(rpc):
    """list with vmList of unknown (valid) vmIds is Done with nothing listed."""
    assert rpc.call("list", True, ["vm1", "vm2"])["vmList"] == []


def test_capabilities_name_spawn_commands_not_argv(rpc):
    """getVdsCapabilities lists spawn command names, never their argv."""
    info = rpc.call("getVdsCapabilities")["info"]
    assert info["spawnCommands"] == ["demo"]
    assert set(info["sourceTypes"]) == {"pty", "unix", "tcp", "spawn"}
    assert "vdsmconsole.demoguest" not in str(info)


def test_introspection_lists_vdsm_verbs(rpc):
    """system.listMethods names the VDSM verbs."""
    methods = xmlrpc.client.loads(
        rpc.post(xmlrpc.client.dumps((), "system.listMethods").encode())
    )[0][0]
    for name in ("ping", "list", "create", "destroy", "consoleRead", "consoleWrite"):
        assert name in methods


SIGNATURES = {
    "ping": [["struct"]],
    "getVdsCapabilities": [["struct"]],
    "list": [["struct"], ["struct", "boolean"], ["struct", "boolean", "array"]],
    "create": [["struct", "struct"]],
    "destroy": [["struct", "string"]],
    "getVmStats": [["struct", "string"]],
    "getAllVmStats": [["struct"]],
    "consoleRead": [
        ["struct", "string"],
        ["struct", "string", "int"],
        ["struct", "string", "int", "int"],
    ],
    "consoleWrite": [["struct", "string", "base64"]],
}


@pytest.mark.parametrize("method", sorted(SIGNATURES))
def test_method_signature_over_the_wire(rpc, method):
    """system.methodSignature answers each method's VDSM-shaped signatures."""
    body = xmlrpc.client.dumps((method,), "system.methodSignature").encode()
    assert xmlrpc.client.loads(rpc.post(body))[0][0] == SIGNATURES[method]


def test_every_server_method_is_in_the_spec_and_back(rpc):
    """The server's methods are exactly those spec.METHODS names (the table
    the client's command line reads its argument types from)."""
    methods = xmlrpc.client.loads(
        rpc.post(xmlrpc.client.dumps((), "system.listMethods").encode())
    )[0][0]
    assert {m for m in methods if not m.startswith("system.")} == set(METHODS)


# -- Faults only for what cannot be parsed or found ------------------------------------


def fault_of(body: bytes) -> xmlrpc.client.Fault:
    with pytest.raises(xmlrpc.client.Fault) as info:
        xmlrpc.client.loads(body)
    return info.value


def test_unknown_method_is_fault_8001(rpc):
    """An unknown method is Fault 8001, as VDSM and Twisted answer it."""
    assert (
        fault_of(rpc.post(xmlrpc.client.dumps((), "noSuchMethod").encode())).faultCode
        == 8001
    )


@pytest.mark.parametrize(
    "body",
    [
        b"\x00not xml<<",
        b"",
        b"<methodCall><methodName>ping</methodName>",
        b"<?xml version='1.0'?><methodCall><params></params></methodCall>",
        b"<methodCall><methodName>ping</methodName><params><param><value>"
        b"<int>x</int></value></param></params></methodCall>",
    ],
    ids=["garbage", "empty", "truncated", "no-method-name", "bad-int"],
)
def test_unparseable_call_is_fault(rpc, body):
    """A body that is not a well-formed call gets a Fault, not a status dict."""
    assert fault_of(rpc.post(body)).faultCode == 8002


# -- status codes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,params",
    [
        ("ping", (1,)),
        ("getAllVmStats", ("x",)),
        ("list", (True, [], 3)),
        ("consoleRead", ()),
        ("consoleWrite", ("vm",)),
        ("create", ()),
        ("create", ({}, {})),
        ("destroy", ()),
        ("getVmStats", ("a", "b")),
    ],
)
def test_wrong_arity_is_status_11_not_fault(rpc, method, params):
    """Too many or too few arguments is MissParam (11), not a Fault."""
    assert code(rpc.call(method, *params)) == 11


@pytest.mark.parametrize(
    "method,params",
    [
        ("consoleRead", ("nosuchvm",)),
        ("consoleRead", ("nosuchvm", 0, 10)),
        ("consoleWrite", ("nosuchvm", "text")),
        ("getVmStats", ("nosuchvm",)),
        ("destroy", ("nosuchvm",)),
    ],
)
def test_unknown_vm_id_is_code_1(rpc, method, params):
    """A well-formed vmId that is not registered is noVM (1)."""
    assert code(rpc.call(method, *params)) == 1


@pytest.mark.parametrize("vm_id", ["../x", "a/b", ".hidden", "", "a" * 65, 7])
@pytest.mark.parametrize(
    "method,rest",
    [
        ("consoleRead", ()),
        ("consoleWrite", ("x",)),
        ("getVmStats", ()),
        ("destroy", ()),
    ],
)
def test_malformed_vm_id_is_code_11(rpc, method, rest, vm_id):
    """A malformed vmId is MissParam (11) for every method that takes one."""
    assert code(rpc.call(method, vm_id, *rest)) == 11


def test_malformed_vm_id_in_list_is_code_11(rpc):
    """list with a malformed vmId in vmList is MissParam (11)."""
    assert code(rpc.call("list", True, ["../etc"])) == 11


def registry_untouched(context: ServerContext) -> None:
    assert context.registry.ids() == []
    assert not (context.config.state_dir / "registry.json").exists()
    assert not (context.config.state_dir / "registry.journal").exists()
    assert list((context.config.state_dir / "consoles").iterdir()) == []


@pytest.mark.parametrize(
    "params",
    [
        "not a struct",
        [],
        {},
        {"vmId": "vm1"},
        {"vmId": "vm1", "console": "pty"},
        {"vmId": "vm1", "console": {"type": "file", "path": "/etc/passwd"}},
        {"vmId": "vm1", "console": {"type": "pty", "path": "dev/pts/1"}},
        {"vmId": "vm1", "console": {"type": "pty"}},
        {"vmId": "vm1", "console": {"type": "tcp", "host": "h", "port": 0}},
        {"vmId": "vm1", "console": {"type": "tcp", "host": "h", "port": "ssh"}},
        {"vmId": "vm1", "console": {"type": "unix", "path": ""}},
        {"vmId": "../vm1", "console": {"type": "pty", "path": "/dev/pts/1"}},
        {"console": {"type": "pty", "path": "/dev/pts/1"}},
    ],
)
def test_create_malformed_is_11_and_registers_nothing(rpc, context, params):
    """create with a malformed description is MissParam (11); nothing is registered."""
    assert code(rpc.call("create", params)) == 11
    registry_untouched(context)


@pytest.mark.parametrize(
    "console",
    [
        {"type": "spawn", "command": "shell"},
        {"type": "spawn", "command": "/bin/sh"},
        {"type": "spawn", "command": ["/bin/sh", "-c", "id"]},
        {"type": "spawn", "command": ""},
    ],
    ids=["unnamed", "path", "argv", "empty"],
)
def test_create_spawn_of_unnamed_command_is_11(rpc, context, console):
    """spawn runs only commands the configuration names: anything else is 11."""
    result = rpc.call("create", {"vmId": "vm1", "console": console})
    assert code(result) == 11
    registry_untouched(context)


@pytest.mark.parametrize(
    ("console", "expected"),
    [
        ({"type": "tcp", "host": "10.1.2.3", "port": 80}, 103),
        ({"type": "unix", "path": "/run/docker.sock"}, 103),
        ({"type": "pty", "path": "/dev/ptmx"}, 103),
        ({"type": "pty", "path": "/etc/passwd"}, 103),
        ({"type": "pty", "path": "/dev/pts/999999"}, 11),
    ],
    ids=["tcp", "unix", "ptmx", "file", "missing-pty"],
)
def test_create_of_a_target_not_allowed_is_refused(rpc, context, console, expected):
    """[sources] refuses it: 103 (11 for a missing pty), nothing registered."""
    result = rpc.call("create", {"vmId": "vm1", "console": console})
    assert code(result) == expected, result
    registry_untouched(context)


# -- the wire format -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,tag",
    [
        (2**40, "i8"),
        (2**31 - 1, "int"),
        (2**31, "i8"),
        (-(2**31), "int"),
        (-(2**31) - 1, "i8"),
        (2**63 - 1, "i8"),
    ],
)
def test_wide_ints_marshal_as_i8(value, tag):
    """Ints beyond 32 bits go out as <i8> and xmlrpc.client reads them back."""
    body = dumps_response(success(nextOffset=value))
    assert f"<{tag}>{value}</{tag}>".encode() in body
    assert xmlrpc.client.loads(body)[0][0]["nextOffset"] == value


def test_wide_int_through_the_resource(tmp_path):
    """A 2**40 value in a real answer reaches the client intact."""
    config = Config(state_dir=tmp_path, log_file_bytes=2**40)
    rpc = RPC(build_context(config, Clock()))
    body = rpc.post(xmlrpc.client.dumps((), "getVdsCapabilities").encode())
    assert b"<i8>1099511627776</i8>" in body
    assert xmlrpc.client.loads(body)[0][0]["info"]["logFileBytes"] == 2**40


def test_none_never_reaches_the_wire(rpc, context, monkeypatch):
    """Values that are None are dropped from answers; the call still succeeds."""

    def stats(*args: object) -> dict:
        return {"vmId": "vm1", "state": "down", "reason": None, "x": [None, 1]}

    monkeypatch.setattr("vdsmconsole.server.rpc.stats", stats)
    result = rpc.call("getVmStats", "vm1")
    assert code(result) == 0
    assert result["statsList"] == [{"vmId": "vm1", "state": "down", "x": [1]}]


BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + b"".join(
        b'<!ENTITY lol%d "%s">\n'
        % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]>\n<methodCall><methodName>system.methodHelp</methodName><params><param>"
    b"<value><string>&lol9;</string></value></param></params></methodCall>"
)


def test_xml_bomb_is_refused_without_expansion(rpc):
    """A billion-laughs body gets a Fault at once; no entity is expanded."""
    started = time.monotonic()
    body = rpc.post(BILLION_LAUGHS)
    assert time.monotonic() - started < 1.0
    assert fault_of(body).faultCode == 8002
    assert b"lollol" not in body
    assert len(body) < 2000


def test_external_entity_is_refused(rpc, tmp_path):
    """A body with an external entity gets a Fault; the file is never read into it."""
    secret = tmp_path / "secret"
    secret.write_text("SECRET-MARKER")
    body = rpc.post(
        b'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY e SYSTEM "file://'
        + str(secret).encode()
        + b'">]>\n<methodCall><methodName>&e;</methodName></methodCall>'
    )
    # Expanded, the name would come back in "procedure SECRET-MARKER not found".
    assert fault_of(body).faultCode == 8002
    assert b"SECRET-MARKER" not in body


def test_unexpected_error_is_16_without_traceback(rpc, context, monkeypatch):
    """An internal error is code 16; the traceback goes to the log, not the client."""

    def broken() -> list[str]:
        raise RuntimeError("internal-detail-xyzzy")

    monkeypatch.setattr(context.registry, "ids", broken)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        body = rpc.post(xmlrpc.client.dumps((), "list").encode())
    finally:
        globalLogPublisher.removeObserver(events.append)
    result = xmlrpc.client.loads(body)[0][0]
    assert code(result) == 16
    for leak in (b"Traceback", b"internal-detail-xyzzy", b"RuntimeError", b".py"):
        assert leak not in body
    logged = [e["log_failure"] for e in events if "log_failure" in e]
    assert any(f.check(RuntimeError) for f in logged)


@pytest.mark.parametrize(
    "port", ["²", "٣", "9" * 5000], ids=["superscript", "arabic", "huge"]
)
def test_create_with_odd_port_string_is_11(rpc, context, port):
    """A digit-like port string int() cannot read is MissParam (11), not 16."""
    console = {"type": "tcp", "host": "h", "port": port}
    assert code(rpc.call("create", {"vmId": "vm1", "console": console})) == 11
    registry_untouched(context)


@pytest.mark.parametrize(
    "vm_list", [5, "vm1", {"vm1": 1}], ids=["int", "str", "struct"]
)
def test_list_with_non_array_vm_list_is_11(rpc, vm_list):
    """list(True, X) with a vmList that is not an array is MissParam (11)."""
    assert code(rpc.call("list", True, vm_list)) == 11
