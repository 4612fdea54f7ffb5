"""Hypothesis against the running server: random RPC calls, XML and stream requests.

One long-lived server for the module (stopped by pid at the end), a demo
guest ``vm1`` that a bystander follows throughout, and a guest ``sink`` that
never reads its input.  Whatever is thrown at it, the server never dies,
never answers 500 or shows a traceback, answers within a deadline, and its
memory stays bounded.  The default run is about 2,000 cases;
``VDSMCONSOLE_FUZZ_EXAMPLES=20000`` runs more.
"""

from __future__ import annotations

import base64
import http.client
import math
import os
import time
import urllib.parse
import xmlrpc.client
from contextlib import suppress
from typing import Any
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.hardening import (
    Bystander,
    demo_server,
    fd_count,
    read_until_closed,
    still_serving,
    tls_connect,
    tree,
)
from tests.serverproc import ServerProcess, client_context, wait_for
from tests.streamhelp import DEMO_CONFIG, rss_bytes

pytestmark = pytest.mark.e2e

TOTAL = int(os.environ.get("VDSMCONSOLE_FUZZ_EXAMPLES", "2000"))
DEADLINE = 10.0  # seconds for any one answer
PROTECTED = {"vm1", "sink"}  # the bystander's guest and the sink stay
# 1000 cases and more have warmed every code path: the server may grow by
# caches and a few hundred KB of queued input for the sink, not by the cases.
RSS_GROWTH_LIMIT = 40 * 1024 * 1024
# The baseline is taken after this many cases (before any, for short runs),
# so the bound is checked whatever the number of examples.
WARM_CASES = min(200, TOTAL // 10)

FUZZ_SETTINGS = settings(
    deadline=None,
    database=None,
    # fz wraps a whole run (before and after checks), not each example.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


class Fuzzed:
    """The module's server with its bystander and a keep-alive RPC connection."""

    def __init__(self, server: ServerProcess, bystander: Bystander) -> None:
        self.server = server
        self.bystander = bystander
        self.context = client_context(server.pki)
        self._rpc: http.client.HTTPSConnection | None = None
        self.cases = 0
        assert server.process is not None
        self.pid = server.process.pid
        self.rss_warm = rss_bytes(self.pid)

    def count(self) -> None:
        self.cases += 1
        if self.cases == WARM_CASES:
            self.rss_warm = rss_bytes(self.pid)

    def post_rpc(self, body: bytes) -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self._rpc is None:
                self._rpc = http.client.HTTPSConnection(
                    "127.0.0.1",
                    self.server.port,
                    context=self.context,
                    timeout=DEADLINE,
                )
            try:
                self._rpc.request(
                    "POST", "/RPC2", body=body, headers={"Content-Type": "text/xml"}
                )
                response = self._rpc.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionError):
                self._rpc.close()
                self._rpc = None
                if attempt:
                    raise
                continue
            if response.getheader("Connection", "").lower() == "close":
                self._rpc.close()
                self._rpc = None
            return response.status, data
        raise AssertionError("unreachable")

    def raw(self, request: bytes) -> bytes:
        """One request on a fresh connection: the status line and headers."""
        tls = tls_connect(self.server, timeout=DEADLINE)
        try:
            with suppress(OSError):
                tls.sendall(request)
            # A streaming 200 never ends by itself: the head is what counts,
            # plus whatever body came with it.
            return read_until_closed(tls, stop=b"\r\n\r\n")
        finally:
            tls.close()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, pki):
    workdir = tmp_path_factory.mktemp("fuzz")
    with demo_server(pki, workdir, DEMO_CONFIG) as (server, bystander):
        yield Fuzzed(server, bystander)


@pytest.fixture
def fz(fuzzed):
    """The module's server; after each fuzz run it must still serve everyone."""
    log_start = len(fuzzed.server.log())
    yield fuzzed
    still_serving(fuzzed.server, fuzzed.bystander, "vm1")
    new_log = fuzzed.server.log()[log_start:]
    assert "Traceback" not in new_log, new_log[-5000:]


# -- strategies -----------------------------------------------------------------

METHODS = [
    "ping",
    "getVdsCapabilities",
    "list",
    "create",
    "destroy",
    "getVmStats",
    "getAllVmStats",
    "consoleRead",
    "consoleWrite",
    "system.listMethods",
    "system.methodHelp",
    "system.methodSignature",
]
VM_IDS = ["vm1", "sink", "fuzz-a", "fuzz-b.1", "nosuch", "a" * 64, "a" * 65, ".."]

vm_ids = st.sampled_from(VM_IDS) | st.text(max_size=70)
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.sampled_from(
    [0, -1, 1, 2**31 - 1, 2**31, 2**32, 2**62]
)
scalars = (
    ints
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=200)
    | st.binary(max_size=2000)
    | vm_ids
    | st.from_regex(r"[0-9]{1,25}", fullmatch=True)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.text(max_size=12)
            | st.sampled_from(
                ["vmId", "console", "type", "command", "path", "host", "port"]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)
