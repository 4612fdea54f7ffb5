"""The bytes of every XML-RPC response, read as the specification shapes them."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.xmlrpcspec import SpecViolation, read_response
from vdsmconsole.core.registry import Registry
from vdsmconsole.graphics import parse_graphics
from vdsmconsole.server.vmview import summary, summary_xml
from vdsmconsole.spec import ConsoleSpec
from vdsmconsole.status import success, wire_safe
from vdsmconsole.xmlrpcwire import _WideMarshaller, dumps_response

# -- the checker itself refuses what strict clients refuse -----------------------

HEAD = b"<?xml version='1.0'?><methodResponse>"
TAIL = b"</methodResponse>"
STRUCT_FAULT = (
    b"<value><struct><member><name>faultCode</name><value><int>1</int></value>"
    b"</member><member><name>faultString</name><value><string>x</string></value>"
    b"</member></struct></value>"
)


@pytest.mark.parametrize(
    "body",
    [
        b"<params><params><param><value>x</value></param></params></params>",
        b"<fault><fault>" + STRUCT_FAULT + b"</fault></fault>",
        b"<params><param><value>a</value></param><param><value>b</value></param>"
        b"</params>",
        b"<params></params>",
        b"<params><param></param></params>",
        b"<params><param><value>x</value></param></params><fault>"
        + STRUCT_FAULT
        + b"</fault>",
        b"<fault><value><string>no struct</string></value></fault>",
        b"<params><param><value><int>2147483648</int></value></param></params>",
        b"<params><param><value><i8>9223372036854775808</i8></value></param></params>",
        b"<params><param><value><boolean>true</boolean></value></param></params>",
        b"<params><param><value><base64>!!!</base64></value></param></params>",
        b"<params><param><value><nil/></value></param></params>",
        b"<params><param><value><struct><member><value>x</value></member>"
        b"</struct></value></param></params>",
        b"<params><param><value><array><value>x</value></array></value></param>"
        b"</params>",
        b"<params>junk<param><value>x</value></param></params>",
    ],
    ids=[
        "params-in-params",
        "fault-in-fault",
        "two-params",
        "no-param",
        "param-without-value",
        "params-and-fault",
        "fault-not-struct",
        "int-beyond-32-bits",
        "i8-beyond-64-bits",
        "boolean-word",
        "bad-base64",
        "nil",
        "member-without-name",
        "array-without-data",
        "stray-text",
    ],
)
def test_checker_refuses_malformed_responses(body):
    """The spec checker refuses each shape a strict XML-RPC client refuses."""
    with pytest.raises(SpecViolation):
        read_response(HEAD + body + TAIL)


def test_checker_reads_a_well_formed_response():
    """The spec checker reads a hand-written, well-formed response and fault."""
    body = b"<params><param><value><i4>7</i4></value></param></params>"
    assert read_response(HEAD + body + TAIL) == ("params", 7)
    fault = HEAD + b"<fault>" + STRUCT_FAULT + b"</fault>" + TAIL
    assert read_response(fault) == ("fault", {"faultCode": 1, "faultString": "x"})


# -- what the server writes --------------------------------------------------------


def test_success_response_follows_the_spec():
    """A status struct goes out as one params/param/value holding a struct."""
    body = dumps_response(success())
    assert body.count(b"<params>") == 1
    assert read_response(body) == ("params", {"status": {"code": 0, "message": "Done"}})
    # And Python's lenient reader agrees.
    assert xmlrpc.client.loads(body)[0] == (success(),)


def test_fault_response_follows_the_spec():
    """A Fault goes out as one fault/value/struct of faultCode and faultString."""
    body = dumps_response(xmlrpc.client.Fault(8001, "procedure x not found"))
    assert body.count(b"<fault>") == 1
    assert read_response(body) == (
        "fault",
        {"faultCode": 8001, "faultString": "procedure x not found"},
    )


@pytest.mark.parametrize(
    ("number", "tag"),
    [
        (0, b"<int>"),
        (2**31 - 1, b"<int>"),
        (-(2**31), b"<int>"),
        (2**31, b"<i8>"),
        (-(2**31) - 1, b"<i8>"),
        (2**63 - 1, b"<i8>"),
        (-(2**63), b"<i8>"),
    ],
)
def test_integers_take_the_narrowest_tag_that_holds_them(number, tag):
    """Ints within 32 bits are <int>, wider ones <i8>, each within its range."""
    body = dumps_response({"nextOffset": number})
    assert tag in body
    assert read_response(body) == ("params", {"nextOffset": number})


@pytest.mark.parametrize("number", [2**63, -(2**63) - 1])
def test_integers_beyond_64_bits_are_refused(number):
    """An int no <i8> holds raises instead of writing a tag clients misread."""
    with pytest.raises(OverflowError):
        dumps_response({"nextOffset": number})


def test_binary_is_base64():
    """Binary data (every byte value) goes out as <base64> that decodes back."""
    data = bytes(range(256)) * 3
    body = dumps_response(success(data=xmlrpc.client.Binary(data)))
    assert read_response(body)[1]["data"] == data


def test_nested_structs_and_arrays_follow_the_spec():
    """Structs in arrays in structs, empty ones, markup and non-ASCII text."""
    value = {
        "status": {"code": 0, "message": "Done"},
        "vmList": [
            {
                "vmId": "vm-1",
                "console": {"type": "tcp", "host": "::1", "port": 5555},
                "source": {"state": "connected", "lastError": "", "nested": {}},
                "flags": [True, False],
                "ratio": 0.25,
            },
            {"vmId": "<&>\"'", "text": "héllo ✓", "list": [[], [{}]]},
        ],
        "empty": [],
    }
    assert read_response(dumps_response(value)) == ("params", value)


WIRE_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(value=st.dictionaries(st.text(max_size=6), WIRE_VALUES, max_size=4))
@settings(max_examples=200, deadline=None)
def test_fast_marshalling_writes_what_the_marshaller_wrote(value: dict) -> None:
    """dumps_response's own marshalling (``list`` of 1000 VMs) gives the very
    bytes of xmlrpc.client's Marshaller after wire_safe, for any value."""
    marshaller = _WideMarshaller("utf-8", allow_none=False)
    try:
        slow = marshaller.dumps((wire_safe(value),))
    except OverflowError:
        return
    expected = "<?xml version='1.0'?>\n<methodResponse>\n" + slow
    assert dumps_response(value) == (expected + "</methodResponse>\n").encode()


