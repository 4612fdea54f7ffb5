"""The fake guest: a process of ours holding the master side of ptys.

Every relay under test opens the slave side (``/dev/pts/N``) exactly as it
would open a qemu ``-serial pty``, so all peers read the same kind of device
fed by the same program.  The guest echoes every byte it receives (the
latency scenario), and on command writes a bulk payload, a trickle of 8-byte
records, a flood or sync markers.

Control: JSON lines on stdin, JSON lines on stdout.  The first line out is
``{"ptys": [paths...], "pid": N}``.  Run as ``python -m bench.guest [--ptys K]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import sys
import time
from collections import deque
from collections.abc import Iterator

from bench.payload import bulk_blocks, record, start_marker, sync_marker

# The same raw mode the server puts a pty in (qemu's cfmakeraw).
from vdsmconsole.terminal import make_raw


def raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Pty:
    def __init__(self, index: int) -> None:
        self.index = index
        self.master, self.slave = os.openpty()
        # Keep the slave open: the pty outlives relays that come and go.
        make_raw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.out: deque[bytes] = deque()
        self.offset = 0  # into out[0]
        self.gen: Iterator[bytes] | None = None
        self.gen_name = ""
        self.started = False
        self.echoed = 0


class Guest:
    def __init__(self, count: int) -> None:
        raise_nofile(2 * count + 64)
        self.ptys = [Pty(i) for i in range(count)]
        self.sel = selectors.DefaultSelector()
        self.sel.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
        for pty in self.ptys:
            self.sel.register(pty.master, selectors.EVENT_READ, pty)
        self.stdin_buf = b""
        self.trickle: dict | None = None
        self.running = True

    # -- output ------------------------------------------------------------

    def queue(self, pty: Pty, data: bytes) -> None:
        was_idle = not pty.out and pty.gen is None
        pty.out.append(data)
        if was_idle:
            self.flush(pty)
        self.watch(pty)

    def watch(self, pty: Pty) -> None:
        want = selectors.EVENT_READ
        if pty.out or pty.gen is not None:
            want |= selectors.EVENT_WRITE
        if self.sel.get_key(pty.master).events != want:
            self.sel.modify(pty.master, want, pty)

    def flush(self, pty: Pty) -> None:
        """Write what is queued until the pty pushes back."""
        while True:
            if not pty.out:
                if pty.gen is None:
                    break
                block = next(pty.gen, None)
                if block is None:
                    pty.gen = None
                    emit(
                        {
                            "event": f"{pty.gen_name}-done",
                            "pty": pty.index,
                            "t": time.monotonic_ns(),
                        }
                    )
                    break
                pty.out.append(block)
            head = pty.out[0]
            try:
                n = os.write(pty.master, memoryview(head)[pty.offset :])
            except BlockingIOError:
                break
            if not pty.started and pty.gen is not None:
                pty.started = True
                emit(
                    {
                        "event": f"{pty.gen_name}-start",
                        "pty": pty.index,
                        "t": time.monotonic_ns(),
                    }
                )
            pty.offset += n
            if pty.offset >= len(head):
                pty.out.popleft()
                pty.offset = 0

    # -- commands ------------------------------------------------------------

    def command(self, msg: dict) -> None:
        cmd = msg["cmd"]
        pty = self.ptys[msg.get("pty", 0)]
        if cmd == "sync":
            self.queue(pty, sync_marker(msg["nonce"]))
        elif cmd == "mark":
            self.queue(pty, start_marker(msg["nonce"]))
        elif cmd == "bulk":
            pty.out.append(start_marker(msg["nonce"]))
            pty.gen = bulk_blocks(msg["size"])
            pty.gen_name, pty.started = "bulk", False
            self.flush(pty)
            self.watch(pty)
        elif cmd == "flood":
            pty.gen = _forever()
            pty.gen_name, pty.started = "flood", False
            self.flush(pty)
            self.watch(pty)
        elif cmd == "stop":
            pty.gen = None
            pty.out.clear()
            pty.offset = 0
            self.watch(pty)
            emit({"event": "stopped", "pty": pty.index})
        elif cmd == "trickle":
            self.queue(pty, start_marker(msg["nonce"]))
            count = int(msg["seconds"] * 1000 / msg["interval_ms"])
            step = int(msg["interval_ms"] * 1_000_000)
            start = time.monotonic_ns() + step
            self.trickle = {
                "pty": pty,
                "count": count,
                "step": step,
                "start": start,
                "seq": 0,
                "sends": [],
            }
        elif cmd == "echoed":
            emit({"event": "echoed", "pty": pty.index, "bytes": pty.echoed})
        elif cmd == "quit":
            self.running = False
        else:
            emit({"event": "error", "message": f"unknown command {cmd!r}"})

    def tick_trickle(self) -> float | None:
        """Write the records that are due; seconds until the next one."""
        tr = self.trickle
        if tr is None:
            return None
        now = time.monotonic_ns()
        while tr["seq"] < tr["count"]:
            due = tr["start"] + tr["seq"] * tr["step"]
            if due > now:
                return (due - now) / 1e9
            tr["sends"].append(time.monotonic_ns())
            self.queue(tr["pty"], record(tr["seq"]))
            tr["seq"] += 1
            now = time.monotonic_ns()
        emit({"event": "trickle-done", "pty": tr["pty"].index, "sends": tr["sends"]})
        self.trickle = None
        return None

    # -- the loop ----------------------------------------------------------

    def run(self) -> None:
        emit({"ptys": [p.path for p in self.ptys], "pid": os.getpid()})
        while self.running:
            timeout = self.tick_trickle()
            for key, events in self.sel.select(timeout):
                pty = key.data
                if pty is None:
                    self.read_control()
                    continue
                if events & selectors.EVENT_READ:
                    try:
                        data = os.read(pty.master, 65536)
                    except (BlockingIOError, OSError):
                        data = b""
                    if data:
                        pty.echoed += len(data)
                        self.queue(pty, data)
                if events & selectors.EVENT_WRITE:
                    self.flush(pty)
                    self.watch(pty)

    def read_control(self) -> None:
        data = os.read(sys.stdin.fileno(), 65536)
        if not data:
            self.running = False
            return
        self.stdin_buf += data
        while b"\n" in self.stdin_buf:
            line, self.stdin_buf = self.stdin_buf.split(b"\n", 1)
            if line.strip():
                self.command(json.loads(line))


def _forever() -> Iterator[bytes]:
    while True:
        yield from bulk_blocks(64 * 1024 * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.guest")
    parser.add_argument("--ptys", type=int, default=1)
    args = parser.parse_args()
    Guest(args.ptys).run()


if __name__ == "__main__":
    main()
