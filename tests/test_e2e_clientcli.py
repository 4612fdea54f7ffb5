"""``vdsmconsole-client`` as an operator runs it, against the real server.

The interactive console is driven through tmux (a real terminal: raw mode,
``^]``, ``stty -a`` before and after); the other commands run as child
processes.  Servers are started by ``server_factory`` and the tmux server by
the ``tmux`` fixture, and both are stopped when the test ends, pass or fail.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.serverproc import wait_for
from vdsmconsole.pki import init_pki

pytestmark = pytest.mark.e2e

PROG = "vdsmconsole-client"
CLIENT = [sys.executable, "-m", "vdsmconsole.clientcli"]
# No heartbeat: the guest's output is only what the tests type.
DEMO_CONFIG = (
    "[spawn.commands]\n"
    f'demo = ["{sys.executable}", "-m", "vdsmconsole.demoguest", "--fast",'
    ' "--heartbeat", "86400"]\n'
)


# -- helpers ---------------------------------------------------------------------


def client_args(server, pki, *args: str) -> list[str]:
    return [*CLIENT, "--pki", str(pki.root), f"127.0.0.1:{server.port}", *args]


def run_client(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("text", True)
    return subprocess.run(argv, capture_output=True, timeout=60, check=False, **kwargs)


def demo_server(server_factory, *vm_ids: str):
    server = server_factory(DEMO_CONFIG)
    proxy = server.rpc()
    for vm_id in vm_ids:
        spec = {"vmId": vm_id, "console": {"type": "spawn", "command": "demo"}}
        assert proxy.create(spec)["status"]["code"] == 0
    for vm_id in vm_ids:
        wait_for(lambda v=vm_id: b"demo# " in retained(server, v), 10, "a prompt")
    return server


def retained(server, vm_id: str) -> bytes:
    result = server.rpc().consoleRead(vm_id, 0, 1024 * 1024)
    return result["data"].data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tmux:
    """One tmux server on its own socket, one 200x50 window running bash."""

    def __init__(self, workdir: Path) -> None:
        self.tmux = require_tool("tmux", "tmux")
        self.socket = f"vdsmconsole-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.workdir = workdir
        self.started = False

    def _run(self, *args: str) -> str:
        done = subprocess.run(
            [self.tmux, "-L", self.socket, "-f", os.devnull, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout

    def start(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "TERM": "xterm",
            "PS1": "$ ",
        }
        if "PYTHONPATH" in os.environ:  # the client imports what the test does
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        shell = "env -i " + " ".join(
            f"{name}={shlex.quote(value)}" for name, value in env.items()
        )
        shell += " bash --norc --noprofile"
        self._run("new-session", "-d", "-x", "200", "-y", "50", "-s", "t", shell)
        self.started = True
        wait_for(lambda: self.screen().rstrip().endswith("$"), 10, "the shell")

    def type(self, text: str, enter: bool = True) -> None:
        self._run("send-keys", "-t", "t", "-l", text)
        if enter:
            self._run("send-keys", "-t", "t", "Enter")

    def key(self, name: str) -> None:
        self._run("send-keys", "-t", "t", name)

    def screen(self) -> str:
        """The whole pane with its history, wrapped lines joined."""
        return self._run("capture-pane", "-p", "-J", "-t", "t", "-S", "-")

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen().splitlines()]

    def wait_line(self, pattern: str, timeout: float = 15.0) -> str:
        """The first pane line that matches ``pattern`` (a full-line regex)."""
        regex = re.compile(pattern)

        def found() -> str | None:
            return next((x for x in self.lines() if regex.fullmatch(x)), None)

        return wait_for(found, timeout, f"a line matching {pattern!r}")

    def wait_prompt(self) -> None:
        """Until the shell's prompt is the last line: the client has exited."""
        wait_for(lambda: [x for x in self.lines() if x][-1:] == ["$"], 15, "the prompt")

    def run_marked(self, command: str) -> list[str]:
        """Run a shell command; its output lines (between command and marker)."""
        marker = uuid.uuid4().hex[:8]
        # The marker as typed is not the marker as printed: $((...)) expands.
        self.wait_prompt()
        self.type(f"{command}; echo end-{marker}-$((1+1))")
        self.wait_line(f"end-{marker}-2")
        lines = self.lines()
        start = max(i for i, x in enumerate(lines) if f"end-{marker}-$((1+1))" in x)
        end = lines.index(f"end-{marker}-2")
        return lines[start + 1 : end]

    def kill(self) -> None:
        if self.started:
            subprocess.run(
                [self.tmux, "-L", self.socket, "kill-server"],
                capture_output=True,
                timeout=10,
                check=False,
            )


