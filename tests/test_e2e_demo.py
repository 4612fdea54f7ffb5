"""README's first command, as a newcomer runs it: install, then the demo.

And what the demo prints, as a newcomer pastes it into a new terminal.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet.error import CannotListenError

from tests.serverproc import wait_for
from tests.tmuxhelp import Tmux
from tests.tools import require_tool
from tests.tunnelhelp import is_flat
from vdsmconsole.server.config import Config
from vdsmconsole.server.service import ConsoleService

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent


def readme_demo_command() -> str:
    """The first command in README.rst's quick start."""
    text = (REPO / "README.rst").read_text()
    commands = re.findall(r"^\s+\$ (.+)$", text, re.MULTILINE)
    assert commands, "README.rst shows no '$ command' lines"
    return commands[0]


def ignore_sigint() -> None:
    """In the child before exec: SIGINT ignored, as a script's ``cmd &`` has it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Demo:
    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        workdir: Path,
        sigint_ignored: bool = False,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.out = workdir / "demo.out"
        with open(self.out, "wb") as out:
            self.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=env,
                start_new_session=True,
                preexec_fn=ignore_sigint if sigint_ignored else None,
            )

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(
                f"demo exited {self.process.returncode}:\n{self.text()}"
            )
        return "Ctrl-C stops the demo." in self.text()

    def command(self, title: str) -> str:
        lines = self.text().splitlines()
        return lines[lines.index(f"# {title}") + 1]

    def commands(self) -> dict[str, str]:
        """Every ``# title`` line the demo printed, with the command after it."""
        lines = self.text().splitlines()
        return {
            line[2:]: lines[i + 1] for i, line in enumerate(lines) if line[:2] == "# "
        }

    def workdir(self) -> Path:
        found = re.search(r"throwaway PKI and state in (\S+)", self.text())
        assert found, self.text()
        return Path(found.group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            # The whole group: the demo and its demo guest.
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


@pytest.fixture
def fresh_venv_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["VENV"] = str(tmp_path / "venv")
    env.pop("PYTHONPATH", None)
    return env


def test_readme_first_command_runs_the_demo(tmp_path, fresh_venv_env):
    """README's first command installs into a fresh venv and the printed curl works."""
    require_tool("curl", "curl")
    command = readme_demo_command()
    assert command == "./tools/demo"
    demo = Demo(["bash", "-c", command], fresh_venv_env, tmp_path)
    try:
        # Installing from the package index takes most of this deadline.
        wait_for(demo.ready, 600, "the demo to install and start")
        curl = demo.command("XML-RPC ping with curl (HTTP/2)")
        result = subprocess.run(
            ["bash", "-c", curl], capture_output=True, timeout=30, check=True
        )
        assert b"<name>code</name>\n<value><int>0</int></value>" in result.stdout
        workdir = re.search(r"throwaway PKI and state in (\S+)", demo.text()).group(1)
    finally:
        demo.stop()
    assert demo.process.returncode == 0
    assert not Path(workdir).exists(), "the demo left its throwaway PKI behind"

    # Once installed, the demo answers ping within 10 s of starting.
    venv_demo = Path(fresh_venv_env["VENV"]) / "bin" / "vdsmconsole"
    again = Demo([str(venv_demo), "demo"], fresh_venv_env, tmp_path / "again")
    try:
        wait_for(again.ready, 10, "the demo to start")
        python = again.command("list the consoles with Python's xmlrpc.client")
        result = subprocess.run(
            ["bash", "-c", python.replace("python3 ", f"{sys.executable} ", 1)],
            capture_output=True,
            timeout=10,
            check=True,
            text=True,
        )
        assert "'vmId': 'demo'" in result.stdout
    finally:
        again.stop()


# A new terminal's PATH: the demo's virtual environment is not on it.
FRESH_PATH = "/usr/local/bin:/usr/bin:/bin"
DEMO_TITLES = {
    "XML-RPC ping with curl (HTTP/2)",
    "list the consoles with Python's xmlrpc.client",
    "follow the demo guest's console with wget",
    "attach to the demo guest's console (^] leaves)",
    "type a command into it with curl",
}
TUNNEL_TITLE = "a local port for a viewer of the demo guest's {} (^C stops it)"
TOKEN_TITLE = "a console token for its {}"
SCREEN_TITLES = {TUNNEL_TITLE.format("screen"), TOKEN_TITLE.format("screen")}
SERIAL_TITLES = {
    TUNNEL_TITLE.format("serial console"),
    TOKEN_TITLE.format("serial console"),
}


def demo_argv() -> list[str]:
    """The demo from this checkout's environment, on any free port."""
    return [sys.executable, "-m", "vdsmconsole", "demo", "--port", "0"]


@pytest.fixture
def demo(tmp_path):
    started = Demo(demo_argv(), dict(os.environ), tmp_path / "demo")
    try:
        wait_for(started.ready, 30, "the demo to start")
        yield started
    finally:
        started.stop()


def test_every_printed_command_works_in_a_fresh_shell(demo, tmp_path, monkeypatch):
    """Each command the demo prints works as printed in a shell without its venv."""
    require_tool("curl", "curl")
    require_tool("wget", "wget")
    terminal = Tmux(tmp_path)  # finds tmux on the test's PATH
    assert shutil.which("vdsmconsole-client", path=FRESH_PATH) is None, (
        "vdsmconsole-client is installed system-wide: this test would prove nothing"
    )
    require_tool("qemu-system-x86_64", "qemu-system-x86")  # the demo's screen
    commands = demo.commands()
    assert set(commands) == DEMO_TITLES | SCREEN_TITLES, (
        "a new printed command needs a check here"
    )
    env = {"PATH": FRESH_PATH, "HOME": str(tmp_path), "LANG": "C.UTF-8"}

    def run(title: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bash", "-c", commands[title]],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, f"{title}: {done.stderr}"
        return done

    ping = run("XML-RPC ping with curl (HTTP/2)")
    assert "<name>code</name>\n<value><int>0</int></value>" in ping.stdout
    assert (
        "'vmId': 'demo'" in run("list the consoles with Python's xmlrpc.client").stdout
    )
    typed = run("type a command into it with curl")
    assert typed.stdout.strip() == '{"written": 8}'

    followed = tmp_path / "wget.out"
    with open(followed, "wb") as out:
        wget = subprocess.Popen(
            ["bash", "-c", commands["follow the demo guest's console with wget"]],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: b"count 5/5" in followed.read_bytes(), 15, "wget's output")
    finally:
        os.killpg(wget.pid, signal.SIGKILL)
        wget.wait(10)

    # The screen: a VNC viewer (vncdo) through the printed tunnel, with no
    # password; the token command prints its URL and token.
    check_screen(commands[TUNNEL_TITLE.format("screen")], env, tmp_path)
    token = run(TOKEN_TITLE.format("screen")).stdout.splitlines()
    assert [line.split(": ")[0] for line in token] == ["url", "token", "expires"]
    password = (demo.workdir() / "vnc.secret").read_text()
    assert password not in demo.text()

    # The interactive client in a real terminal whose shell has the fresh PATH.
    monkeypatch.setenv("PATH", FRESH_PATH)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    try:
        terminal.start()
        terminal.type(commands["attach to the demo guest's console (^] leaves)"])
        terminal.wait_line(r"Escape character is \^\]")
        terminal.type("count 2")
        terminal.wait_line(r".*count 2/2")
        terminal.key("C-]")
        assert terminal.run_marked("echo rc=$?") == ["rc=0"]
    finally:
        terminal.kill()


def check_screen(tunnel_command: str, env: dict[str, str], tmp_path: Path) -> None:
    """The printed tunnel command, as a user runs it, lets vncdo capture the
    demo guest's screen: not one flat colour; ^C ends it."""
    out = tmp_path / "tunnel.out"
    with open(out, "wb") as stdout:
        tunnel = subprocess.Popen(
            ["bash", "-c", f"exec {tunnel_command}"],
            env=env,
            cwd=tmp_path,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def listening() -> str | None:
            assert tunnel.poll() is None, out.read_text()
            found = re.search(r"\(vncviewer (127\.0\.0\.1::\d+)\)", out.read_text())
            return found.group(1) if found else None

        server = wait_for(listening, 30, "the tunnel's listening line")
        png = tmp_path / "screen.png"
        vncdo = Path(sys.executable).parent / "vncdo"
        shown = subprocess.run(
            [str(vncdo), "-t", "60", "-s", server, "capture", str(png)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert shown.returncode == 0, shown.stderr
        assert not is_flat(png), "the demo guest's screen is one flat colour"
        tunnel.send_signal(signal.SIGINT)
        assert tunnel.wait(10) == 128 + signal.SIGINT
    finally:
        if tunnel.poll() is None:
            os.killpg(tunnel.pid, signal.SIGKILL)
            tunnel.wait(10)


def test_demo_without_qemu_says_why_and_prints_serial_commands(tmp_path):
    """Without qemu the demo says in one line why there is no graphical
    console, and prints the tunnel and token commands for the serial
    console instead, which work as printed."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty))  # no qemu-system-x86_64 on it
    demo = Demo(demo_argv(), env, tmp_path / "demo")
    try:
        wait_for(demo.ready, 30, "the demo to start")
        lines = demo.text().splitlines()
        assert (
            "no graphical console: qemu-system-x86_64 is not installed "
            "(apt-get install qemu-system-x86)"
        ) in lines
        commands = demo.commands()
        assert set(commands) == DEMO_TITLES | SERIAL_TITLES
        token = subprocess.run(
            ["bash", "-c", commands[TOKEN_TITLE.format("serial console")]],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert token.returncode == 0, token.stderr
        assert "/consoleTunnel/demo?protocol=serial&token=" in token.stdout
    finally:
        demo.stop()


def test_demo_started_with_sigint_ignored_stops_on_sigint(tmp_path):
    """A demo that inherited SIGINT ignored stops on SIGINT, stops the qemu of
    its screen and removes its files."""
    demo = Demo(demo_argv(), dict(os.environ), tmp_path, sigint_ignored=True)
    workdir = None
    try:
        wait_for(demo.ready, 30, "the demo to start")
        workdir = demo.workdir()
        assert workdir.is_dir()
        qemu = re.search(r"\(qemu pid (\d+)\)", demo.text())
        os.kill(demo.process.pid, signal.SIGINT)  # the demo alone, not its group
        try:
            demo.process.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail("the demo ignored SIGINT")
        assert demo.process.returncode == 0, demo.text()
        assert not workdir.exists(), "the demo left its throwaway PKI behind"
        if qemu:  # the demo's screen stops with it (it reaped its qemu)
            assert not Path(f"/proc/{qemu.group(1)}").exists()
    finally:
        demo.stop()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)  # whatever the outcome


def time_wait_port() -> int:
    """A loopback port whose one trace is a closed connection in TIME_WAIT."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the side that closes first keeps the TIME_WAIT
            assert client.recv(1) == b""  # its FIN arrived
    return port


def bind_fails(port: int) -> bool:
    """Whether a bind without SO_REUSEADDR (the old probe's) is refused."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def demo_listen(port: int, any_port_if_busy: bool = True) -> int:
    """The port the service's listen ends up on, as the demo configures it."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    config = Config(bind="127.0.0.1", port=port, any_port_if_busy=any_port_if_busy)
    service = SimpleNamespace(config=config, reactor=reactor)
    listening = ConsoleService._listen(service, Factory())  # type: ignore[arg-type]
    try:
        return listening.getHost().port
    finally:
        listening.stopListening()


def test_demo_listen_takes_a_port_in_time_wait():
    """A port held only by TIME_WAIT is the demo's: the server listens there."""
    port = time_wait_port()
    wait_for(lambda: bind_fails(port), 5, "the connection to reach TIME_WAIT")
    assert demo_listen(port) == port


def test_demo_listen_moves_off_a_port_in_use():
    """A port another program listens on when the demo listens: any free port
    instead (decided by the listen itself, so no probe can race another
    program); without the demo's flag, the server refuses to start."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        got = demo_listen(taken)
        assert got not in (taken, 0)
        with pytest.raises(CannotListenError):
            demo_listen(taken, any_port_if_busy=False)
