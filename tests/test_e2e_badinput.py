"""Bad input against the real server: each has a clear answer, and nobody else notices.

One server for the module, with a demo guest ``vm1`` that a bystander follows
throughout and a guest ``sink`` that takes input and never reads it.  After
every test the bystander must still receive fresh output, a fresh ping must
work, and the server log must hold no traceback.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import xmlrpc.client
from contextlib import suppress
from typing import Any

import h2.errors
import h2.events
import pytest

from tests.hardening import (
    H2Client,
    demo_server,
    http_exchange,
    read_until_closed,
    status_of,
    still_serving_after,
    tls_connect,
    tree,
)
from tests.serverproc import ServerProcess, client_context, wait_for
from tests.streamhelp import DEMO_CONFIG, stats

pytestmark = pytest.mark.e2e

MAX_BODY = 8 * 1024 * 1024
HANDSHAKE_TIMEOUT = 2
HEADER_TIMEOUT = 3
CONFIG = (
    DEMO_CONFIG
    + f"""
[server]
rpc_max_body = {MAX_BODY}
handshake_timeout = {HANDSHAKE_TIMEOUT}.0
header_timeout = {HEADER_TIMEOUT}.0
"""
)
QUICK = 5.0  # seconds: every bad call is answered well within this


@pytest.fixture(scope="module")
def served(tmp_path_factory, pki):
    with demo_server(pki, tmp_path_factory.mktemp("badinput"), CONFIG) as running:
        yield running


@pytest.fixture
def server(served) -> Any:
    """The module's server; afterwards it must still serve everyone else."""
    with still_serving_after(served) as server:
        yield server


