"""Guest console sources against real ptys, sockets and child processes.

The pty, socket and spawn tests run on the real reactor with real fds: the
behaviour under test lives in the kernel's line discipline, epoll and
process handling as much as in our code.  Retry timing and reconnect
bookkeeping use a MemoryReactorClock, where time is exact.
"""

from __future__ import annotations

import os
import random
import sys
import termios
from collections.abc import Callable, Generator
from typing import Any

import pytest
import pytest_twisted
from fakeguest import PtyGuest, RecordingSink, wait_until
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from vdsmconsole.interfaces import ConsoleSource, SourceState
from vdsmconsole.sources import (
    PtySource,
    SourceOptions,
    SpawnSource,
    TcpSource,
    UnixSource,
    backoff_delay,
    make_raw,
    make_source,
)
from vdsmconsole.spec import ConsoleSpec

CONNECTED = SourceState.CONNECTED
RECONNECTING = SourceState.RECONNECTING
CONNECTING = SourceState.CONNECTING
DOWN = SourceState.DOWN

FAST = SourceOptions(reconnect_initial=0.05, reconnect_max=0.2, connect_timeout=2)

Gen = Generator[Deferred[Any], Any, None]


@pytest.fixture
def guest() -> Generator[PtyGuest, None, None]:
    g = PtyGuest(reactor)
    yield g
    g.close()


def attach(guest: PtyGuest) -> tuple[PtySource, RecordingSink]:
    source = PtySource(guest.path, reactor)
    sink = RecordingSink()
    source.start(sink)
    assert source.state is CONNECTED, sink.states
    return source, sink


# -- make_source


def test_make_source_picks_the_kind(tmp_path: Any) -> None:
    """make_source builds the class for each spec type and rejects others."""
    options = SourceOptions(spawn_commands={"cat": ["/bin/cat"]})
    cases: list[tuple[ConsoleSpec, type]] = [
        (ConsoleSpec(type="pty", path="/dev/pts/99"), PtySource),
        (ConsoleSpec(type="unix", path=str(tmp_path / "s")), UnixSource),
        (ConsoleSpec(type="tcp", host="127.0.0.1", port=4555), TcpSource),
        (ConsoleSpec(type="spawn", command="cat"), SpawnSource),
    ]
    for spec, cls in cases:
        source: ConsoleSource = make_source(spec, options, reactor)
        assert type(source) is cls
        facts = source.describe()
        assert facts["type"] == spec.type
        assert facts["state"] == "down"
        assert None not in facts.values()
    with pytest.raises(ValueError, match="nosuch"):
        make_source(ConsoleSpec(type="nosuch"), options, reactor)


def test_options_reject_bad_values() -> None:
    """SourceOptions refuses non-positive delays and malformed argvs early."""
    with pytest.raises(ValueError, match="reconnect_initial"):
        SourceOptions(reconnect_initial=0)
    with pytest.raises(ValueError, match="'sh'"):
        SourceOptions(spawn_commands={"sh": "/bin/sh"})
    with pytest.raises(ValueError, match="'none'"):
        SourceOptions(spawn_commands={"none": []})


# -- pty


@pytest_twisted.inlineCallbacks
def test_pty_output_arrives_unchanged(guest: PtyGuest) -> Gen:
    """Guest output reaches the sink byte for byte and is not echoed back."""
    source, sink = attach(guest)
    attrs = termios.tcgetattr(guest.slave)
    assert not attrs[3] & (termios.ECHO | termios.ICANON | termios.ISIG)
    output = b"boot\r\nline\nbare\rcr" + bytes(range(256))
    guest.write(output)
    yield wait_until(lambda: len(sink.data) >= len(output), "guest output")
    assert bytes(sink.data) == output
    # The guest's master holds only what the source wrote: no echo of the
    # guest's own output came back into the guest.
    assert source.write(b"MARK")
    yield wait_until(lambda: guest.read_available().endswith(b"MARK"), "marker")
    assert bytes(guest.received) == b"MARK"
    yield source.stop()