console_specs = st.fixed_dictionaries(
    {"type": st.sampled_from(["pty", "unix", "tcp", "spawn", "bogus"])},
    optional={
        "path": st.sampled_from(["/nonexistent/fuzz/sock", "relative", ""]),
        "host": st.sampled_from(["127.0.0.1", "", "no.such.host.invalid"]),
        "port": st.sampled_from([0, 9, 70000, -1]),
        "command": st.sampled_from(["mute", "nope", "", "../../bin/sh"]),
    },
)
create_params = st.fixed_dictionaries(
    {"vmId": vm_ids}, optional={"console": console_specs | values}
)


def xml_value(value: Any) -> str:
    """Marshal like a lenient client: <i8> for wide ints, text as it is."""
    if isinstance(value, bool):
        return f"<value><boolean>{int(value)}</boolean></value>"
    if isinstance(value, int):
        tag = "int" if -(2**31) <= value < 2**31 else "i8"
        return f"<value><{tag}>{value}</{tag}></value>"
    if isinstance(value, float):
        text = repr(value) if math.isfinite(value) else str(value)
        return f"<value><double>{text}</double></value>"
    if isinstance(value, bytes):
        return f"<value><base64>{base64.b64encode(value).decode()}</base64></value>"
    if isinstance(value, str):
        return f"<value><string>{escape(value)}</string></value>"
    if isinstance(value, list):
        inner = "".join(xml_value(v) for v in value)
        return f"<value><array><data>{inner}</data></array></value>"
    members = "".join(
        f"<member><name>{escape(k)}</name>{xml_value(v)}</member>"
        for k, v in value.items()
    )
    return f"<value><struct>{members}</struct></value>"


def xml_call(method: str, params: list[Any]) -> bytes:
    body = "".join(f"<param>{xml_value(p)}</param>" for p in params)
    text = (
        f"<?xml version='1.0'?><methodCall><methodName>{escape(method)}</methodName>"
        f"<params>{body}</params></methodCall>"
    )
    # Surrogates and the like are sent as they come: the server must cope.
    return text.encode("utf-8", "surrogatepass")


@st.composite
def rpc_calls(draw: st.DrawFn, nested: bool = True) -> tuple[str, list[Any]]:
    if nested and draw(st.integers(0, 9)) == 0:
        # A multicall of random calls (each as constrained as one alone),
        # with now and then an element that is not a call at all.
        calls = draw(
            st.lists(
                rpc_calls(nested=False).map(
                    lambda c: {"methodName": c[0], "params": c[1]}
                )
                | values,
                max_size=4,
            )
        )
        return "system.multicall", [calls]
    method = draw(st.sampled_from(METHODS) | st.text(max_size=40))
    if method == "create" and draw(st.booleans()):
        params: list[Any] = [draw(create_params)]
    elif method in ("consoleRead", "consoleWrite", "getVmStats", "destroy"):
        params = [draw(vm_ids)] + draw(st.lists(values, max_size=3))
    else:
        params = draw(st.lists(values, max_size=4))
    if params and isinstance(params[0], str) and params[0] in PROTECTED:
        # The bystander's guest takes no random input and is not destroyed.
        assume(method != "destroy")
        assume(method != "consoleWrite" or params[0] == "sink")
    if method == "create" and params and isinstance(params[0], dict):
        vm_id = params[0].get("vmId")
        assume(not (isinstance(vm_id, str) and vm_id in PROTECTED))
    return method, params


KNOWN_CODES = {0, 1, 4, 11, 44, 100}


def check_rpc_answer(status: int, data: bytes) -> Any:
    assert status in (200, 413), status
    assert b"Traceback" not in data
    if status == 413:
        return None
    try:
        (result,), _ = xmlrpc.client.loads(data)
    except xmlrpc.client.Fault as fault:
        assert fault.faultCode in (8001, 8002), fault
        return fault
    if isinstance(result, list) and all(isinstance(a, list | dict) for a in result):
        for answer in result:  # a multicall's (a methodSignature's lists pass too)
            if isinstance(answer, dict):
                assert answer["faultCode"] in (8001, 8002), answer
            else:
                check_status(answer[0])
        return result
    if not isinstance(result, dict):
        return result  # system.listMethods and friends answer plainly
    check_status(result)
    return result


def check_status(result: Any) -> None:
    if not isinstance(result, dict):
        return  # system.listMethods and friends answer plainly
    code = result["status"]["code"]
    assert code != 16, result  # an internal error is a bug
    assert isinstance(code, int)


# -- the fuzz tests --------------------------------------------------------------


