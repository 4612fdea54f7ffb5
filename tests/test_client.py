"""The client library (vdsmconsole.client) against the real server.

Each test starts the server as a child process (``server_factory``) with the
demo guest as a spawn command, and talks to it with ``ConsoleClient`` on the
test's reactor.  A few tests of the pure parts need no server.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred

from tests.fakeguest import wait_until
from vdsmconsole.client import (
    BeyondEnd,
    ClientCredentials,
    ConnectError,
    ConsoleClient,
    CredentialsError,
    FDBodyProducer,
    NoSuchConsole,
    ResumingFollow,
    RPCFault,
    Stream,
    TLSError,
    dumps_call,
    loads_response,
)
from vdsmconsole.pki import PkiPaths, init_pki
from vdsmconsole.streamend import StreamEnd

pytestmark = pytest.mark.e2e

# No heartbeat: the guest's output is only what the tests type.
DEMO_CONFIG = (
    "[spawn.commands]\n"
    f'demo = ["{sys.executable}", "-m", "vdsmconsole.demoguest", "--fast",'
    ' "--heartbeat", "86400"]\n'
)
# Small retention, so that a flood pushes old bytes out of the log.
SMALL_CONFIG = DEMO_CONFIG + (
    "[console]\nring_bytes = 4096\nlog_file_bytes = 4096\nlog_keep_files = 0\n"
)


def credentials(pki: PkiPaths) -> ClientCredentials:
    return ClientCredentials.from_pki_dir(pki.root)


@pytest.fixture
def demo(server_factory):
    return server_factory(DEMO_CONFIG)


@pytest_twisted.async_yield_fixture
async def client(demo, pki):
    c = ConsoleClient("127.0.0.1", demo.port, credentials(pki), reactor, timeout=10)
    yield c
    await c.close()


async def create(client: ConsoleClient, vm_id: str) -> None:
    spec = {"vmId": vm_id, "console": {"type": "spawn", "command": "demo"}}
    result = await client.call("create", spec)
    assert result["status"]["code"] == 0, result
    # The prompt: the guest is up and reads its input.
    await wait_until(
        lambda: read_all(client, vm_id).addCallback(lambda d: b"demo# " in d),
        "the demo prompt",
        timeout=10,
    )


def read_all(client: ConsoleClient, vm_id: str):
    """Everything retained, by XML-RPC (a different path than the streams)."""

    async def read() -> bytes:
        data, offset = b"", 0
        while True:
            result = await client.call("consoleRead", vm_id, offset, 1024 * 1024)
            assert result["status"]["code"] == 0, result
            if not result["data"]:
                return data
            data += result["data"]
            offset = result["nextOffset"]

    return ensureDeferred(read())


async def end_of(client: ConsoleClient, vm_id: str) -> int:
    stats = await client.call("getVmStats", vm_id)
    return stats["statsList"][0]["nextOffset"]


# -- XML-RPC -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_call_returns_status_dicts_as_is(client):
    """call() answers the struct as is: Done for ping, code 1 for an unknown VM."""
    assert await client.call("ping") == {"status": {"code": 0, "message": "Done"}}
    answer = await client.call("getVmStats", "nope")
    assert answer["status"]["code"] == 1
    assert "nope" in answer["status"]["message"]


@pytest_twisted.ensureDeferred
async def test_call_fault_raises_rpcfault(client):
    """An unknown method is a Fault: RPCFault with its code, one line."""
    with pytest.raises(RPCFault) as info:
        await client.call("noSuchMethod")
    assert info.value.faultCode == 8001
    assert "\n" not in str(info.value)


def test_wide_ints_go_out_as_i8():
    """Offsets beyond 32 bits are marshalled as <i8>, and <i8> is read back."""
    body = dumps_call("consoleRead", ("vm", 2**40, 5))
    assert b"<i8>1099511627776</i8>" in body and b"<int>5</int>" in body
    response = (
        b"<?xml version='1.0'?><methodResponse><params><param><value><struct>"
        b"<member><name>nextOffset</name><value><i8>8589934592</i8></value></member>"
        b"<member><name>data</name><value><base64>aGk=</base64></value></member>"
        b"</struct></value></param></params></methodResponse>"
    )
    assert loads_response(response) == {"nextOffset": 2**33, "data": b"hi"}


# -- streams ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_follow_offset_and_tail_track_absolute_offsets(client):
    """follow(offset=N) and follow(tail=K) start where asked; offset tracks bytes."""
    await create(client, "vm1")
    retained = await read_all(client, "vm1")
    end = await end_of(client, "vm1")
    assert end == len(retained)

    got: list[bytes] = []
    stream = await client.follow("vm1", got.append, offset=10, follow=False)
    assert await stream.done is stream
    assert (stream.start_offset, stream.lost) == (10, 0)
    assert b"".join(got) == retained[10:end]
    assert stream.offset == end

    got.clear()
    stream = await client.follow("vm1", got.append, tail=7, follow=False)
    await stream.done
    assert stream.start_offset == end - 7
    assert b"".join(got) == retained[end - 7 : end]


@pytest_twisted.ensureDeferred
async def test_follow_live_delivers_output_as_it_comes(client):
    """A live follower sees each new line while the response stays open."""
    await create(client, "vm1")
    got = bytearray()
    stream = await client.follow("vm1", got.extend)
    start = stream.start_offset
    assert await client.send("vm1", b"echo live-one\n") == 14
    await wait_until(lambda: b"live-one\r\n" in got, "first output")
    assert not stream.done.called
    await client.send("vm1", b"echo live-two\n")
    await wait_until(lambda: b"live-two\r\n" in got, "second output")
    assert stream.offset == start + len(got)
    stream.close()
    assert await stream.done is stream


@pytest_twisted.ensureDeferred
async def test_follow_reports_bytes_no_longer_retained(server_factory, pki):
    """An offset older than anything retained starts at the oldest byte, lost told."""
    server = server_factory(SMALL_CONFIG)
    client = ConsoleClient("127.0.0.1", server.port, credentials(pki), reactor)
    try:
        await create(client, "vm1")
        await client.send("vm1", b"flood 50000\n")

        async def first_offset() -> int:
            stats = await client.call("getVmStats", "vm1")
            return stats["statsList"][0]["firstOffset"]

        await wait_until(
            lambda: ensureDeferred(first_offset()).addCallback(lambda n: n > 0),
            "old bytes to be dropped",
            timeout=10,
        )
        got = bytearray()
        stream = await client.follow("vm1", got.extend, offset=0, follow=False)
        await stream.done
        assert stream.lost == stream.start_offset > 0
        assert stream.offset == stream.start_offset + len(got)
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_follow_errors(client):
    """Beyond the end is BeyondEnd (416); an unknown console is NoSuchConsole."""
    await create(client, "vm1")
    end = await end_of(client, "vm1")
    with pytest.raises(BeyondEnd):
        await client.follow("vm1", lambda _: None, offset=end + 1000)
    with pytest.raises(NoSuchConsole) as info:
        await client.follow("nope", lambda _: None)
    assert str(info.value) == "Virtual machine does not exist: nope"
    with pytest.raises(NoSuchConsole):
        await client.send("nope", b"x")
    with pytest.raises(ValueError):
        client.follow("vm1", lambda _: None, offset=1, tail=1)


@pytest_twisted.ensureDeferred
async def test_send_streams_a_pipe_chunk_by_chunk(client):
    """send() with FDBodyProducer delivers each write before the pipe is closed."""
    await create(client, "vm1")
    got = bytearray()
    await client.follow("vm1", got.extend)
    read_end, write_end = os.pipe()
    try:
        sent = client.send("vm1", FDBodyProducer(reactor, read_end))
        os.write(write_end, b"echo first-chunk\n")
        await wait_until(lambda: b"first-chunk\r\n" in got, "the first chunk")
        assert not sent.called
        os.write(write_end, b"echo second-chunk\n")
        os.close(write_end)
        write_end = -1
        assert await sent == 35
        await wait_until(lambda: b"second-chunk\r\n" in got, "the second chunk")
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


@pytest_twisted.ensureDeferred
async def test_open_input_sends_each_keystroke_at_once(client):
    """open_input(): single keystrokes reach the guest (it echoes) before finish()."""
    await create(client, "vm1")
    got = bytearray()
    await client.follow("vm1", got.extend)
    typing = client.open_input("vm1")
    for byte in b"echo keys":
        typing.write(bytes([byte]))
    await wait_until(lambda: b"echo keys" in got, "the echo of the keystrokes")
    assert not typing.done.called
    typing.write(b"\r")
    await wait_until(lambda: b"\r\nkeys\r\n" in got, "the command's output")
    typing.finish()
    assert await typing.done == 10


@pytest_twisted.ensureDeferred
async def test_duplex_types_and_follows_in_one_request(client):
    """duplex(): keystrokes go out and the echo comes back on one request,
    from the offset asked for; destroy ends it cleanly, errors as follow's."""
    await create(client, "vm1")
    start = await end_of(client, "vm1")
    got = bytearray()
    stream = await client.duplex("vm1", got.extend, offset=start)
    assert (stream.start_offset, stream.lost) == (start, 0)
    stats = (await client.call("getVmStats", "vm1"))["statsList"][0]
    assert (stats["readers"], stats["writers"]) == (1, 1)  # one request, both
    for byte in b"echo duplex-works":
        stream.write(bytes([byte]))
    stream.write(b"\r")
    await wait_until(lambda: b"\r\nduplex-works\r\n" in got, "the echo")
    assert stream.offset == start + len(got)
    assert bytes(got) == (await read_all(client, "vm1"))[start:]
    stream.finish()  # no more input; the output goes on
    with pytest.raises(ValueError):
        stream.write(b"too late")
    assert not stream.done.called
    assert (await client.call("destroy", "vm1"))["status"]["code"] == 0
    assert await stream.done is stream

    with pytest.raises(NoSuchConsole) as info:
        await client.duplex("vm1", got.extend)
    assert str(info.value) == "Virtual machine does not exist: vm1"
    with pytest.raises(ValueError):
        client.duplex("vm1", got.extend, offset=1, tail=1)