@pytest_twisted.inlineCallbacks
def test_pty_input_arrives_unchanged(guest: PtyGuest) -> Gen:
    """Input written through the source reaches the guest untranslated."""
    source, sink = attach(guest)
    data = b"a\nb\r\n\x03\x04\x11\x13\x7f\x00\xff" + bytes(range(256))
    assert source.write(data)
    yield wait_until(lambda: len(guest.read_available()) >= len(data), "input")
    assert bytes(guest.received) == data
    assert sink.data == b""
    yield source.stop()


@pytest_twisted.inlineCallbacks
def test_pty_reading_survives_many_writes(guest: PtyGuest) -> Gen:
    """Reading keeps working across many writes (separate read and write fds)."""
    source, sink = attach(guest)
    guest.start_reading()
    for i in range(50):
        assert source.write(b"in%d;" % i)
        guest.write(b"out%d;" % i)
        expected_in = b"".join(b"in%d;" % n for n in range(i + 1))
        expected_out = b"".join(b"out%d;" % n for n in range(i + 1))
        yield wait_until(
            lambda: guest.received == expected_in and sink.data == expected_out,  # noqa: B023
            f"round {i}",
        )
    yield source.stop()


@pytest_twisted.inlineCallbacks
def test_pty_guest_gone_goes_down_and_never_reopens() -> Gen:
    """Closing the master makes the source go down for good, path untouched."""
    guest = PtyGuest(reactor)
    guest.close_slave()  # as qemu does: only the master stays open
    source, sink = attach(guest)
    guest.write(b"last words\r\n")
    yield wait_until(lambda: sink.data == b"last words\r\n", "last words")
    path = guest.path
    guest.close()
    yield wait_until(lambda: source.state is DOWN, "down")
    assert sink.states[-1][0] is DOWN
    assert "end of file" in sink.states[-1][1]
    assert "never reopened" in sink.states[-1][1]
    assert source.write(b"x") is False
    source.resumeReading()
    # The kernel may well hand the same path to the next pty.  Whether or not
    # it did, that pty's input is all there for its own reader: the old
    # source did not reattach and steal it.
    other = PtyGuest(reactor)
    make_raw(other.slave)  # a cooked tty would hold the bytes back as a line
    try:
        other.write(b"someone else")
        yield wait_until(
            lambda: other.pending_for_source() == len(b"someone else"), "queued"
        )
        assert os.read(other.slave, 100) == b"someone else"
        assert source.state is DOWN and sink.count(DOWN) == 1
        assert source.describe()["path"] == path
    finally:
        other.close()
    yield source.stop()
    assert sink.count(DOWN) == 1  # already down: stop() changes nothing


@pytest.mark.parametrize(
    ("make_path", "words"),
    [
        (lambda tmp: str(tmp / "missing"), "No such file"),
        (lambda tmp: str(tmp), "not a character device"),
        (lambda tmp: "/dev/null", "not a terminal"),
    ],
)
def test_pty_refuses_what_is_not_a_tty(
    tmp_path: Any, make_path: Callable[[Any], str], words: str
) -> None:
    """A missing path or one that is not a tty gives down with the reason."""
    source = PtySource(make_path(tmp_path), reactor)
    sink = RecordingSink()
    source.start(sink)
    assert source.state is DOWN
    assert sink.states == [(DOWN, sink.states[0][1])]
    assert words in sink.states[0][1]
    assert words in source.describe()["lastError"]
    assert source.write(b"x") is False