@pytest.fixture
def tmux(tmp_path):
    terminal = Tmux(tmp_path)
    try:
        terminal.start()
        yield terminal
    finally:
        terminal.kill()


def console_command(server, pki, vm_id: str, *extra: str) -> str:
    return shlex.join(client_args(server, pki, "console", vm_id, *extra))


# -- console ---------------------------------------------------------------------


def test_console_in_tmux_types_leaves_and_restores_the_terminal(
    server_factory, pki, tmux
):
    """console: 'echo hi' shows hi, ^] returns to the shell, stty -a is unchanged."""
    server = demo_server(server_factory, "vm1")
    before = tmux.run_marked("stty -a")
    assert any("icanon" in line for line in before)

    tmux.type(console_command(server, pki, "vm1"))
    tmux.wait_line(r"Escape character is \^\]")
    tmux.type("echo hi")
    tmux.wait_line("hi")
    tmux.key("C-]")
    assert tmux.run_marked("echo rc=$?") == ["rc=0"]
    assert tmux.run_marked("stty -a") == before


def test_console_reconnects_after_a_server_restart(server_factory, pki, tmux):
    """Killed and restarted under it, console reconnects and goes on from its offset."""
    server = demo_server(server_factory, "vm1")
    before = tmux.run_marked("stty -a")
    tmux.type(console_command(server, pki, "vm1"))
    tmux.wait_line(r"Escape character is \^\]")
    tmux.type("echo before-restart")
    tmux.wait_line("before-restart")
    end = len(retained(server, "vm1"))

    server.signal(signal.SIGKILL)
    server.wait(10)
    tmux.wait_line(
        rf".*\[{PROG}: connection to 127\.0\.0\.1:\d+ lost; reconnecting\.\.\."
    )
    server.start(port=server.port)
    resumed = tmux.wait_line(
        r".*reconnecting\.\.\. reconnected at offset (\d+), no bytes lost\]"
    )
    assert re.search(r"offset (\d+)", resumed).group(1) == str(end)

    tmux.type("echo after-restart")
    tmux.wait_line("after-restart")
    lines = tmux.lines()
    # Resumed, not replayed: what was shown before the restart is there once.
    assert lines.count("before-restart") == 1
    assert sum("echo before-restart" in line for line in lines) == 1
    tmux.key("C-]")
    assert tmux.run_marked("echo rc=$?") == ["rc=0"]
    assert tmux.run_marked("stty -a") == before


def test_console_with_another_escape(server_factory, pki, tmux):
    """-e '^A' leaves on ^A, and ^] goes to the guest like any other key."""
    server = demo_server(server_factory, "vm1")
    tmux.type(console_command(server, pki, "vm1", "-e", "^A"))
    tmux.wait_line(r"Escape character is \^A")
    tmux.key("C-]")
    tmux.type("echo still-here")
    tmux.wait_line("still-here")
    tmux.key("C-a")
    assert tmux.run_marked("echo rc=$?") == ["rc=0"]


