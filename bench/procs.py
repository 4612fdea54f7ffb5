"""Child processes the scenarios drive: the fake guest and the clients.

Both speak JSON lines on stdout; a thread per child reads them into a queue so
that the orchestrator can wait for an event with a deadline.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.peers import _more_files

ROOT = Path(__file__).resolve().parent.parent


class Child:
    def __init__(self, argv: list[str], log: Path) -> None:
        self.log_path = log
        err = open(log, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
            preexec_fn=_more_files,
        )
        err.close()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events.put(event)
        self.events.put({"event": "exited"})

    def send(self, message: dict[str, Any] | str) -> None:
        assert self.proc.stdin is not None
        text = message if isinstance(message, str) else json.dumps(message)
        try:
            self.proc.stdin.write(text.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def wait(self, name: str, timeout: float) -> dict[str, Any]:
        """The next event called ``name`` (earlier ones seen are kept)."""
        for event in self.seen:
            if event.get("event") == name:
                self.seen.remove(event)
                return event
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"timed out waiting for {name!r}{self._tail()}")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event.get("event") == name:
                return event
            if event.get("event") == "exited":
                self.events.put(event)
                raise RuntimeError(f"child exited waiting for {name!r}{self._tail()}")
            self.seen.append(event)

    def has(self, name: str) -> bool:
        while True:
            try:
                self.seen.append(self.events.get_nowait())
            except queue.Empty:
                break
        return any(e.get("event") == name for e in self.seen)

    def _tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            text = ""
        return f"\n{text}" if text else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


class Guest(Child):
    def __init__(self, workdir: Path, ptys: int = 1) -> None:
        super().__init__(
            [sys.executable, "-m", "bench.guest", "--ptys", str(ptys)],
            workdir / "guest.log",
        )
        first = self.events.get(timeout=60)
        if "ptys" not in first:
            raise RuntimeError(f"the guest did not start: {first}{self._tail()}")
        self.ptys: list[str] = first["ptys"]
        self.pid: int = first["pid"]

    def stop(self) -> None:
        self.send({"cmd": "quit"})
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        super().stop()


class Clients:
    """``count`` clients spread over ``procs`` client processes."""

    def __init__(
        self, workdir: Path, spec: dict[str, Any], count: int, procs: int = 1
    ) -> None:
        procs = max(1, min(procs, count))
        self.children: list[Child] = []
        first = 0
        for i in range(procs):
            n = count // procs + (1 if i < count % procs else 0)
            part = dict(spec, clients=n, first_index=first)
            first += n
            self.children.append(
                Child(
                    [sys.executable, "-m", "bench.clients", json.dumps(part)],
                    workdir / f"client{i}.log",
                )
            )

    def wait(self, name: str, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        return [
            c.wait(name, max(0.1, deadline - time.monotonic())) for c in self.children
        ]

    def all_have(self, name: str) -> bool:
        return all(c.has(name) for c in self.children)

    def stop(self) -> None:
        for c in self.children:
            c.stop()
