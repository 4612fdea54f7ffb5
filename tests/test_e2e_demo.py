"""README's first command, as a newcomer runs it: install, then the demo."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serverproc import wait_for
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent


def readme_demo_command() -> str:
    """The first command in README.rst's quick start."""
    text = (REPO / "README.rst").read_text()
    commands = re.findall(r"^\s+\$ (.+)$", text, re.MULTILINE)
    assert commands, "README.rst shows no '$ command' lines"
    return commands[0]


class Demo:
    def __init__(self, argv: list[str], env: dict[str, str], workdir: Path) -> None:
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