@pytest_twisted.inlineCallbacks
def test_pty_input_backpressure(guest: PtyGuest) -> Gen:
    """A guest that does not read pauses input; draining resumes it; no loss."""
    source, sink = attach(guest)
    payload = random.Random(7).randbytes(4 << 20)
    chunk = 16384
    bound = 65536 + chunk  # the transport's buffer plus one write
    kernel_slack = 65536  # what the pty holds beyond what FIONREAD shows

    # The guest reads nothing: the writer is told to stop after a bounded
    # amount, and the kernel's queue fills up behind it.
    pos = 0
    while not sink.input_paused:
        assert source.write(payload[pos : pos + chunk])
        pos += chunk
        assert pos <= bound
    # FIONREAD shows only the line discipline's part of the kernel's queue
    # (at most 4095 bytes); the pty's flip buffers hold some more.
    yield wait_until(lambda: guest.pending_for_guest() >= 1024, "kernel queue fills")
    assert sink.input_paused and sink.resumes == 0

    # The guest drains its master: input resumes, and a writer that obeys
    # pause/resume gets everything through, in order.
    guest.start_reading()
    while pos < len(payload):
        if sink.input_paused:
            yield wait_until(lambda: not sink.input_paused, "input resumed")
            continue
        assert source.write(payload[pos : pos + chunk])
        pos += chunk
        unread = pos - len(guest.received) - guest.pending_for_guest()
        assert unread <= bound + kernel_slack
    yield wait_until(lambda: len(guest.received) >= len(payload), "all input")
    assert bytes(guest.received) == payload
    assert sink.pauses >= 2 and sink.resumes >= 1
    yield source.stop()


@pytest_twisted.inlineCallbacks
def test_pty_pause_reading_holds_output_until_resumed(guest: PtyGuest) -> Gen:
    """While reading is paused output stays in the kernel; resume delivers it."""
    source, sink = attach(guest)
    source.pauseReading()
    parts = [b"one\r\n", b"two\r\n", b"three\r\n"]
    for part in parts:
        guest.write(part)
    total = sum(map(len, parts))
    yield wait_until(lambda: guest.pending_for_source() == total, "queued in kernel")
    # A round trip through the write side: the reactor has polled while the
    # output was readable, and still nobody read it.
    guest.start_reading()
    assert source.write(b"ping")
    yield wait_until(lambda: guest.received == b"ping", "ping")
    assert sink.data == b""
    assert guest.pending_for_source() == total
    source.resumeReading()
    yield wait_until(lambda: sink.data == b"".join(parts), "held output")
    yield source.stop()


class _RaisingSink(RecordingSink):
    def sourceData(self, data: bytes) -> None:
        super().sourceData(data)
        raise RuntimeError("a bug in the console")


@pytest_twisted.inlineCallbacks
def test_pty_survives_a_sink_that_raises(guest: PtyGuest) -> Gen:
    """A sink raising in sourceData is logged; the pty keeps being read."""
    source = PtySource(guest.path, reactor)
    sink = _RaisingSink()
    source.start(sink)
    guest.write(b"one")
    yield wait_until(lambda: sink.data == b"one", "first")
    guest.write(b"two")
    yield wait_until(lambda: sink.data == b"onetwo", "second")
    assert source.state is CONNECTED
    yield source.stop()


@pytest_twisted.inlineCallbacks
def test_pty_stop_is_final_and_idempotent(guest: PtyGuest) -> Gen:
    """stop() goes down once, closes the fds, and then the sink hears nothing."""
    source, sink = attach(guest)
    first = source.stop()
    second = source.stop()
    yield first
    yield second
    yield source.stop()
    assert source.state is DOWN
    assert sink.states[-1] == (DOWN, "stopped")
    calls = sink.calls
    guest.write(b"after")
    # Nobody reads the slave any more: the bytes stay queued.
    yield wait_until(lambda: guest.pending_for_source() == 5, "queued")
    assert source.write(b"x") is False
    assert sink.calls == calls


# -- unix and tcp


class _QemuSide(Protocol):
    def __init__(self, server: FakeChardev) -> None:
        self.server = server

    def connectionMade(self) -> None:
        self.server.current = self
        self.server.connections += 1

    def dataReceived(self, data: bytes) -> None:
        self.server.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.server.current is self:
            self.server.current = None