@pytest_twisted.ensureDeferred
async def test_duplex_close_leaves_and_the_server_lets_go(client):
    await create(client, "vm1")
    stream = await client.duplex("vm1", lambda _: None, tail=10)
    stream.close()
    assert await stream.done is stream

    async def released() -> bool:
        stats = (await client.call("getVmStats", "vm1"))["statsList"][0]
        return stats["readers"] == 0 and stats["writers"] == 0

    await wait_until(lambda: ensureDeferred(released()), "the server to let go")


@pytest_twisted.ensureDeferred
async def test_resuming_follow_continues_across_a_server_restart(demo, pki):
    """ResumingFollow reconnects after a restart and misses or repeats no byte."""
    client = ConsoleClient("127.0.0.1", demo.port, credentials(pki), reactor)
    got = bytearray()
    events: list[tuple] = []
    follower = ResumingFollow(
        client,
        "vm1",
        got.extend,
        offset=0,
        on_lost=lambda e: events.append(("lost", str(e))),
        on_resumed=lambda s, lost: events.append(("resumed", s.start_offset, lost)),
        initial_delay=0.05,
        max_delay=0.5,
    )
    try:
        await create(client, "vm1")
        await follower.start()
        await client.send("vm1", b"echo before-restart\n")
        await wait_until(lambda: b"before-restart\r\n" in got, "output before")
        demo.stop()
        await wait_until(lambda: events, "the loss to be noticed")
        assert events[0][0] == "lost"
        before = len(got)
        demo.start(port=demo.port)
        await wait_until(lambda: len(events) > 1, "the reconnection", timeout=15)
        assert events[1] == ("resumed", before, 0)
        await client.send("vm1", b"echo after-restart\n")
        await wait_until(lambda: b"after-restart\r\n" in got, "output after")
        # Byte for byte what the server retains: nothing missed, nothing twice.
        retained = await read_all(client, "vm1")
        assert bytes(got) == retained[: len(got)]
        assert follower.offset == len(got)
    finally:
        follower.stop()
        await follower.done
        await client.close()


