"""A pretend guest for ``vdsmconsole demo``: a boot log and a tiny prompt.

Why it exists: the demo has to show a live console (a boot log to follow, a
prompt that answers keystrokes, a stream that flows) on any machine, without
qemu.  The server runs this program on a fresh pty, as it would attach to a
guest's serial port.

It is deliberately NOT a shell.  It knows a handful of built-in commands and
never runs anything, so exposing it over the network exposes nothing.

Like a real serial console the pty is in raw mode: the kernel neither echoes
nor edits lines, so this program echoes typed bytes itself, handles
backspace, takes CR or LF as Enter and writes ``\\r\\n`` line endings.  While
idle it prints a heartbeat every 10 seconds so a follower sees it is alive.

Run it by hand with ``vdsmconsole-demoguest`` or ``python -m
vdsmconsole.demoguest`` (``--fast`` skips the pauses of the boot log; so does
``VDSMCONSOLE_DEMO_FAST=1``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import os
import platform
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator, Sequence

PROMPT = b"demo# "
HEARTBEAT_SECONDS = 10.0
MAX_COUNT = 1_000_000
MAX_FLOOD = 64 * 1024 * 1024
MAX_INTERVAL = 10.0
MAX_LINE = 4096  # a pasted novel is cut short, not kept in memory

BOOT_LOG = (
    "Linux version 6.1.0-demo (vdsmconsole@demo) (gcc 12.2.0) #1 SMP PREEMPT_DYNAMIC",
    "Command line: console=ttyS0,115200n8 quiet",
    "x86/fpu: x87 FPU will use FXSAVE",
    "Memory: 2014208K/2096632K available (14336K kernel code)",
    "Serial: 8250/16550 driver, 4 ports, IRQ sharing enabled",
    "00:04: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A",
    "virtio_blk virtio1: [vda] 20971520 512-byte logical blocks (10.7 GB/10.0 GiB)",
    "EXT4-fs (vda1): mounted filesystem with ordered data mode. Quota mode: none.",
    "Run /sbin/init as init process",
)

HELP = """\
This is the vdsmconsole demo guest. It is not a shell: nothing you type runs.
Commands:
  help              this text
  uname             pretend kernel name
  date              the current date and time
  uptime            how long this demo guest has been up
  echo TEXT         print TEXT
  count N [SECS]    print N numbered lines, SECS apart (^C stops)
  flood N           print N bytes as fast as possible
  exit              leave (the console goes down)