def post_rpc(server: ServerProcess, body: bytes) -> tuple[int, bytes, float]:
    """POST a raw body to /RPC2 on a fresh connection: status, body, seconds."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=client_context(server.pki), timeout=60
    )
    started = time.monotonic()
    try:
        conn.request("POST", "/RPC2", body=body, headers={"Content-Type": "text/xml"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    return response.status, data, time.monotonic() - started


def fault_of(body: bytes) -> xmlrpc.client.Fault:
    with pytest.raises(xmlrpc.client.Fault) as info:
        xmlrpc.client.loads(body)
    return info.value


def call_body(method: str, params_xml: bytes) -> bytes:
    return (
        b"<?xml version='1.0'?><methodCall><methodName>%s</methodName><params>%s"
        b"</params></methodCall>" % (method.encode(), params_xml)
    )


def status_code(server: ServerProcess, method: str, *args: Any) -> int:
    return getattr(server.rpc(), method)(*args)["status"]["code"]


# -- XML-RPC bodies -------------------------------------------------------------

BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">'
        % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]>"
    + call_body("ping", b"<param><value><string>&lol9;</string></value></param>")[21:]
)
EXTERNAL_ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    + call_body("getVmStats", b"<param><value><string>&e;</string></value></param>")[
        21:
    ]
)
EXTERNAL_DTD = (
    b'<?xml version="1.0"?><!DOCTYPE methodCall SYSTEM "http://127.0.0.1:9/x.dtd">'
    + call_body("ping", b"")[21:]
)
PARAMETER_ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY % p SYSTEM "file:///etc/passwd">'
    b"%p;]>" + call_body("ping", b"")[21:]
)


@pytest.mark.parametrize(
    "body",
    [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD, PARAMETER_ENTITY],
    ids=["billion-laughs", "external-entity", "external-dtd", "parameter-entity"],
)
def test_entities_and_dtds_are_a_quick_fault(server, body):
    """DTDs and entities are refused before expansion: a Fault within 5 s."""
    status, data, seconds = post_rpc(server, body)
    assert status == 200
    fault = fault_of(data)
    assert fault.faultCode == 8002
    assert "DTD" in fault.faultString
    assert seconds < QUICK
    assert b"lollol" not in data and b"root:" not in data


def nested(levels: int, kind: str) -> bytes:
    if kind == "array":
        opening, closing = b"<value><array><data>", b"</data></array></value>"
        middle = b""
    else:
        opening = b"<value><struct><member><name>a</name>"
        closing = b"</member></struct></value>"
        middle = b"<value><int>1</int></value>"
    return opening * levels + middle + closing * levels


@pytest.mark.parametrize("kind", ["array", "struct"])
def test_100k_levels_of_nesting_are_a_clean_fault(server, kind):
    """100,000 nested arrays or structs: a Fault naming the nesting, no traceback."""
    body = call_body("getVmStats", b"<param>" + nested(100_000, kind) + b"</param>")
    assert len(body) < MAX_BODY
    status, data, seconds = post_rpc(server, body)
    assert status == 200
    fault = fault_of(data)
    assert "nested" in fault.faultString
    assert seconds < QUICK


def test_32_levels_are_parsed_and_answered(server):
    """The nesting limit leaves room: 32 levels parse, and a bad vmId is code 11."""
    body = call_body(
        "list",
        b"<param><value><boolean>0</boolean></value></param><param>"
        + nested(32, "array")
        + b"</param>",
    )
    status, data, _ = post_rpc(server, body)
    assert status == 200
    (result,), _ = xmlrpc.client.loads(data)
    assert result["status"]["code"] == 11


def huge_struct(total_bytes: int) -> bytes:
    member = (
        b"<member><name>k%07d</name><value><string>xxxxxxxx</string></value></member>"
    )
    count = (total_bytes - 200) // len(member % 0)
    members = b"".join(member % i for i in range(count))
    return call_body(
        "create", b"<param><value><struct>" + members + b"</struct></value></param>"
    )


def test_huge_struct_up_to_the_body_cap_is_answered(server):
    """A struct of ~70,000 members just under the body cap: code 11, quickly."""
    body = huge_struct(MAX_BODY - 1000)
    assert MAX_BODY - 2000 < len(body) <= MAX_BODY
    status, data, seconds = post_rpc(server, body)
    assert status == 200
    (result,), _ = xmlrpc.client.loads(data)
    assert result["status"]["code"] == 11  # no vmId among the junk
    assert seconds < QUICK
    assert len(data) < 64 * 1024  # the answer does not echo the junk back


def test_huge_struct_over_the_body_cap_is_413(server):
    """Over rpc_max_body: 413, and the connection is closed."""
    status, data, seconds = post_rpc(server, huge_struct(MAX_BODY + 100_000))
    assert status == 413
    assert seconds < QUICK


@pytest.mark.parametrize(
    "params",
    [
        b"<param><value><string>vm\xff\xfe</string></value></param>",
        b"<param><value>\xc3\x28</value></param>",
        b"<param><value><string>\xed\xa0\x80</string></value></param>",  # surrogate
        b"<param><value><string>a&#0;b</string></value></param>",  # NUL
    ],
    ids=["ff-fe", "bad-continuation", "surrogate", "nul-reference"],
)
def test_invalid_utf8_or_characters_in_the_body_are_a_fault(server, params):
    """Bytes that are not UTF-8 (or not XML characters) in a call: a Fault."""
    status, data, _ = post_rpc(server, call_body("getVmStats", params))
    assert status == 200
    assert fault_of(data).faultCode == 8002


def test_non_ascii_vmid_is_code_11(server):
    """A well-formed but foreign vmId (UTF-8 letters) is MissParam, not a Fault."""
    assert status_code(server, "getVmStats", "vm\u00e9\u4e2d") == 11


# -- vmIds that try to escape --------------------------------------------------

EVIL_VM_IDS = [
    "../escaped",
    "..",
    "vm/../../escaped",
    "%2e%2e",
    "%2e%2e%2fescaped",
    "a\x00b",
    "a" * 65,
    "/abs",
    "-dash",
    ".hidden",
    "",
]


@pytest.mark.parametrize("vm_id", EVIL_VM_IDS)
def test_evil_vmids_over_rpc_are_code_11_and_touch_nothing(server, vm_id):
    """create/getVmStats/consoleRead with an escaping vmId: code 11, no file made."""
    before = tree(server.workdir)
    spec = {"vmId": vm_id, "console": {"type": "spawn", "command": "mute"}}
    if "\x00" in vm_id:
        # xmlrpc.client would send a raw NUL, which is not XML: a Fault.
        status, data, _ = post_rpc(
            server,
            call_body(
                "getVmStats", b"<param><value><string>a\x00b</string></value></param>"
            ),
        )
        assert fault_of(data).faultCode == 8002
    else:
        assert server.rpc().create(spec)["status"]["code"] == 11
        assert status_code(server, "getVmStats", vm_id) == 11
        assert status_code(server, "consoleRead", vm_id, 0, 10) == 11
        assert status_code(server, "destroy", vm_id) == 11
    assert tree(server.workdir) - before <= {"server.log"}
    assert sorted(server.rpc().list()["vmList"], key=str) == sorted(
        [
            {"vmId": "sink", "status": "connected"},
            {"vmId": "vm1", "status": "connected"},
        ],
        key=str,
    )


@pytest.mark.parametrize(
    "path",
    [
        b"/consoleStream/../escaped",
        b"/consoleStream/..%2fescaped",
        b"/consoleStream/%2e%2e",
        b"/consoleStream/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        b"/consoleStream/a%00b",
        b"/consoleStream/" + b"a" * 65,
        b"/consoleStream/%ff%fe",
        b"/consoleStream/vm1/..",
        b"/consoleStream/vm1%2f..",
    ],
)
@pytest.mark.parametrize("method", [b"GET", b"POST"])
def test_evil_stream_paths_are_404_and_touch_nothing(server, path, method):
    """Escaping or malformed vmIds in a stream path: 404, no file or directory made."""
    before = tree(server.workdir)
    body = b"Content-Length: 5\r\n\r\nhello" if method == b"POST" else b"\r\n"
    answer = http_exchange(
        server,
        method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + body,
    )
    assert status_of(answer) == 404, answer[:200]
    assert tree(server.workdir) - before <= {"server.log"}


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /consoleStream/\xff\xfe HTTP/1.1",
        b"GET /consoleStream/vm1?\xff=1 HTTP/1.1",
        b"GET /consoleStream/a\x00b HTTP/1.1",
        b"GET /RPC2\xc3\x28 HTTP/1.1",
    ],
)
def test_raw_non_ascii_in_the_request_line_is_400(server, request_line):
    """Raw bytes that are not URL characters in the request line: a clean 400."""
    answer = http_exchange(
        server, request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status_of(answer) == 400


@pytest.mark.parametrize(
    "query,expected",
    [
        (b"offset=%ff", 400),
        (b"%ff%fe=1", 400),
        (b"offset=1%00", 400),
        (b"tail=%c3%28", 400),
        (b"follow=0&offset=%e2%80%ae1", 400),
    ],
)
def test_bad_utf8_in_stream_queries_is_400(server, query, expected):
    """Percent-encoded junk in a stream query: 400, never a 500."""
    answer = http_exchange(
        server,
        b"GET /consoleStream/vm1?"
        + query
        + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert status_of(answer) == expected


# -- offsets -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "query,expected",
    [
        ("offset=-1", 400),
        ("offset=99999999999999999999", 416),  # 20 digits: a number, past the end
        ("offset=999999999999999999999", 400),  # 21 digits: not a sane offset
        ("offset=18446744073709551616", 416),
        ("offset=1e9", 400),
        ("offset=0x10", 400),
        ("offset=%2B5", 400),
        ("offset= 5", 400),
        ("tail=-1", 400),
        ("tail=99999999999999999999", 200),
        ("offset=1&offset=2", 400),
    ],
)
def test_negative_or_huge_stream_offsets(server, query, expected):
    """Stream offsets: negative or malformed 400, past the end 416, never 500."""
    answer = http_exchange(
        server,
        f"GET /consoleStream/vm1?{query}&follow=0 HTTP/1.1\r\nHost: x\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert status_of(answer) == expected, answer[:200]


@pytest.mark.parametrize(
    "offset,max_bytes,expected",
    [
        (-1, 10, 11),
        (2**62, 10, 11),
        (2**63 - 1, 10, 11),
        ("99999999999999999999999", 10, 11),
        ("-5", 10, 11),
        (1.5, 10, 11),
        (True, 10, 11),
        (0, -1, 11),
        (0, 0, 11),
        (0, 2**62, 0),
        (0, "10", 0),
    ],
)
def test_negative_or_huge_rpc_offsets(server, offset, max_bytes, expected):
    """consoleRead with odd offsets or sizes: code 11 (or 0), never 16."""
    proxy = xmlrpc.client.ServerProxy(
        server.url(), context=client_context(server.pki), use_builtin_types=True
    )
    if isinstance(offset, int) and not isinstance(offset, bool) and offset > 2**31:
        # xmlrpc.client refuses to send ints beyond 32 bits: send <i8> by hand.
        body = call_body(
            "consoleRead",
            b"<param><value><string>vm1</string></value></param>"
            b"<param><value><i8>%d</i8></value></param>"
            b"<param><value><int>%d</int></value></param>" % (offset, max_bytes),
        )
        _, data, _ = post_rpc(server, body)
        (result,), _ = xmlrpc.client.loads(data)
    elif isinstance(max_bytes, int) and max_bytes > 2**31:
        body = call_body(
            "consoleRead",
            b"<param><value><string>vm1</string></value></param>"
            b"<param><value><int>0</int></value></param>"
            b"<param><value><i8>%d</i8></value></param>" % max_bytes,
        )
        _, data, _ = post_rpc(server, body)
        (result,), _ = xmlrpc.client.loads(data)
    else:
        result = proxy.consoleRead("vm1", offset, max_bytes)
    assert result["status"]["code"] == expected, result


# -- header floods and oversized lines -----------------------------------------


def test_header_flood_is_431_and_closed(server):
    """Thousands of headers over HTTP/1.1: 431 with Connection: close, then EOF."""
    headers = b"".join(b"X-Flood-%d: %d\r\n" % (i, i) for i in range(5000))
    answer = http_exchange(server, b"GET /RPC2 HTTP/1.1\r\nHost: x\r\n" + headers)
    assert status_of(answer) == 431
    assert b"\r\nConnection: close\r\n" in answer


def test_501_headers_are_431_500_are_served(server):
    """The HTTP/1.1 limit is Twisted's 500 headers: 500 are served, 501 are 431."""

    def request(count: int) -> bytes:
        # Host, Connection and Content-Length are three of them.
        headers = b"".join(b"X-H-%d: v\r\n" % i for i in range(count - 3))
        return (
            b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + headers
            + b"Content-Length: %d\r\n\r\n%s" % (len(PING), PING)
        )

    assert status_of(http_exchange(server, request(500))) == 200
    assert status_of(http_exchange(server, request(501))) == 431