class FakeChardev:
    """A qemu socket chardev with server=on: listens, takes one client."""

    def __init__(self, kind: str, tmp_path: Any) -> None:
        self.kind = kind
        self.path = str(tmp_path / "guest.sock")
        self.portnum = 0
        self.port: Any = None
        self.current: _QemuSide | None = None
        self.connections = 0
        self.received = bytearray()

    def listen(self) -> None:
        factory = Factory.forProtocol(lambda: _QemuSide(self))
        if self.kind == "unix":
            self.port = reactor.listenUNIX(self.path, factory)
        else:
            self.port = reactor.listenTCP(self.portnum, factory, interface="127.0.0.1")
            self.portnum = self.port.getHost().port

    def unlisten(self) -> Deferred[None]:
        port, self.port = self.port, None
        return port.stopListening()

    def drop(self) -> None:
        assert self.current is not None
        assert self.current.transport is not None
        self.current.transport.loseConnection()

    def send(self, data: bytes) -> None:
        assert self.current is not None
        assert self.current.transport is not None
        self.current.transport.write(data)

    def source(self, options: SourceOptions = FAST) -> UnixSource | TcpSource:
        if self.kind == "unix":
            return UnixSource(self.path, options, reactor)
        return TcpSource("127.0.0.1", self.portnum, options, reactor)


@pytest.fixture(params=["unix", "tcp"])
def chardev(request: Any, tmp_path: Any) -> Generator[FakeChardev, None, None]:
    server = FakeChardev(request.param, tmp_path)
    server.listen()
    yield server
    if server.current is not None and server.current.transport is not None:
        server.current.transport.abortConnection()  # type: ignore[attr-defined]
    if server.port is not None:
        server.port.stopListening()


@pytest_twisted.inlineCallbacks
def test_socket_data_both_ways_and_reconnect(chardev: FakeChardev) -> Gen:
    """Data flows both ways; a dropped connection reconnects and flows again."""
    source = chardev.source()
    sink = RecordingSink()
    source.start(sink)
    assert source.state is CONNECTING  # never connected yet: not "reconnecting"
    yield wait_until(
        lambda: source.state is CONNECTED and chardev.current is not None, "connected"
    )
    chardev.send(b"login:\r\n\x00\xff")
    assert source.write(b"root\n")
    yield wait_until(lambda: sink.data == b"login:\r\n\x00\xff", "output")
    yield wait_until(lambda: chardev.received == b"root\n", "input")

    chardev.drop()
    yield wait_until(lambda: sink.count(RECONNECTING) == 1, "reconnecting")
    assert "connection lost" in sink.states[-1][1]
    yield wait_until(lambda: source.state is CONNECTED, "connected again")
    yield wait_until(lambda: chardev.connections == 2, "second connection")
    chardev.send(b"again")
    assert source.write(b"more")
    yield wait_until(lambda: sink.data.endswith(b"again"), "output again")
    yield wait_until(lambda: chardev.received == b"root\nmore", "input again")
    assert source.describe()["connections"] == 2
    yield source.stop()
    assert source.state is DOWN


@pytest_twisted.inlineCallbacks
def test_socket_retries_until_the_guest_returns(chardev: FakeChardev) -> Gen:
    """With the guest gone, attempts repeat; when it listens again, reconnects."""
    source = chardev.source()
    sink = RecordingSink()
    source.start(sink)
    yield wait_until(
        lambda: source.state is CONNECTED and chardev.current is not None, "connected"
    )
    yield chardev.unlisten()
    chardev.drop()
    yield wait_until(lambda: source.state is RECONNECTING, "reconnecting")
    assert source.write(b"lost") is False
    yield wait_until(
        lambda: source.describe()["reconnectAttempts"] >= 3, "failed attempts"
    )
    facts = source.describe()
    assert "cannot connect" in facts["lastError"]
    assert None not in facts.values()
    chardev.listen()
    yield wait_until(lambda: source.state is CONNECTED, "back", timeout=3)
    assert source.describe()["reconnectAttempts"] == 0
    chardev.send(b"hello")
    yield wait_until(lambda: sink.data == b"hello", "data after return")
    assert [s for s, _ in sink.states] == [
        CONNECTING,
        CONNECTED,
        RECONNECTING,
        CONNECTED,
    ]


