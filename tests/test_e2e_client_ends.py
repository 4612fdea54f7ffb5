"""``vdsmconsole-client`` when the stream it follows ends, against the real server.

A destroyed console and a guest gone for good end ``tail -f`` and
``console`` with their one-line message and exit status, without a
"connection lost; reconnecting" first; the server stopping is a lost
connection that is resumed once the server is back, never "reconnected"
while it stops.
"""

from __future__ import annotations

import re
import signal
import subprocess

import pytest

from tests.serverproc import wait_for
from tests.test_e2e_clientcli import (
    PROG,
    client_args,
    console_command,
    demo_server,
    retained,
    tmux,  # noqa: F401 - a fixture
)
from tests.test_e2e_endings import SLOW_STOP, finish_call, held_call
from tests.test_e2e_port import _refuses_connections

pytestmark = pytest.mark.e2e


class Tail:
    """``tail VM -f`` in the background, its stdout and stderr in files."""

    def __init__(self, server, pki, tmp_path, vm_id: str = "vm1") -> None:
        self.out = tmp_path / "tail.out"
        self.err = tmp_path / "tail.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen(
                client_args(server, pki, "tail", vm_id, "-f"),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

    def stderr(self) -> str:
        return self.err.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def tails():
    started: list[Tail] = []

    def start(*args) -> Tail:
        tail = Tail(*args)
        started.append(tail)
        return tail

    yield start
    for tail in started:
        tail.stop()


def test_tail_follow_ends_on_destroy_with_one_line(
    server_factory, pki, tmp_path, tails
):
    """destroy: tail -f says "Virtual machine does not exist", exit 1, no reconnect."""
    server = demo_server(server_factory, "vm1")
    tail = tails(server, pki, tmp_path)
    wait_for(lambda: b"demo# " in tail.out.read_bytes(), 15, "the output")
    assert server.rpc().destroy("vm1")["status"]["code"] == 0
    assert tail.process.wait(15) == 1
    assert tail.stderr() == f"{PROG}: Virtual machine does not exist: vm1\n"


def test_tail_follow_ends_when_the_guest_is_gone(server_factory, pki, tmp_path, tails):
    """The guest exits: tail -f prints its last words, says it is down, exit 100."""
    server = demo_server(server_factory, "vm1")
    tail = tails(server, pki, tmp_path)
    wait_for(lambda: b"demo# " in tail.out.read_bytes(), 15, "the output")
    sent = subprocess.run(
        client_args(server, pki, "send", "vm1", "exit"), timeout=30, check=False
    )
    assert sent.returncode == 0
    assert tail.process.wait(15) == 100
    assert tail.out.read_bytes() == retained(server, "vm1")
    assert tail.stderr() == f"{PROG}: console vm1 is down\n"


def test_tail_follow_resumes_after_the_server_stopped(
    server_factory, pki, tmp_path, tails
):
    """SIGTERM: tail -f says the connection was lost and keeps trying; nothing
    says "reconnected" until the server is back, then exactly where it was."""
    server = demo_server(lambda config: server_factory(config + SLOW_STOP), "vm1")
    tail = tails(server, pki, tmp_path)
    wait_for(lambda: b"demo# " in tail.out.read_bytes(), 15, "the output")
    end = len(retained(server, "vm1"))
    call = held_call(server)
    server.signal(signal.SIGTERM)
    wait_for(lambda: _refuses_connections(server.port), 10, "the port to close")
    assert b" 200 " in finish_call(call)
    assert server.wait(15) == 0
    wait_for(lambda: "lost; reconnecting" in tail.stderr(), 15, "the loss")
    assert tail.process.poll() is None
    assert "reconnected" not in tail.stderr() and "down" not in tail.stderr()
    server.start(port=server.port)
    wait_for(lambda: "reconnected" in tail.stderr(), 15, "the reconnection")
    lines = tail.stderr().splitlines()
    assert lines == [
        f"{PROG}: connection to 127.0.0.1:{server.port} lost; reconnecting",
        f"{PROG}: reconnected at offset {end}, no bytes lost",
    ]


def test_console_after_destroy_says_only_that_the_vm_is_gone(
    server_factory,
    pki,
    tmux,  # noqa: F811 - the fixture
):
    """destroy under an interactive console: one line, "Virtual machine does
    not exist", exit 1, the terminal restored; never "connection lost"."""
    server = demo_server(server_factory, "vm1")
    before = tmux.run_marked("stty -a")
    tmux.type(console_command(server, pki, "vm1"))
    tmux.wait_line(r"Escape character is \^\]")
    assert server.rpc().destroy("vm1")["status"]["code"] == 0
    tmux.wait_line(rf"{PROG}: Virtual machine does not exist: vm1")
    assert tmux.run_marked("echo rc=$?") == ["rc=1"]
    assert not [line for line in tmux.lines() if re.search("lost|reconnect", line)]
    assert tmux.run_marked("stty -a") == before


def test_console_through_a_server_stop_never_says_the_guest_is_down(
    server_factory,
    pki,
    tmux,  # noqa: F811 - the fixture
):
    """SIGTERM under an interactive console: "connection lost; reconnecting",
    never "the guest is down"; once the server is back, typing works again."""
    server = demo_server(server_factory, "vm1")
    tmux.type(console_command(server, pki, "vm1"))
    tmux.wait_line(r"Escape character is \^\]")
    end = len(retained(server, "vm1"))
    server.signal(signal.SIGTERM)
    assert server.wait(15) == 0
    tmux.wait_line(rf".*\[{PROG}: connection to 127\.0\.0\.1:\d+ lost; reconnecting.*")
    server.start(port=server.port)
    tmux.wait_line(rf".*reconnected at offset {end}, no bytes lost\]")
    tmux.type("echo after-the-stop")
    tmux.wait_line("after-the-stop")
    assert not [line for line in tmux.lines() if "is down" in line]
    tmux.key("C-]")
    assert tmux.run_marked("echo rc=$?") == ["rc=0"]