def test_console_read_only_sends_nothing(server_factory, pki, tmux):
    """--read-only shows output but keeps keystrokes from the guest; ^] leaves."""
    server = demo_server(server_factory, "vm1")
    tmux.type(console_command(server, pki, "vm1", "--read-only"))
    tmux.wait_line(r"Escape character is \^\]")
    tmux.type("echo typed-here")
    sent = run_client(client_args(server, pki, "send", "vm1", "echo from-elsewhere"))
    assert sent.returncode == 0, sent.stderr
    tmux.wait_line("from-elsewhere")
    assert b"typed-here" not in retained(server, "vm1")
    tmux.key("C-]")
    assert tmux.run_marked("echo rc=$?") == ["rc=0"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_console_signal_restores_the_terminal(server_factory, pki, tmux, signum):
    """SIGTERM or SIGHUP: the terminal is restored and the exit status is 128+N."""
    server = demo_server(server_factory, "vm1")
    before = tmux.run_marked("stty -a")
    pid_file = tmux.workdir / "client.pid"
    # exec: the pid written is the client's.
    command = f"echo $$ > {pid_file}; exec {console_command(server, pki, 'vm1')}"
    tmux.type(f"sh -c {shlex.quote(command)}")
    tmux.wait_line(r"Escape character is \^\]")
    os.kill(int(wait_for(lambda: pid_file.read_text().strip(), 10, "pid")), signum)
    assert tmux.run_marked("echo rc=$?") == [f"rc={128 + signum}"]
    assert tmux.run_marked("stty -a") == before


def test_console_leaves_while_the_server_is_gone(server_factory, pki, tmux):
    """With the server down and the client reconnecting, ^] still leaves cleanly."""
    server = demo_server(server_factory, "vm1")
    before = tmux.run_marked("stty -a")
    tmux.type(console_command(server, pki, "vm1"))
    tmux.wait_line(r"Escape character is \^\]")
    server.stop()
    tmux.wait_line(
        rf".*\[{PROG}: connection to 127\.0\.0\.1:\d+ lost; reconnecting\.\.\."
    )
    tmux.key("C-]")
    assert tmux.run_marked("echo rc=$?") == ["rc=0"]
    assert tmux.run_marked("stty -a") == before


# -- pipelines, tables -----------------------------------------------------------


def test_send_from_a_pipe_reaches_a_tail_follower(server_factory, pki, tmp_path):
    """printf 'echo abc\\n' | client send VM - ; a 'tail VM -f' follower sees abc."""
    server = demo_server(server_factory, "vm1")
    out_path = tmp_path / "follower.out"
    err_path = tmp_path / "follower.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        follower = subprocess.Popen(
            client_args(server, pki, "tail", "vm1", "-f"),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for(lambda: b"demo# " in out_path.read_bytes(), 15, "retained output")
        pipeline = "printf 'echo abc\\n' | " + shlex.join(
            client_args(server, pki, "send", "vm1", "-")
        )
        sent = run_client(["sh", "-c", pipeline])
        assert (sent.returncode, sent.stdout, sent.stderr) == (0, "", "")
        wait_for(lambda: b"\r\nabc\r\n" in out_path.read_bytes(), 15, "abc")
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(10) == 143
        assert err_path.read_bytes() == b""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(10)
    # What the follower printed is what the console retains, byte for byte.
    assert out_path.read_bytes() == retained(server, "vm1")[: out_path.stat().st_size]


def test_tail_prints_retained_output_and_exits(server_factory, pki):
    """tail VM prints what is retained; --tail N the last N bytes; --offset N from N."""
    server = demo_server(server_factory, "vm1")
    data = retained(server, "vm1")
    whole = run_client(client_args(server, pki, "tail", "vm1"), text=False)
    assert whole.returncode == 0
    assert whole.stdout == data
    last = run_client(
        client_args(server, pki, "tail", "vm1", "--tail", "6"), text=False
    )
    assert last.stdout == data[-6:]
    late = run_client(
        client_args(server, pki, "tail", "vm1", "--offset", "10"), text=False
    )
    assert late.stdout == data[10:]


def test_list_table_has_one_row_per_console(server_factory, pki):
    """list table: a header and one row per console with its state and offsets."""
    server = demo_server(server_factory, "vm-a", "vm-b", "vm-c")
    done = run_client(client_args(server, pki, "list", "table"))
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert rows[0] == [
        "vmId",
        "state",
        "firstOffset",
        "nextOffset",
        "readers",
        "writers",
    ]
    assert [row[0] for row in rows[1:]] == ["vm-a", "vm-b", "vm-c"]
    stats = {s["vmId"]: s for s in server.rpc().getAllVmStats()["statsList"]}
    for vm_id, state, first, next_, readers, writers in rows[1:]:
        assert state == "connected"
        assert int(first) == 0
        assert 0 < int(next_) <= stats[vm_id]["nextOffset"]
        assert (readers, writers) == ("0", "0")


def test_rpc_by_name_with_key_value_arguments(server_factory, pki):
    """Any RPC by name: key=value builds create's struct; exit status = status code."""
    server = demo_server(server_factory)
    args = ["create", "vmId=vm9", "console.type=spawn", "console.command=demo"]
    created = run_client(client_args(server, pki, "--json", *args))
    assert created.returncode == 0, created.stderr
    assert '"vmId": "vm9"' in created.stdout
    again = run_client(client_args(server, pki, *args))
    assert again.returncode == 4
    assert again.stderr.startswith(f"{PROG}: create: ")
    stats = run_client(client_args(server, pki, "getVmStats", "vmId=vm9"))
    assert stats.returncode == 0 and '"vmId": "vm9"' in stats.stdout


# -- errors: one line each, exact -----------------------------------------------------


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.stdout == ""
    assert done.stderr.endswith("\n") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr.rstrip("\n")


def test_error_connection_refused(pki):
    """Nobody listening: one line naming host and port, exit status 255."""
    port = free_port()
    done = run_client([*CLIENT, "--pki", str(pki.root), f"127.0.0.1:{port}", "ping"])
    assert done.returncode == 255
    assert one_line(done) == (
        f"{PROG}: cannot connect to 127.0.0.1:{port}: connection refused"
    )


def test_error_server_certificate_not_trusted(server, pki, tmp_path):
    """A CA that did not sign the server's certificate: the server's side, 255."""
    other = init_pki(tmp_path / "other", hostname="localhost")
    done = run_client(
        client_args(server, pki, "--ca", str(other.ca_cert), "console", "vm1")
    )
    assert done.returncode == 255
    assert one_line(done) == (
        f"{PROG}: TLS handshake with 127.0.0.1:{server.port} failed: the server's "
        f"certificate is not trusted by our CA ({other.ca_cert})"
    )


def test_error_client_certificate_refused(server, pki, odd_certs):
    """A client certificate from another CA: the server refused ours, 255."""
    cert, key = odd_certs["other_ca"]
    done = run_client(
        client_args(server, pki, "--cert", str(cert), "--key", str(key), "ping")
    )
    assert done.returncode == 255
    assert re.fullmatch(
        re.escape(
            f"{PROG}: TLS handshake with 127.0.0.1:{server.port} failed: the server "
            f"refused our client certificate ({cert}) ("
        )
        + r"[a-z0-9 ]*alert[a-z0-9 ]*\)",
        one_line(done),
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["getVmStats", "nope"],
            "getVmStats: Virtual machine does not exist: nope (status 1)",
        ),
        (["tail", "nope"], "Virtual machine does not exist: nope"),
        (["console", "nope"], "Virtual machine does not exist: nope"),
        (["send", "nope", "hello"], "Virtual machine does not exist: nope"),
    ],
)
def test_error_unknown_vm_exits_1(server, pki, args, message):
    """An unknown vmId: its message in one line, exit status 1 (noVM)."""
    done = run_client(client_args(server, pki, *args))
    assert done.returncode == 1
    assert one_line(done) == f"{PROG}: {message}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["127.0.0.1:54321"],
            "the following arguments are required: COMMAND",
        ),
        (["127.0.0.1:port", "ping"], "bad port in '127.0.0.1:port'"),
        (
            ["127.0.0.1", "tail", "vm1", "--offset", "x"],
            "argument --offset: invalid int value: 'x'",
        ),
        (
            ["127.0.0.1", "tail", "vm1", "--offset", "1", "--tail", "2"],
            "argument --tail: not allowed with argument --offset",
        ),
        (
            ["127.0.0.1", "console", "vm1", "-e", "^^^"],
            "bad escape character '^^^' (try '^]' or '^A')",
        ),
        (["127.0.0.1", "getVmStats", "a", "b"], "getVmStats takes at most 1 arguments"),
        (["127.0.0.1", "consoleRead", "vm1", "offset=x"], "offset must be an integer"),
        (["127.0.0.1", "no such!"], "unknown command 'no such!'"),
    ],
)
def test_error_bad_arguments_exit_2(args, message):
    """Bad arguments: one line, exit status 2, nothing sent anywhere."""
    done = run_client([*CLIENT, *args])
    assert done.returncode == 2
    line = one_line(done)
    assert line.startswith(f"{PROG}: {message}")
    if "(see" in line:
        assert line.endswith(f"(see {PROG} --help)")


def test_error_unreadable_certificates_exit_2(tmp_path):
    """A --pki directory without the files: one line naming the file, exit 2."""
    done = run_client([*CLIENT, "--pki", str(tmp_path), "127.0.0.1", "ping"])
    assert done.returncode == 2
    assert one_line(done) == (
        f"{PROG}: cannot read CA certificate {tmp_path}/certs/cacert.pem: "
        "No such file or directory"
    )
