"""sd_notify without systemd: the addresses NOTIFY_SOCKET may name, the
environment taken away from children, READY/STOPPING datagrams and the
watchdog fed from a Clock, on real unix datagram sockets."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from vdsmconsole.server.systemd import Notifier, socket_address, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket as systemd's notification socket, by path."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def pending(sock: socket.socket) -> list[bytes]:
    """Every datagram queued on ``sock`` now."""
    found = []
    sock.setblocking(False)
    try:
        while True:
            found.append(sock.recv(4096))
    except BlockingIOError:
        return found
    finally:
        sock.settimeout(5)


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@/org/systemd/notify/42", b"\0/org/systemd/notify/42"),
        ("@", None),
        ("relative/path", None),
        ("vsock:2:1234", None),
    ],
)
def test_socket_address(value, address):
    """A path is a path, ``@name`` the abstract ``\\0name``; anything else
    is no unix socket."""
    assert socket_address(value) == address


@pytest.mark.parametrize(
    ("environ", "seconds"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
    ],
)
def test_watchdog_interval(environ, seconds):
    """Half of WATCHDOG_USEC, only for the pid WATCHDOG_PID names (if any)."""
    assert watchdog_interval(environ, 7)[0] == seconds


def test_environment_is_taken_away():
    """The variables leave the environment, so a spawned command never
    notifies for the server."""
    environ = {
        "NOTIFY_SOCKET": "/run/n",
        "WATCHDOG_USEC": "4000000",
        "WATCHDOG_PID": "7",
        "PATH": "/bin",
    }
    notifier = Notifier.from_environment(Clock(), environ, pid=7)
    assert environ == {"PATH": "/bin"}
    assert notifier.address == "/run/n"
    assert notifier.watchdog_seconds == 2.0


def test_outside_systemd_nothing_is_sent():
    """Without NOTIFY_SOCKET every call does nothing (and no watchdog runs)."""
    clock = Clock()
    notifier = Notifier.from_environment(clock, {"WATCHDOG_USEC": "1000000"}, pid=1)
    assert not notifier.enabled
    notifier.ready("up")
    assert notifier.notify("READY=1") is False
    assert clock.getDelayedCalls() == []


def test_ready_then_watchdog_then_stopping(listener):
    """READY=1 with a STATUS, WATCHDOG=1 at once and every half timeout from
    the reactor's clock, none after STOPPING=1."""
    sock, path = listener
    clock = Clock()
    notifier = Notifier(path, clock, watchdog_seconds=2.0)
    notifier.ready("listening on 127.0.0.1:54321, 0 consoles")
    assert pending(sock) == [
        b"READY=1\nSTATUS=listening on 127.0.0.1:54321, 0 consoles",
        b"WATCHDOG=1",
    ]
    clock.advance(1.9)
    assert pending(sock) == []
    clock.advance(0.1)
    clock.advance(2.0)
    assert pending(sock) == [b"WATCHDOG=1", b"WATCHDOG=1"]
    notifier.stopping()
    clock.advance(10)
    assert pending(sock) == [b"STOPPING=1"]
    assert clock.getDelayedCalls() == []
    notifier.close()


def test_abstract_address():
    """``@name`` reaches a socket bound in the abstract namespace."""
    name = f"vdsmconsole-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        notifier = Notifier.from_environment(
            Clock(), {"NOTIFY_SOCKET": "@" + name}, pid=os.getpid()
        )
        notifier.ready()
        assert sock.recv(4096) == b"READY=1"
        notifier.close()


def test_a_missing_socket_is_one_warning(tmp_path):
    """A socket that is gone makes notify return False, never raise, and
    the watchdog's repeated failures are logged once."""
    from twisted.logger import capturedLogs

    clock = Clock()
    notifier = Notifier(str(tmp_path / "gone"), clock, watchdog_seconds=1.0)
    with capturedLogs() as events:
        notifier.ready()
        clock.advance(1)
        clock.advance(1)
    assert notifier.notify("STATUS=x") is False
    warnings = [e for e in events if "cannot notify systemd" in e["log_format"]]
    assert len(warnings) == 1
    notifier.close()