@pytest_twisted.inlineCallbacks
def test_socket_stop_while_reconnecting(chardev: FakeChardev) -> Gen:
    """stop() while reconnecting fires, goes down, and the sink hears no more."""
    source = chardev.source()
    sink = RecordingSink()
    source.start(sink)
    yield wait_until(
        lambda: source.state is CONNECTED and chardev.current is not None, "connected"
    )
    yield chardev.unlisten()
    chardev.drop()
    yield wait_until(lambda: source.describe()["connectAttempts"] >= 3, "retrying")
    yield source.stop()
    assert source.state is DOWN
    assert sink.states[-1] == (DOWN, "stopped")
    calls = sink.calls
    yield source.stop()
    assert sink.calls == calls


@pytest_twisted.inlineCallbacks
def test_socket_pause_reading_survives_reconnect(chardev: FakeChardev) -> Gen:
    """A source paused while reconnecting stays paused on the new connection."""
    source = chardev.source()
    sink = RecordingSink()
    source.start(sink)
    yield wait_until(lambda: chardev.current is not None, "connected")
    chardev.drop()
    yield wait_until(lambda: source.state is RECONNECTING, "reconnecting")
    source.pauseReading()
    yield wait_until(lambda: chardev.connections == 2, "second connection")
    yield wait_until(lambda: source.state is CONNECTED, "connected again")
    chardev.send(b"held")
    assert source.write(b"ping")
    # The write side works while reading is paused; the data stays unread.
    yield wait_until(lambda: chardev.received == b"ping", "ping")
    assert sink.data == b""
    source.resumeReading()
    yield wait_until(lambda: sink.data == b"held", "held data")
    yield source.stop()


# -- retry timing and reconnect bookkeeping on a fake clock


@given(
    attempts=st.integers(min_value=1, max_value=10_000),
    initial=st.floats(min_value=0.001, max_value=10),
    maximum=st.floats(min_value=0.001, max_value=3600),
)
def test_backoff_doubles_and_is_capped(
    attempts: int, initial: float, maximum: float
) -> None:
    """The delay starts at initial, doubles per failure and never exceeds max."""
    delay = backoff_delay(attempts, initial, maximum)
    assert 0 < delay <= maximum
    if attempts == 1:
        assert delay == min(initial, maximum)
    nxt = backoff_delay(attempts + 1, initial, maximum)
    assert nxt == maximum or nxt == pytest.approx(2 * delay)


class _ClockedUnix:
    """A UnixSource on a MemoryReactorClock, with its attempts at hand."""

    def __init__(self, options: SourceOptions) -> None:
        self.clock = MemoryReactorClock()
        self.source = UnixSource("/run/guest.sock", options, self.clock)
        self.sink = RecordingSink()
        self.source.start(self.sink)

    @property
    def attempts(self) -> int:
        return len(self.clock.unixClients)

    def fail(self) -> None:
        factory = self.clock.unixClients[-1][1]
        factory.clientConnectionFailed(
            self.clock.connectors[-1], Failure(ConnectionRefusedError())
        )

    def succeed(self) -> StringTransport:
        factory = self.clock.unixClients[-1][1]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.protocol = protocol
        return transport

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def test_retry_schedule_backs_off_to_the_cap() -> None:
    """Failed attempts are retried after 0.5, 1, 2, 4, 4... seconds."""
    c = _ClockedUnix(SourceOptions(reconnect_initial=0.5, reconnect_max=4))
    assert c.attempts == 1
    for n, delay in enumerate([0.5, 1, 2, 4, 4, 4], start=1):
        c.fail()
        c.clock.advance(delay - 0.01)
        assert c.attempts == n
        c.clock.advance(0.01)
        assert c.attempts == n + 1
    # Never connected: still "connecting", however many attempts failed.
    assert c.source.state is CONNECTING
    assert c.sink.states == [(CONNECTING, "connecting to /run/guest.sock")]
    assert c.source.describe()["reconnectAttempts"] == 6
    assert "refused" in c.source.describe()["lastError"]


