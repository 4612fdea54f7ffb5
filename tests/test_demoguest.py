"""The demo guest behaves like a serial console on a raw pty.

It runs exactly as the server runs it: on a pty whose slave side is in raw
mode, so everything seen here (echo, line endings, backspace) is the program's
own doing, not the kernel's line discipline.
"""

from __future__ import annotations

import errno
import os
import re
import select
import subprocess
import sys
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROMPT = b"demo# "


class DemoProcess:
    """The demo guest on a fresh raw pty, with a deadline-bound expect()."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        environ = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vdsmconsole.demoguest", *args],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=environ,
            )
        finally:
            os.close(slave)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def read_some(self, timeout: float) -> bytes:
        """Whatever arrives within ``timeout``; b"" at EOF."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(self.master, 65536)
        except OSError as e:
            if e.errno != errno.EIO:  # EIO: the program closed the pty
                raise
            return b""

    def expect(self, needle: bytes, timeout: float = 10.0) -> bytes:
        """Read until ``needle``; return everything up to and including it."""
        deadline = time.monotonic() + timeout
        while needle not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {needle!r} in {self.buffer!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                chunk = self.read_some(0)
                if not chunk:
                    raise AssertionError(f"EOF before {needle!r}: {self.buffer!r}")
                self.buffer += chunk
        end = self.buffer.index(needle) + len(needle)
        seen, self.buffer = self.buffer[:end], self.buffer[end:]
        return seen

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


@pytest.fixture
def demo() -> Iterator[DemoProcess]:
    """A demo guest booted to its first prompt, killed at teardown."""
    process = DemoProcess("--fast")
    try:
        process.expect(PROMPT)
        yield process
    finally:
        process.close()


def test_banner_then_prompt() -> None:
    """It prints a kernel-like boot log and then the demo# prompt."""
    process = DemoProcess(env={"VDSMCONSOLE_DEMO_FAST": "1"})
    try:
        boot = process.expect(PROMPT)
        assert re.search(rb"\[ +\d+\.\d{6}\] Linux version ", boot)
        assert b"Try 'help'." in boot
        assert re.search(rb"(?<!\r)\n", boot) is None  # CRLF line endings only
    finally:
        process.close()


def test_typed_characters_are_echoed(demo: DemoProcess) -> None:
    """On a raw pty the program echoes each typed byte and erases on backspace."""
    demo.send(b"abc")
    demo.expect(b"abc")
    demo.send(b"\x7f")
    demo.expect(b"\b \b")
    demo.send(b"\x08")
    demo.expect(b"\b \b")
    demo.send(b"\r")
    assert (
        demo.expect(PROMPT) == b"\r\ndemo: unknown command 'a' (try help)\r\n" + PROMPT
    )


def test_echo_command(demo: DemoProcess) -> None:
    """echo TEXT prints TEXT on its own CRLF-terminated line."""
    demo.send(b"echo hello\r")
    assert demo.expect(PROMPT) == b"echo hello\r\nhello\r\n" + PROMPT


def test_crlf_is_one_enter(demo: DemoProcess) -> None:
    """CR LF ends one line, and a bare LF works too."""
    demo.send(b"echo one\r\necho two\n")
    demo.expect(b"one\r\n" + PROMPT)
    assert demo.expect(PROMPT) == b"echo two\r\ntwo\r\n" + PROMPT


def test_unknown_command(demo: DemoProcess) -> None:
    """An unknown command is named back, nothing is run."""
    demo.send(b"rm -rf /\r")
    demo.expect(b"demo: unknown command 'rm' (try help)\r\n" + PROMPT)


def test_count_and_flood(demo: DemoProcess) -> None:
    """count N prints N numbered lines; flood N prints exactly N bytes."""
    demo.send(b"count 3\r")
    assert demo.expect(PROMPT).endswith(
        b"count 1/3\r\ncount 2/3\r\ncount 3/3\r\n" + PROMPT
    )
    demo.send(b"flood 100000\r")
    demo.expect(b"flood 100000\r\n")
    out = demo.expect(PROMPT)[: -len(PROMPT)]
    assert len(out) == 100000  # 1250 whole lines: no extra line break
    lines = out.split(b"\r\n")
    assert {len(line) for line in lines} == {78, 0}
    # Numbered lines: no stretch of a flood repeats another.
    assert [line[:8] for line in lines[:3]] == [b"00000000", b"00000001", b"00000002"]
    assert len(set(lines)) == len(lines)
    demo.send(b"flood 5\r")
    assert demo.expect(PROMPT) == b"flood 5\r\n00000\r\n" + PROMPT


def test_ctrl_c_stops_a_paced_count(demo: DemoProcess) -> None:
    """^C during count N SECS stops the stream and gives the prompt back."""
    demo.send(b"count 1000 0.05\r")
    demo.expect(b"count 2/1000\r\n")
    demo.send(b"\x03")
    out = demo.expect(b"^C\r\n" + PROMPT)
    assert b"count 1000/1000" not in out


def test_heartbeat_when_idle() -> None:
    """An idle guest prints a heartbeat line and redraws the half-typed line."""
    process = DemoProcess("--fast", "--heartbeat", "0.3")
    try:
        process.expect(PROMPT)
        process.send(b"ech")
        process.expect(b"ech")
        seen = process.expect(PROMPT + b"ech", timeout=5)
        assert re.search(rb"\r\n\[heartbeat\] uptime \d+s\r\ndemo# ech$", seen)
    finally:
        process.close()


def test_exit_command(demo: DemoProcess) -> None:
    """exit says logout and ends the program with status 0."""
    demo.send(b"exit\r")
    demo.expect(b"logout\r\n")
    assert demo.proc.wait(timeout=10) == 0


def test_hangup_exits_cleanly() -> None:
    """When the server closes the pty the program exits with status 0."""
    process = DemoProcess("--fast")
    try:
        process.expect(PROMPT)
        os.close(process.master)
        process.master = os.open(os.devnull, os.O_RDONLY)  # for close()
        assert process.proc.wait(timeout=10) == 0
    finally:
        process.close()