@settings(FUZZ_SETTINGS, max_examples=max(1, TOTAL * 2 // 5))
@given(call=rpc_calls())
def test_fuzz_rpc_calls(fz, call):
    """Random methods and parameters over XML-RPC: a status or a Fault, never 16."""
    fz.count()
    method, params = call
    started = time.monotonic()
    status, data = fz.post_rpc(xml_call(method, params))
    assert time.monotonic() - started < DEADLINE
    check_rpc_answer(status, data)


VALID_CALL = xml_call("consoleRead", ["vm1", 0, 100])


@settings(FUZZ_SETTINGS, max_examples=max(1, TOTAL // 5))
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, len(VALID_CALL)), st.integers(0, 8), st.binary(max_size=8)
        ),
        min_size=1,
        max_size=6,
    )
)
def test_fuzz_mangled_xml(fz, edits):
    """A valid call with random bytes cut, inserted or replaced: never a 500."""
    fz.count()
    body = bytearray(VALID_CALL)
    for position, cut, insert in edits:
        body[position : position + cut] = insert
    started = time.monotonic()
    status, data = fz.post_rpc(bytes(body))
    assert time.monotonic() - started < DEADLINE
    check_rpc_answer(status, data)


STREAM_METHODS = [b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH"]
QUERY_KEYS = ["offset", "tail", "follow", "duplex", "x", ""]
query_values = (
    st.sampled_from(["0", "1", "-1", "", "99999999999999999999", "1e3"])
    | st.integers(0, 2**70).map(str)
    | st.text(max_size=10)
)


@st.composite
def stream_requests(draw: st.DrawFn) -> tuple[bytes, bytes, bool]:
    method = draw(
        st.sampled_from(STREAM_METHODS) | st.from_regex(rb"[A-Z]{1,10}", fullmatch=True)
    )
    vm_id = draw(vm_ids)
    if method in (b"POST", b"PUT"):
        assume(vm_id != "vm1")  # the bystander's guest takes no random input
    segment = urllib.parse.quote(vm_id.encode("utf-8", "surrogatepass"), safe="")
    path = draw(
        st.sampled_from(["/consoleStream/{}", "/consoleStream/{}/x", "/{}", "/RPC2"])
    ).format(segment)
    pairs = draw(
        st.lists(
            st.tuples(st.sampled_from(QUERY_KEYS) | st.text(max_size=5), query_values),
            max_size=4,
        )
    )
    if draw(st.booleans()):
        pairs.append(("follow", "0"))
    query = urllib.parse.urlencode(
        [
            (k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass"))
            for k, v in pairs
        ]
    )
    target = path + ("?" + query if query else "")
    body = draw(st.binary(max_size=300).filter(lambda b: b"\x04" not in b))
    chunked = draw(st.booleans())
    head = method + b" " + target.encode("ascii") + b" HTTP/1.1\r\nHost: x\r\n"
    head += b"Connection: close\r\n"
    if body and chunked:
        request = head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
            len(body),
            body,
        )
    elif body:
        request = head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    else:
        request = head + b"\r\n"
    return method, request, bool(body)


ALLOWED_STREAM_STATUS = {200, 400, 404, 405, 411, 413, 416, 501, 503}


@settings(FUZZ_SETTINGS, max_examples=max(1, TOTAL * 2 // 5))
@given(req=stream_requests())
def test_fuzz_stream_requests(fz, req):
    """Random methods, paths, queries and bodies on the stream endpoints: no 500."""
    fz.count()
    method, request, _ = req
    started = time.monotonic()
    answer = fz.raw(request)
    assert time.monotonic() - started < DEADLINE
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    status = int(answer[9:12])
    assert status in ALLOWED_STREAM_STATUS, answer[:300]
    assert b"Traceback" not in answer


def test_fuzz_left_the_server_healthy(fuzzed):
    """After the fuzzing: alive, memory bounded, fds and consoles back, no traceback."""
    server = fuzzed.server
    assert server.process is not None and server.process.poll() is None
    proxy = server.rpc()
    for entry in proxy.list()["vmList"]:
        if entry["vmId"] not in PROTECTED:
            assert proxy.destroy(entry["vmId"])["status"]["code"] == 0
    assert {e["vmId"] for e in proxy.list()["vmList"]} == PROTECTED
    still_serving(server, fuzzed.bystander, "vm1")
    pid = server.process.pid
    growth = rss_bytes(pid) - fuzzed.rss_warm
    print(f"fuzz: {fuzzed.cases} cases, RSS grew {growth} bytes after warm-up")
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew {growth} bytes over the fuzzing"
    # The bystander, a keep-alive RPC connection, the listener, logs, ptys:
    # nothing per fuzz case is left open.  (The connections just closed by
    # the calls above may take the server a moment to let go of.)
    try:
        wait_for(lambda: fd_count(pid) < 60, 10, "the fds of closed connections")
    except AssertionError as e:
        fds = sorted(os.listdir(f"/proc/{pid}/fd"))
        raise AssertionError(f"{e}: {fds}") from None
    assert "Traceback" not in server.log()
    assert not any(p.startswith("..") for p in tree(server.state_dir))