def test_stop_while_waiting_to_retry_makes_no_more_attempts() -> None:
    """After stop() during the backoff wait no connection is attempted again."""
    c = _ClockedUnix(SourceOptions(reconnect_initial=0.5))
    c.fail()
    stopped = c.source.stop()
    assert stopped.called
    c.clock.advance(3600)
    assert c.attempts == 1
    assert c.source.state is DOWN


def test_reconnect_keeps_read_pause_and_resumes_input() -> None:
    """A new connection inherits paused reading and takes input again."""
    c = _ClockedUnix(SourceOptions(reconnect_initial=0.5))
    first = c.succeed()
    assert c.source.state is CONNECTED
    assert first.producer is not None
    first.producer.pauseProducing()  # the socket's buffer is full
    assert c.sink.input_paused
    c.lose()
    assert c.source.state is RECONNECTING
    assert c.source.write(b"x") is False
    assert c.sink.input_paused  # writers keep waiting while there is no guest
    c.source.pauseReading()
    c.clock.advance(0.5)
    assert c.attempts == 2
    second = c.succeed()
    assert second.producerState == "paused"
    assert not c.sink.input_paused and c.sink.resumes == 1
    assert c.source.write(b"y")
    assert second.value() == b"y"
    # The old transport's producer is dead: it cannot pause the new one.
    first.producer.pauseProducing()
    assert not c.sink.input_paused
    c.source.resumeReading()
    assert second.producerState == "producing"
    stopped = c.source.stop()
    assert second.disconnecting
    c.lose()
    assert stopped.called
    c.clock.advance(3600)
    assert c.attempts == 2


# -- spawn


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def spawned(command: str, argv: list[str], **options: Any) -> SpawnSource:
    opts = SourceOptions(spawn_commands={command: argv}, **options)
    return SpawnSource(command, opts, reactor)