PING = call_body("ping", b"")


@pytest.mark.parametrize(
    "raw,expected",
    [
        (b"GET /RPC2 HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
        (b"GET /RPC2 HTTP/1.1\r\nX-Big: " + b"a" * 17_000 + b"\r\n\r\n", 431),
        (b"GET /RPC2 HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n" * 2, 405),
        (b"GET /RPC2?" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /" + b"a" * 1_000_000, 414),
    ],
    ids=["100k-line", "17k-line", "9k-line", "20k-url", "1M-url-no-eol"],
)
def test_oversized_header_lines(server, raw, expected):
    """A line over 16 KiB: 431 (414 for the request line), never a silent hang."""
    if expected == 405:
        # 9 KB of header is within limits: the request is served (405 for GET).
        raw = raw.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1)
    answer = http_exchange(server, raw, timeout=10)
    assert status_of(answer) == expected, answer[:200]


def assert_goaway(client: H2Client, events: list[h2.events.Event]) -> None:
    """GOAWAY ENHANCE_YOUR_CALM, or (rarely) a reset that overtook it.

    The server closes right after its GOAWAY; when the client is still
    sending its oversized headers, the kernel answers those bytes with a
    reset, which may reach the client before it has read the GOAWAY.
    """
    terminated = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    if terminated:
        assert terminated[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    else:
        assert client.reset, events


def test_http2_header_flood_is_goaway(server):
    """HTTP/2: a header list over h2's 64 KiB is GOAWAY ENHANCE_YOUR_CALM."""
    base = [
        (":method", "GET"),
        (":path", "/RPC2"),
        (":scheme", "https"),
        (":authority", "x"),
    ]
    client = H2Client(server)
    try:
        flood = base + [(f"x-flood-{i}", "v" * 20) for i in range(5000)]
        _, _, events = client.request(flood)
        assert_goaway(client, events)
    finally:
        client.close()
    client = H2Client(server)
    try:
        status, _, _ = client.request(base + [(f"x-h-{i}", "v") for i in range(1000)])
        assert status == 405  # 1000 small headers fit in 64 KiB: served
    finally:
        client.close()


def test_http2_oversized_header_value_is_goaway(server):
    """HTTP/2: one 100 KB header value is GOAWAY, not a crash."""
    client = H2Client(server)
    try:
        _, _, events = client.request(
            [(":method", "GET"), (":path", "/"), (":scheme", "https")]
            + [(":authority", "x"), ("x-big", "a" * 100_000)]
        )
        assert_goaway(client, events)
    finally:
        client.close()


# -- slow clients: handshake and header deadlines ---------------------------------


def log_lines(server: ServerProcess, needle: str) -> list[str]:
    return [line for line in server.log().splitlines() if needle in line]


def test_tcp_client_that_sends_nothing_is_closed_after_handshake_timeout(server):
    """A TCP client that never starts TLS: closed at handshake_timeout, one log line."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    port = sock.getsockname()[1]
    started = time.monotonic()
    try:
        assert sock.recv(100) == b""  # closed by the server
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    waited = time.monotonic() - started
    assert HANDSHAKE_TIMEOUT - 0.5 < waited < HANDSHAKE_TIMEOUT + 5
    needle = f"127.0.0.1:{port} failed"
    wait_for(lambda: log_lines(server, needle), 5, "the log line")
    (line,) = log_lines(server, needle)
    assert f"no TLS handshake within {HANDSHAKE_TIMEOUT} s" in line


def test_half_a_client_hello_is_closed_after_handshake_timeout(server):
    """A client that stops in the middle of its ClientHello is kept until
    handshake_timeout (not cut at once), then closed."""
    started = time.monotonic()  # before the server accepts: its clock starts later
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a start
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""
        closed = time.monotonic() - started
    finally:
        sock.close()
    assert answer == b""
    # When the close came is measured, so a late wake-up of this test cannot
    # fail it; a close before the deadline (half a hello taken as a failed
    # handshake at once) can.  The 0.1 s is the server's wall clock vs ours.
    assert HANDSHAKE_TIMEOUT - 0.1 <= closed < HANDSHAKE_TIMEOUT + 5, closed


def test_tls_client_that_sends_no_request_gets_408(server):
    """TLS done, then silence: 408 and closed at header_timeout from the start."""
    sock = tls_connect(server, timeout=30)
    started = time.monotonic()
    try:
        answer = read_until_closed(sock)
    finally:
        sock.close()
    assert status_of(answer) == 408
    assert HEADER_TIMEOUT - 1 < time.monotonic() - started < HEADER_TIMEOUT + 5


def test_trickled_headers_are_cut_at_header_timeout(server):
    """Headers a byte at a time: 408 and closed at header_timeout, not whenever."""
    sock = tls_connect(server, timeout=30)
    sock.settimeout(0.25)  # the pace: each recv that times out is a pause
    request = b"GET /consoleStream/vm1 HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: y\r\n" * 50
    answer = b""
    started = time.monotonic()
    try:
        for byte in request:
            sock.sendall(bytes([byte]))
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            break
        sock.settimeout(10)
        answer += read_until_closed(sock)
    except (ssl.SSLError, OSError):
        pass
    finally:
        sock.close()
    assert status_of(answer) == 408, answer
    assert time.monotonic() - started < HEADER_TIMEOUT + 5
    wait_for(
        lambda: log_lines(server, "408 request headers not complete within"),
        5,
        "the 408 log line",
    )


def test_http2_client_that_sends_no_request_is_closed(server):
    """HTTP/2 preface and settings, then silence: closed at header_timeout."""
    client = H2Client(server, timeout=30)
    started = time.monotonic()
    try:
        read_until_closed(client.sock)
    finally:
        client.close()
    assert HEADER_TIMEOUT - 1 < time.monotonic() - started < HEADER_TIMEOUT + 5


def test_slow_body_after_quick_headers_is_not_cut(server):
    """header_timeout is about headers: a POST body may take longer than it."""
    sock = tls_connect(server, timeout=30)
    try:
        sock.sendall(
            b"POST /consoleStream/sink HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n"
        )
        deadline = time.monotonic() + HEADER_TIMEOUT + 1
        sock.settimeout(0.5)
        while time.monotonic() < deadline:
            with suppress(TimeoutError):
                assert sock.recv(100) != b"", "closed while the body was open"
        sock.settimeout(10)
        sock.sendall(b"1\r\nb\r\n0\r\n\r\n")
        answer = read_until_closed(sock, stop=b"}\n")  # head and body may part
        assert status_of(answer) == 200
        assert answer.endswith(b'{"written": 2}\n')
    finally:
        sock.close()


# -- chunked bodies that lie, clients that leave mid-chunk -------------------------


def writers(server: ServerProcess, vm_id: str = "sink") -> int:
    return stats(server, vm_id)["writers"]


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n",  # not hex
        b"5\r\nhelloEXTRA\r\n",  # more data than the size says
        b"-5\r\nhello\r\n",  # negative
        b"a\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n",  # less data than the size says
        b"5;" + b"x" * 2000 + b"\r\nhello\r\n",  # an endless size line
        b"0x5\r\nhello\r\n",
    ],
    ids=["not-hex", "too-much", "negative", "too-little", "long-size-line", "0x"],
)
@pytest.mark.parametrize("path", ["/consoleStream/sink", "/RPC2"])
def test_chunked_body_that_lies_is_400_and_closed(server, body, path):
    """A chunked body whose sizes lie: 400, connection closed, the writer gone."""
    answer = http_exchange(
        server,
        f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode()
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + body,
    )
    assert status_of(answer) == 400, answer[:200]
    wait_for(lambda: writers(server) == 0, 10, "the writer to go")


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: abc\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Transfer-Encoding: gzip\r\n",
    ],
)
def test_contradictory_body_framing_is_400(server, headers):
    """Both framings, a non-numeric length, an unknown coding: 400 and closed."""
    answer = http_exchange(
        server,
        b"POST /consoleStream/sink HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\nhello",
    )
    assert status_of(answer) == 400, answer[:200]


def test_duplex_with_a_lying_chunk_ends_and_cleans_up(server):
    """A duplex stream whose body turns malformed: closed, reader and writer gone."""
    before = stats(server, "vm1")
    sock = tls_connect(server)
    try:
        sock.sendall(
            b"POST /consoleStream/vm1?duplex=1 HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        wait_for(lambda: writers(server, "vm1") == 1, 10, "the duplex writer")
        sock.sendall(b"zz\r\n")
        rest = read_until_closed(sock)
    finally:
        sock.close()
    # Cut short, not a status line in the middle of the streamed body.
    assert b"HTTP/1.1 400" not in rest
    wait_for(lambda: writers(server, "vm1") == 0, 10, "the writer to go")
    wait_for(
        lambda: stats(server, "vm1")["readers"] == before["readers"],
        10,
        "the duplex reader to go",
    )


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_leaving_mid_chunk_is_cleaned_up(server, how):
    """A client that leaves in the middle of a chunk: writers back to 0."""
    sock = tls_connect(server)
    sock.sendall(
        b"POST /consoleStream/sink HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n100\r\nonly a part of the chunk"
    )
    wait_for(lambda: writers(server) == 1, 10, "the writer")
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
    sock.close()
    wait_for(lambda: writers(server) == 0, 10, "the writer to go")


def test_http2_stream_reset_mid_body_is_cleaned_up(server):
    """HTTP/2: a POST stream reset in the middle of its body leaves no writer."""
    client = H2Client(server)
    try:
        conn = client.conn
        conn.send_headers(
            1,
            [
                (":method", "POST"),
                (":path", "/consoleStream/sink"),
                (":scheme", "https"),
                (":authority", "x"),
            ],
        )
        conn.send_data(1, b"part of a body")
        client.sock.sendall(conn.data_to_send())
        wait_for(lambda: writers(server) == 1, 10, "the writer")
        conn.reset_stream(1)
        client.sock.sendall(conn.data_to_send())
        wait_for(lambda: writers(server) == 0, 10, "the writer to go")
        # The connection itself still serves another stream.
        status, _, _ = client.request(
            [
                (":method", "POST"),
                (":path", "/RPC2"),
                (":scheme", "https"),
                (":authority", "x"),
            ],
            PING,
        )
        assert status == 200
    finally:
        client.close()


def test_http2_follower_outlives_header_timeout(server):
    """An HTTP/2 follower is not cut by the first request's header deadline."""
    client = H2Client(server, timeout=30)
    conn = client.conn
    try:
        conn.send_headers(
            1,
            [
                (":method", "GET"),
                (":path", "/consoleStream/vm1"),
                (":scheme", "https"),
                (":authority", "x"),
            ],
            end_stream=True,
        )
        client.sock.sendall(conn.data_to_send())
        received = bytearray()
        ended: list[h2.events.Event] = []

        def pump() -> None:
            try:
                data = client.sock.recv(65536)
            except TimeoutError:
                return
            if not data:
                ended.append(h2.events.ConnectionTerminated())
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    received.extend(event.data)
                    conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(
                    event, h2.events.StreamEnded | h2.events.ConnectionTerminated
                ):
                    ended.append(event)
            client.sock.sendall(conn.data_to_send())

        client.sock.settimeout(0.5)  # the pace of the polling below
        deadline = time.monotonic() + HEADER_TIMEOUT + 1.5
        while time.monotonic() < deadline:
            pump()
            assert not ended, ended
        text = f"h2-{time.monotonic_ns()}"
        server.rpc().consoleWrite("vm1", f"echo {text}\r")
        wait_for(
            lambda: pump() or f"\r\n{text}\r\n".encode() in received,
            15,
            "the marker over HTTP/2",
        )
        assert not ended, ended
    finally:
        client.close()