Keys: Backspace, ^U erases the line, ^C cancels, ^D on an empty line exits."""

# Input bytes with a meaning of their own.
BACKSPACES = (0x7F, 0x08)
CTRL_C, CTRL_D, CTRL_U, ESC = 0x03, 0x04, 0x15, 0x1B


class Exit(Exception):
    """Raised to leave the main loop with exit status 0."""


class DemoGuest:
    """The console program: line editing, commands and heartbeats on two fds."""

    def __init__(
        self,
        infd: int = 0,
        outfd: int = 1,
        fast: bool = False,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.infd = infd
        self.outfd = outfd
        self.fast = fast
        self.heartbeat = heartbeat
        self.started = time.monotonic()
        self._line = bytearray()  # what has been typed since the prompt
        self._pending: collections.deque[int] = collections.deque()
        self._out = bytearray()
        self._eof = False
        self._after_cr = False  # swallow the LF of a CR LF pair
        self._escape = 0  # 0: none, 1: after ESC, 2: in a CSI sequence
        self._next_heartbeat = 0.0

    # -- output ------------------------------------------------------------

    def _emit(self, data: bytes) -> None:
        self._out += data

    def _say(self, text: str = "") -> None:
        """Queue one line of output, terminal style."""
        self._emit(text.replace("\n", "\r\n").encode() + b"\r\n")

    def _flush(self) -> None:
        sent = 0
        with memoryview(self._out) as view:
            while sent < len(view):
                sent += os.write(self.outfd, view[sent:])
        self._out.clear()

    # -- input -------------------------------------------------------------

    def _read(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` for input into the queue; False on timeout."""
        self._flush()  # never block with output still unsent
        if self._eof:
            return False
        ready, _, _ = select.select([self.infd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.infd, 4096)
        except OSError as e:
            if e.errno != errno.EIO:  # EIO: the pty's other side hung up
                raise
            data = b""
        if not data:
            self._eof = True
            return False
        self._pending.extend(data)
        return True

    def _idle(self, seconds: float) -> bool:
        """Pause while reading type-ahead; True if ^C arrived meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not self._read(left) and self._eof:
                return False
            if CTRL_C in self._pending:
                while self._pending.popleft() != CTRL_C:
                    pass  # type-ahead before ^C is cancelled with it
                return True
        return False

    # -- the main loop -----------------------------------------------------

    def run(self) -> int:
        """Boot, then serve the prompt until exit or end of input."""
        try:
            self.boot()
            self._prompt()
            while True:
                if not self._pending:
                    timeout = max(0.0, self._next_heartbeat - time.monotonic())
                    if not self._read(timeout):
                        if self._eof:
                            return 0
                        self._beat()
                        continue
                self._key(self._pending.popleft())
        except Exit:
            return 0
        except OSError as e:
            if e.errno in (errno.EIO, errno.EPIPE):  # nobody is listening
                return 0
            raise
        finally:
            with contextlib.suppress(OSError):
                self._flush()

    def boot(self) -> None:
        """Print a kernel-like boot log, pausing between lines unless fast."""
        for line in BOOT_LOG:
            if not self.fast:
                self._idle(0.15)
            elapsed = time.monotonic() - self.started
            self._say(f"[{elapsed:12.6f}] {line}")
            self._flush()
        self._say()
        self._say("vdsmconsole demo guest: not a shell, nothing runs. Try 'help'.")

    def _prompt(self) -> None:
        self._emit(PROMPT)
        self._next_heartbeat = time.monotonic() + self.heartbeat

    def _beat(self) -> None:
        """Say we are alive, then redraw the prompt and the half-typed line."""
        self._emit(b"\r\n")
        self._say(f"[heartbeat] uptime {self._uptime()}s")
        self._prompt()
        self._emit(bytes(self._line))

    def _uptime(self) -> int:
        return int(time.monotonic() - self.started)

    def _key(self, byte: int) -> None:
        """Line editing for one input byte."""
        self._next_heartbeat = time.monotonic() + self.heartbeat
        after_cr, self._after_cr = self._after_cr, False
        if self._escape:  # drop arrow keys and other escape sequences
            if self._escape == 1:
                self._escape = 2 if byte in b"[O" else 0
            elif 0x40 <= byte <= 0x7E:
                self._escape = 0
            return
        if byte == ESC:
            self._escape = 1
        elif byte in b"\r\n":
            if byte == 0x0A and after_cr:
                return
            self._after_cr = byte == 0x0D
            self._emit(b"\r\n")
            line = self._line.decode(errors="replace")
            self._line.clear()
            self.command(line)
            self._prompt()
        elif byte in BACKSPACES:
            if self._line:
                # Remove a whole UTF-8 character: its continuation bytes first.
                while self._line and self._line[-1] & 0xC0 == 0x80:
                    self._line.pop()
                if self._line:
                    self._line.pop()
                self._emit(b"\b \b")
        elif byte == CTRL_U:
            self._emit(b"\b \b" * len(self._line.decode(errors="replace")))
            self._line.clear()
        elif byte == CTRL_C:
            self._line.clear()
            self._emit(b"^C\r\n")
            self._prompt()
        elif byte == CTRL_D:
            if not self._line:
                self._say("exit")
                raise Exit
        elif byte >= 0x20:  # printable ASCII and UTF-8 bytes
            if len(self._line) >= MAX_LINE:
                self._emit(b"\a")
                return
            self._line.append(byte)
            self._emit(bytes([byte]))

    # -- commands ----------------------------------------------------------

    def command(self, line: str) -> None:
        """Run one built-in command; nothing here ever starts a process."""
        words = line.split(None, 1)
        if not words:
            return
        name, rest = words[0], (words[1] if len(words) > 1 else "")
        if name == "help":
            self._say(HELP)
        elif name == "uname":
            self._say(f"Linux demo 6.1.0-demo #1 SMP PREEMPT_DYNAMIC {_machine()}")
        elif name == "date":
            self._say(time.strftime("%a %b %e %H:%M:%S %Z %Y"))
        elif name == "uptime":
            self._say(
                f"{time.strftime('%H:%M:%S')} up {self._uptime()}s, "
                "1 user, load average: 0.00, 0.00, 0.00"
            )
        elif name == "echo":
            self._say(rest)
        elif name == "count":
            self._count(rest.split())
        elif name == "flood":
            self._flood(rest.split())
        elif name in ("exit", "logout"):
            self._say("logout")
            raise Exit
        else:
            self._say(f"demo: unknown command '{name}' (try help)")

    def _count(self, args: list[str]) -> None:
        n = _number(args[0] if args else "", MAX_COUNT)
        interval = _seconds(args[1]) if len(args) > 1 else 0.0
        if n is None or interval is None or len(args) > 2:
            self._say(
                f"demo: usage: count N [SECS], N up to {MAX_COUNT}, "
                f"SECS up to {MAX_INTERVAL:g}"
            )
            return
        for i in range(1, n + 1):
            self._say(f"count {i}/{n}")
            if interval and i < n:
                if self._idle(interval):
                    self._emit(b"^C\r\n")
                    return
                if self._eof:
                    return
            elif len(self._out) >= 65536:
                self._flush()

    def _flood(self, args: list[str]) -> None:
        n = _number(args[0] if args else "", MAX_FLOOD)
        if n is None or len(args) != 1:
            self._say(f"demo: usage: flood N, N up to {MAX_FLOOD}")
            return
        self._flush()
        last = b"\n"
        for chunk in _flood_bytes(n):
            self._emit(chunk)
            self._flush()
            last = chunk[-1:]
        if last != b"\n":
            self._emit(b"\r\n")  # the prompt starts on a line of its own


def _machine() -> str:
    return platform.machine() or "x86_64"


def _number(text: str, limit: int) -> int | None:
    """A decimal from 0 to ``limit``, or None."""
    if not text.isdigit() or len(text) > 12:
        return None
    value = int(text)
    return value if value <= limit else None


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value <= MAX_INTERVAL else None


def _flood_bytes(n: int) -> Iterator[bytes]:
    """Exactly ``n`` bytes of 80-byte numbered lines (78 characters and CRLF).

    The line numbers make every stretch of the flood unique, so a client that
    lost or repeated a block cannot end up with the right checksum by chance.
    """
    alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    filler = (alphabet * 2)[:69]
    lines_per_block = 819  # 65520 bytes
    number = 0
    while n > 0:
        block = b"".join(
            b"%08d %s\r\n" % (number + i, filler) for i in range(lines_per_block)
        )
        number += lines_per_block
        size = min(n, len(block))
        yield block[:size]
        n -= size


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode when run by hand in a terminal; restore it afterwards.

    On the server's pty this changes nothing: the server already made it raw.
    """
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:  # not a tty: a pipe or a file
        yield
        return
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vdsmconsole-demoguest",
        description="A pretend guest console for vdsmconsole demo (not a shell).",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        default=os.environ.get("VDSMCONSOLE_DEMO_FAST") == "1",
        help="no pauses in the boot log (also VDSMCONSOLE_DEMO_FAST=1)",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=HEARTBEAT_SECONDS,
        metavar="SECS",
        help=f"idle time between heartbeat lines (default {HEARTBEAT_SECONDS:g})",
    )
    args = parser.parse_args(argv)
    if args.heartbeat <= 0:
        parser.error("--heartbeat must be positive")
    guest = DemoGuest(fast=args.fast, heartbeat=args.heartbeat)
    with _raw_terminal(sys.stdin.fileno()):
        return guest.run()


if __name__ == "__main__":
    sys.exit(main())