@pytest_twisted.inlineCallbacks
def test_spawn_echoes_through_cat() -> Gen:
    """Bytes written to a spawned cat come back unchanged, exactly once."""
    source = spawned("cat", ["/bin/cat"])
    sink = RecordingSink()
    source.start(sink)
    assert source.state is CONNECTED
    pid = source.describe()["pid"]
    assert isinstance(pid, int) and pid > 0
    assert str(pid) in sink.states[0][1]
    data = b"hello\r\nworld\n\x00\x03\x04\xff" + bytes(range(256))
    assert source.write(data)
    yield wait_until(lambda: len(sink.data) >= len(data), "echo")
    assert bytes(sink.data) == data
    yield source.stop()
    facts = source.describe()
    assert facts["running"] is False and "SIGTERM" in facts["exitStatus"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest_twisted.inlineCallbacks
def test_spawn_child_exit_goes_down_with_status() -> Gen:
    """A child that exits makes the source go down, its status in the reason."""
    program = "import os; os.write(1, b'bye\\n'); raise SystemExit(3)"
    source = spawned("quitter", [sys.executable, "-c", program])
    sink = RecordingSink()
    source.start(sink)
    yield wait_until(lambda: source.state is DOWN, "down")
    assert bytes(sink.data) == b"bye\n"
    assert "status 3" in sink.states[-1][1]
    assert source.write(b"x") is False
    assert source.describe()["exitStatus"] == "exited with status 3"
    yield source.stop()


@pytest_twisted.inlineCallbacks
def test_spawn_stop_ends_a_child_that_would_not_exit() -> Gen:
    """stop() ends sleep 1000 with SIGTERM and fires."""
    source = spawned("sleep", ["/bin/sleep", "1000"])
    sink = RecordingSink()
    source.start(sink)
    pid = source.describe()["pid"]
    # Between fork and exec the child still has the parent's Python signal
    # handlers, which swallow a SIGTERM; the test wants the exec'd sleep.
    yield wait_until(lambda: b"sleep" in _cmdline(pid), "sleep running")
    yield source.stop()
    assert sink.states[-1] == (DOWN, "stopped")
    assert "SIGTERM" in source.describe()["exitStatus"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest_twisted.inlineCallbacks
def test_spawn_stop_kills_a_child_that_ignores_sigterm() -> Gen:
    """A child ignoring SIGTERM gets SIGKILL after stop_timeout, then stop fires."""
    program = (
        "import os, signal\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "os.write(1, b'ready')\n"
        "while True:\n"
        "    signal.pause()\n"
    )
    source = spawned("stubborn", [sys.executable, "-c", program], stop_timeout=0.2)
    sink = RecordingSink()
    source.start(sink)
    yield wait_until(lambda: sink.data == b"ready", "handler installed")
    pid = source.describe()["pid"]
    yield source.stop()
    assert "SIGKILL" in source.describe()["exitStatus"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_spawn_unknown_command_is_down() -> None:
    """A command name missing from the configuration gives down, not a crash."""
    source = SpawnSource("nosuch", SourceOptions(), reactor)
    sink = RecordingSink()
    source.start(sink)
    assert source.state is DOWN
    assert "'nosuch'" in sink.states[0][1]
    assert source.describe()["pid"] == 0
    assert source.stop().called


@pytest_twisted.inlineCallbacks
def test_tcp_source_resolves_a_host_name(tmp_path: Any) -> Gen:
    """A tcp source given a name (not an address) resolves it and connects."""
    server = FakeChardev("tcp", tmp_path)
    server.listen()
    source = TcpSource("localhost", server.portnum, FAST, reactor)
    sink = RecordingSink()
    try:
        source.start(sink)
        yield wait_until(lambda: server.current is not None, "connected")
        server.send(b"by name")
        yield wait_until(lambda: sink.data == b"by name", "data")
        assert source.state is CONNECTED
    finally:
        yield source.stop()
        yield server.unlisten()


@pytest_twisted.inlineCallbacks
def test_spawn_exit_while_paused_still_goes_down() -> Gen:
    """A child exiting while reading is paused: down after stop_timeout, no loss."""
    program = "import os; os.write(1, b'last words'); raise SystemExit(0)"
    source = spawned("brief", [sys.executable, "-c", program], stop_timeout=0.2)
    sink = RecordingSink()
    source.start(sink)
    source.pauseReading()
    yield wait_until(lambda: source.state is DOWN, "down", timeout=3)
    assert sink.data == b"last words"
    assert "status 0" in sink.states[-1][1]
    yield source.stop()


@pytest_twisted.inlineCallbacks
def test_spawn_stop_after_exit_does_not_wait() -> Gen:
    """stop() on a reaped child whose pty is still open fires at once."""
    source = spawned("brief", [sys.executable, "-c", "pass"], stop_timeout=30)
    sink = RecordingSink()
    source.start(sink)
    source.pauseReading()  # so the pty's EIO goes unseen and the child lingers
    yield wait_until(lambda: source.describe()["exitStatus"] != "", "reaped")
    assert source.describe()["running"] is True
    stopped = source.stop()
    yield wait_until(lambda: stopped.called, "stopped", timeout=3)
    assert source.describe()["running"] is False