# -- failures ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_one_line(pki):
    """Nobody listening: ConnectError saying so, naming host and port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ConsoleClient("127.0.0.1", port, credentials(pki), reactor)
    with pytest.raises(ConnectError) as info:
        await client.call("ping")
    assert str(info.value) == f"cannot connect to 127.0.0.1:{port}: connection refused"
    with pytest.raises(ConnectError) as info:
        await client.duplex("vm1", lambda _: None)
    assert str(info.value) == f"cannot connect to 127.0.0.1:{port}: connection refused"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_tls_failures_name_whose_certificate(server, pki, odd_certs, tmp_path):
    """A CA that did not sign the server: side 'server'; a foreign client: 'client'."""
    other = init_pki(tmp_path / "other", hostname="localhost")
    mine = credentials(pki)
    untrusting = ClientCredentials(other.ca_cert, mine.cert, mine.key)
    client = ConsoleClient("127.0.0.1", server.port, untrusting, reactor)
    with pytest.raises(TLSError) as info:
        await client.call("ping")
    assert info.value.side == "server"
    assert "not trusted by our CA" in str(info.value)
    with pytest.raises(TLSError) as info:
        await client.duplex("vm1", lambda _: None)
    assert info.value.side == "server"
    await client.close()

    cert, key = odd_certs["other_ca"]
    refused = ClientCredentials(mine.ca, cert, key)
    client = ConsoleClient("127.0.0.1", server.port, refused, reactor)
    with pytest.raises(TLSError) as info:
        await client.follow("vm1", lambda _: None)
    assert info.value.side == "client"
    assert "refused our client certificate" in str(info.value)
    with pytest.raises(TLSError) as info:
        await client.duplex("vm1", lambda _: None)
    assert info.value.side == "client"
    await client.close()


def test_credentials_precedence(tmp_path):
    """Flags, --pki, VDSMCONSOLE_CA/CERT/KEY, VDSMCONSOLE_PKI, then VDSM's files."""
    assert ClientCredentials.resolve(environ={}) == ClientCredentials(
        Path("/etc/pki/vdsm/certs/cacert.pem"),
        Path("/etc/pki/vdsm/certs/vdsmcert.pem"),
        Path("/etc/pki/vdsm/keys/vdsmkey.pem"),
    )
    env = {"VDSMCONSOLE_PKI": "/e", "VDSMCONSOLE_CERT": "/env-cert.pem"}
    assert ClientCredentials.resolve(environ=env) == ClientCredentials(
        Path("/e/certs/cacert.pem"),
        Path("/env-cert.pem"),
        Path("/e/keys/enginekey.pem"),
    )
    assert ClientCredentials.resolve(
        pki=Path("/p"), key=Path("/flag-key.pem"), environ=env
    ) == ClientCredentials(
        Path("/p/certs/cacert.pem"),
        Path("/p/certs/enginecert.pem"),
        Path("/flag-key.pem"),
    )


