"""VDSM status dicts, wire-safe values, vmId rules and console descriptions."""

from __future__ import annotations

import uuid
import xmlrpc.client

import pytest

from vdsmconsole.spec import (
    SOURCE_TYPES,
    ConsoleSpec,
    SpecError,
    is_valid_vm_id,
    parse_console_spec,
    validate_vm_id,
)
from vdsmconsole.status import (
    MESSAGES,
    Code,
    StatusError,
    failure,
    status,
    success,
    wire_safe,
)

SPAWN = {"demo": ("/usr/bin/python3", "-m", "vdsmconsole.demoguest")}

# -- status dicts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "code,value",
    [
        ("DONE", 0),
        ("NO_VM", 1),
        ("EXIST", 4),
        ("MISS_PARAM", 11),
        ("UNEXPECTED", 16),
        ("NO_IMPL", 44),
    ],
)
def test_codes_are_vdsms(code, value):
    """Status codes keep VDSM's numbers, and each has a message."""
    assert Code[code] == value
    assert MESSAGES[Code[code]]


def test_success_is_done_with_payload():
    """success() is status Done plus the payload keys."""
    assert success(vmList=[]) == {
        "status": {"code": 0, "message": "Done"},
        "vmList": [],
    }


def test_status_default_and_custom_message():
    """status() carries the code as a plain int and the default or given message."""
    result = status(Code.NO_VM)
    assert result == {"status": {"code": 1, "message": MESSAGES[Code.NO_VM]}}
    assert type(result["status"]["code"]) is int
    assert status(Code.NO_VM, "gone")["status"]["message"] == "gone"


def test_failure_from_status_error():
    """A StatusError becomes its code and message, nothing else."""
    error = StatusError(Code.MISS_PARAM, "vmId is missing")
    assert failure(error) == {"status": {"code": 11, "message": "vmId is missing"}}
    assert failure(StatusError(Code.EXIST))["status"]["message"] == MESSAGES[Code.EXIST]
    assert "11" in str(error)


def test_wire_safe_drops_none_at_any_depth():
    """None disappears from dicts and lists however deep; other values stay."""
    value = {
        "a": None,
        "b": [1, None, {"c": None, "d": [None, (None, 2)]}],
        "e": {"f": {"g": None, "h": 0, "i": "", "j": False}},
    }
    assert wire_safe(value) == {
        "b": [1, {"d": [[2]]}],
        "e": {"f": {"h": 0, "i": "", "j": False}},
    }


def test_wire_safe_result_marshals_without_allow_none():
    """After wire_safe a result marshals with allow_none=False (no <nil/>)."""
    value = wire_safe(success(vmList=[{"vmId": "a", "reason": None}], extra=None))
    body = xmlrpc.client.dumps((value,), methodresponse=True, allow_none=False)
    assert "<nil/>" not in body
    assert xmlrpc.client.loads(body)[0][0]["vmList"] == [{"vmId": "a"}]


def test_wire_safe_stringifies_keys():
    """Struct keys become strings (XML-RPC struct members are names)."""
    assert wire_safe({1: "x"}) == {"1": "x"}


# -- vmId ------------------------------------------------------------------------------

GOOD_IDS = [
    str(uuid.uuid4()),
    str(uuid.uuid4()).upper(),
    "a",
    "0",
    "vm-1.test_2",
    "a" * 64,
    "x" + "." * 63,
]
BAD_IDS = [
    "a" * 65,
    "",
    "../x",
    "..",
    ".",
    "a/b",
    "/abs",
    ".hidden",
    "-flag",
    "_under",
    "a\x00b",
    "vm\n",
    "a b",
    "vm:1",
    "é",
    "a\\b",
    None,
    1,
    b"vm",
    ["vm"],
]


@pytest.mark.parametrize("vm_id", GOOD_IDS)
def test_good_vm_ids(vm_id):
    """UUIDs and 1-64 letters, digits, '.', '_', '-' starting alphanumeric pass."""
    assert is_valid_vm_id(vm_id)
    assert validate_vm_id(vm_id) == vm_id


@pytest.mark.parametrize("vm_id", BAD_IDS, ids=repr)
def test_bad_vm_ids(vm_id):
    """Too long, empty, path-like, hidden, control characters and non-str fail."""
    assert not is_valid_vm_id(vm_id)
    with pytest.raises(SpecError):
        validate_vm_id(vm_id)


# -- console descriptions --------------------------------------------------------------


