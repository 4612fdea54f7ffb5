"""A real terminal for tests of interactive programs: tmux on its own socket."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import uuid
from pathlib import Path

from tests.serverproc import wait_for
from tests.tools import require_tool


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
