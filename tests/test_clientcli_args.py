"""The client command line's grammar, without running it: HOST[:PORT], the
words of an RPC as XML-RPC arguments, and escape characters."""

from __future__ import annotations

import pytest

from vdsmconsole.client.cli.args import (
    escape_name,
    parse_escape,
    parse_host_port,
    rpc_arguments,
)
from vdsmconsole.client.cli.output import UsageError
from vdsmconsole.spec import DEFAULT_PORT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host1", ("host1", DEFAULT_PORT)),
        ("host1:8443", ("host1", 8443)),
        ("0", ("localhost", DEFAULT_PORT)),
        ("0:1234", ("localhost", 1234)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1]", ("::1", DEFAULT_PORT)),
        ("[::1]:65535", ("::1", 65535)),
        ("::1", ("::1", DEFAULT_PORT)),  # a bare IPv6 address has no port
        ("fe80::1:2", ("fe80::1:2", DEFAULT_PORT)),
    ],
)
def test_host_port(text, expected):
    """host, host:port, [v6]:port, a bare v6 address; 0 is this host."""
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    "text", ["", ":80", "host:", "host:http", "host:0", "host:65536", "[::1", "[]:80"]
)
def test_bad_host_port(text):
    """An empty host, a missing, non-numeric or out-of-range port: UsageError."""
    with pytest.raises(UsageError):
        parse_host_port(text)


@pytest.mark.parametrize(
    ("method", "words", "expected"),
    [
        ("ping", [], ()),
        ("list", [], ()),
        ("list", ["true"], (True,)),
        ("list", ["fullStatus=yes", "vmList=a,b"], (True, ["a", "b"])),
        ("list", ["vmList=a"], (False, ["a"])),  # the default fills the gap
        ("getVmStats", ["123"], ("123",)),  # a vmId stays a string
        ("consoleRead", ["vm1"], ("vm1",)),
        ("consoleRead", ["vmId=vm1", "maxBytes=100"], ("vm1", 0, 100)),
        ("consoleRead", ["vm1", "7"], ("vm1", 7)),
        ("consoleWrite", ["vm1", "true"], ("vm1", "true")),  # data is text
        (
            "create",
            ["vmId=vm1", "console.type=spawn", "console.command=demo"],
            ({"vmId": "vm1", "console": {"type": "spawn", "command": "demo"}},),
        ),
        (
            "create",
            ['{"vmId": "vm1"}'],
            ({"vmId": "vm1"},),
        ),
        # Unknown methods: words coerced, key=value words become a struct.
        ("someMethod", ["1", "x", "true", "a.b=2"], (1, "x", True, {"a": {"b": 2}})),
        ("someMethod", ["--", "k=v"], ("k=v",)),
    ],
)
def test_rpc_arguments(method, words, expected):
    """Words become the method's positional XML-RPC arguments, typed by the
    method's parameters (from spec.METHODS) or by their look."""
    assert rpc_arguments(method, words) == expected


@pytest.mark.parametrize(
    ("method", "words", "message"),
    [
        ("destroy", [], "destroy needs vmId"),
        ("consoleRead", ["offset=5"], "consoleRead needs vmId"),
        ("ping", ["x"], "ping takes at most 0 arguments"),
        ("getVmStats", ["vm1", "vmId=vm2"], "getVmStats: vmId given twice"),
        ("consoleRead", ["vm1", "offset=x"], "offset must be an integer, not 'x'"),
        ("list", ["fullStatus=maybe"], "fullStatus must be true or false"),
        ("destroy", ["a.b=1"], "destroy has no parameter 'a'"),
        ("create", ["params=[1]"], "params must be a JSON object"),
        ("someMethod", ['{"bad'], "bad JSON"),
        ("someMethod", ["a=1", "a.b=2"], "a.b: a is already a value"),
    ],
)
def test_rpc_argument_mistakes(method, words, message):
    """A missing, repeated, mistyped or unknown parameter is one UsageError."""
    with pytest.raises(UsageError) as info:
        rpc_arguments(method, words)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "byte", "name"),
    [
        ("^]", 0x1D, "^]"),
        ("^a", 0x01, "^A"),
        ("^A", 0x01, "^A"),
        ("^?", 0x7F, "^?"),
        ("~", ord("~"), "~"),
        ("^", ord("^"), "^"),  # one character, even this one
    ],
)
def test_escape(text, byte, name):
    """^X, ^? or one ASCII character; the name says it back as typed."""
    assert parse_escape(text) == byte
    assert escape_name(byte) == name


@pytest.mark.parametrize("text", ["", "^1", "ab", "é", "^é"])
def test_bad_escape(text):
    """Anything else is a UsageError."""
    with pytest.raises(UsageError, match="bad escape character"):
        parse_escape(text)