@pytest.mark.parametrize(
    "desc,expected",
    [
        (
            {"type": "pty", "path": "/dev/pts/3"},
            ConsoleSpec(type="pty", path="/dev/pts/3"),
        ),
        (
            {"type": "unix", "path": "/run/qemu/vm1.sock"},
            ConsoleSpec(type="unix", path="/run/qemu/vm1.sock"),
        ),
        (
            {"type": "tcp", "host": "127.0.0.1", "port": 4555},
            ConsoleSpec(type="tcp", host="127.0.0.1", port=4555),
        ),
        (
            {"type": "tcp", "host": "::1", "port": "4555"},
            ConsoleSpec(type="tcp", host="::1", port=4555),
        ),
        (
            {"type": "spawn", "command": "demo"},
            ConsoleSpec(type="spawn", command="demo"),
        ),
    ],
    ids=["pty", "unix", "tcp", "tcp-port-string", "spawn"],
)
def test_parse_each_type(desc, expected):
    """Each source type parses into exactly the fields it needs."""
    spec = parse_console_spec(desc, SPAWN)
    assert spec == expected
    assert spec.type in SOURCE_TYPES


@pytest.mark.parametrize(
    "desc",
    [
        {"type": "pty", "path": "/dev/pts/3"},
        {"type": "unix", "path": "/run/s"},
        {"type": "tcp", "host": "h", "port": 1},
        {"type": "spawn", "command": "demo"},
    ],
    ids=["pty", "unix", "tcp", "spawn"],
)
def test_to_wire_round_trips(desc):
    """to_wire() gives back a description that parses to the same spec."""
    spec = parse_console_spec(desc, SPAWN)
    assert spec.to_wire() == desc
    assert parse_console_spec(spec.to_wire(), SPAWN) == spec


def test_extra_keys_are_not_carried():
    """Unknown keys in a description do not reach the spec or the wire."""
    spec = parse_console_spec({"type": "pty", "path": "/dev/pts/1", "argv": ["sh"]})
    assert spec.to_wire() == {"type": "pty", "path": "/dev/pts/1"}


MALFORMED = {
    "not-a-struct": "pty",
    "list": [{"type": "pty"}],
    "none": None,
    "no-type": {"path": "/dev/pts/1"},
    "unknown-type": {"type": "file", "path": "/etc/passwd"},
    "type-not-str": {"type": 1},
    "pty-no-path": {"type": "pty"},
    "pty-empty-path": {"type": "pty", "path": ""},
    "pty-relative": {"type": "pty", "path": "dev/pts/1"},
    "pty-dotdot-relative": {"type": "pty", "path": "../dev/pts/1"},
    "pty-nul": {"type": "pty", "path": "/dev/pts/1\x00"},
    "pty-path-not-str": {"type": "pty", "path": 5},
    "unix-no-path": {"type": "unix"},
    "unix-relative": {"type": "unix", "path": "vm.sock"},
    "tcp-no-host": {"type": "tcp", "port": 22},
    "tcp-empty-host": {"type": "tcp", "host": "", "port": 22},
    "tcp-no-port": {"type": "tcp", "host": "h"},
    "tcp-port-0": {"type": "tcp", "host": "h", "port": 0},
    "tcp-port-65536": {"type": "tcp", "host": "h", "port": 65536},
    "tcp-port-negative": {"type": "tcp", "host": "h", "port": -1},
    "tcp-port-bool": {"type": "tcp", "host": "h", "port": True},
    "tcp-port-word": {"type": "tcp", "host": "h", "port": "ssh"},
    "tcp-port-float": {"type": "tcp", "host": "h", "port": 22.0},
    "spawn-no-command": {"type": "spawn"},
    "spawn-argv": {"type": "spawn", "command": ["/bin/sh", "-c", "id"]},
    "spawn-path": {"type": "spawn", "command": "/bin/sh"},
    "spawn-unnamed": {"type": "spawn", "command": "shell"},
}


@pytest.mark.parametrize("desc", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_descriptions_raise_spec_error(desc):
    """Every malformed description is a SpecError (becomes status 11), nothing else."""
    with pytest.raises(SpecError):
        parse_console_spec(desc, SPAWN)


def test_spawn_refused_without_configured_commands():
    """With no commands configured, no spawn description is accepted."""
    with pytest.raises(SpecError, match="not named in the configuration"):
        parse_console_spec({"type": "spawn", "command": "demo"})


@pytest.mark.parametrize(
    "port", ["²", "٣", "9" * 5000], ids=["superscript", "arabic", "huge"]
)
def test_odd_port_strings_are_spec_errors(port):
    """Digit-like port strings int() cannot read are SpecErrors, not crashes."""
    with pytest.raises(SpecError):
        parse_console_spec({"type": "tcp", "host": "h", "port": port})