def test_credentials_problems_are_one_line(pki, odd_certs, tmp_path):
    """A missing file or a key that is not the certificate's: CredentialsError."""
    mine = credentials(pki)
    with pytest.raises(CredentialsError) as info:
        ClientCredentials(tmp_path / "none.pem", mine.cert, mine.key).load()
    assert str(info.value) == (
        f"cannot read CA certificate {tmp_path / 'none.pem'}: No such file or directory"
    )
    _, other_key = odd_certs["other_ca"]
    with pytest.raises(CredentialsError, match="does not match"):
        ClientCredentials(mine.ca, mine.cert, other_key).load()


def test_stream_offset_is_start_plus_received():
    """Stream.offset is X-Console-Offset plus the bytes received."""
    stream = Stream("vm", 100, 3)
    stream.received = 20
    assert (stream.offset, stream.lost) == (120, 3)


@pytest_twisted.ensureDeferred
async def test_resuming_follow_reports_bytes_lost_while_behind(server_factory, pki):
    """A follower that stalls past retention is ended; the resume says how much."""
    server = server_factory(SMALL_CONFIG)
    client = ConsoleClient("127.0.0.1", server.port, credentials(pki), reactor)
    got = bytearray()
    resumed: list[tuple[int, int]] = []
    follower = ResumingFollow(
        client,
        "vm1",
        got.extend,
        on_resumed=lambda s, lost: resumed.append((s.start_offset, lost)),
        initial_delay=0.05,
    )
    try:
        await create(client, "vm1")
        stream = await follower.start()
        stream._transport.pauseProducing()  # stop reading: a stalled client
        await client.send("vm1", b"flood 30000000\n")
        await wait_until(
            lambda: ensureDeferred(end_of(client, "vm1")).addCallback(
                lambda end: end > 30_000_000
            ),
            "the flood",
            timeout=60,
        )
        stream._transport.resumeProducing()
        await wait_until(lambda: resumed, "the resume", timeout=30)
        start, lost = resumed[0]
        assert lost > 0
        assert stream.end is StreamEnd.BEHIND  # the server said why it ended
        assert start == stream.offset + lost
        assert follower.lost == lost
    finally:
        follower.stop()
        await client.close()