VNC = {"type": "vnc", "host": "127.0.0.1", "port": 5900}


class _FakeConsole:
    """What list's summary reads of a console: its vmId and state (and the
    registry its spec's type)."""

    def __init__(self, vm_id: str, spec: Any, *args: Any, **kwargs: Any) -> None:
        self.vm_id = vm_id
        self.spec = spec
        self.state = "connected"
        self.source = None

    def summary(self) -> dict[str, str]:
        return {"vmId": self.vm_id, "status": self.state}

    def start(self) -> None:
        pass


def test_list_summaries_are_marshalled_again_when_the_state_changes() -> None:
    """list's marshalled summaries (made once per console) follow each
    console's state, and a graphics-only VM's, and say the same as before."""
    registry = Registry(None, _FakeConsole)
    console = registry.create("vm1", ConsoleSpec("tcp", host="h", port=1))
    registry.create("vm2", None, graphics=parse_graphics([VNC]))

    def listed() -> list[Any]:
        shown = [summary_xml(registry, None, v) for v in registry.ids()]
        return xmlrpc.client.loads(dumps_response(success(vmList=shown)))[0][0][
            "vmList"
        ]

    assert listed() == [
        {"vmId": "vm1", "status": "connected"},
        {"vmId": "vm2", "status": "down"},
    ]
    assert listed() == [summary(registry, None, v) for v in registry.ids()]
    console.state = "down"
    assert listed()[0] == {"vmId": "vm1", "status": "down"}
