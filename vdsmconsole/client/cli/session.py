"""``console VMID``: a raw terminal, output from the guest, keystrokes to it."""

from __future__ import annotations

import os
import sys
import termios
import tty
from typing import IO, Any

from twisted.internet import defer
from twisted.python.failure import Failure

from vdsmconsole.client.api import ConsoleClient
from vdsmconsole.client.cli.args import escape_name
from vdsmconsole.client.cli.output import PROG, Output, _report_start, resume_note
from vdsmconsole.client.cli.signals import restore_signals, stop_on_signals
from vdsmconsole.client.errors import (
    ClientError,
    ConsoleUnavailable,
    NoSuchConsole,
)
from vdsmconsole.client.fdio import FDReader, pollable
from vdsmconsole.client.inputstream import InputStream
from vdsmconsole.client.resuming import ResumingFollow
from vdsmconsole.client.stream import Stream

INPUT_RETRY = 2.0  # seconds between attempts to reopen input to a down guest


FLUSH_TIMEOUT = 2.0  # how long leaving waits for typed bytes to be delivered


class RawTerminal:
    """A terminal in raw mode, put back as it was by ``restore()`` (idempotent)."""

    active: list[RawTerminal] = []

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list[Any] | None = None

    def enter(self) -> None:
        self.saved = termios.tcgetattr(self.fd)
        RawTerminal.active.append(self)
        tty.setraw(self.fd, termios.TCSADRAIN)

    def restore(self) -> None:
        saved, self.saved = self.saved, None
        if self in RawTerminal.active:
            RawTerminal.active.remove(self)
        if saved is None:
            return
        try:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)
        except (termios.error, OSError):
            pass  # the terminal is gone (SIGHUP): nothing left to restore

    @classmethod
    def restore_all(cls) -> None:
        for terminal in list(cls.active):
            terminal.restore()


class ConsoleSession:
    """``console VMID``: output to the terminal, keystrokes to the guest.

    Output follows with ``ResumingFollow``; input is one streaming POST
    (``ConsoleClient.open_input``) reopened when the connection comes back.
    Keystrokes typed while there is no input stream are dropped, not queued
    for later: nobody wants an Enter typed into a dead connection replayed.
    """

    def __init__(
        self,
        reactor: Any,
        client: ConsoleClient,
        vm_id: str,
        *,
        escape: int,
        read_only: bool = False,
        start: dict[str, Any] | None = None,
        stdin_fd: int = 0,
        stdout_fd: int = 1,
        stderr: IO[str] = sys.stderr,
    ) -> None:
        self.reactor = reactor
        self.client = client
        self.vm_id = vm_id
        self.escape = bytes([escape])
        self.escape_name = escape_name(escape)
        self.read_only = read_only
        self.start = start or {}
        self.stdin_fd = stdin_fd
        self.stderr = stderr
        self.output = Output(stdout_fd)
        self.finished: defer.Deferred[Any] = defer.Deferred()
        self.follower: ResumingFollow | None = None
        self.input: InputStream | None = None
        self.reader: FDReader | None = None
        self.terminal: RawTerminal | None = None
        self.newline = "\n"
        self.expected: int | None = None
        self._input_retry: Any = None
        self._down_noted = False

    def say(self, text: str) -> None:
        self.stderr.write(text)
        self.stderr.flush()

    def end(self, result: Any) -> None:
        if self.reader is not None:
            # What is typed from now on is for the shell, not the guest.
            self.reader.stopProducing()
        if not self.finished.called:
            self.finished.callback(result)

    async def run(self) -> int:
        follower = ResumingFollow(
            self.client,
            self.vm_id,
            self._output,
            on_lost=self._lost,
            on_resumed=self._resumed,
            **self.start,
        )
        self.follower = follower
        stream = await follower.start()  # errors here: before raw mode
        previous: dict[int, Any] = {}
        trigger = self.reactor.addSystemEventTrigger(
            "before", "shutdown", self._cleanup
        )
        try:
            if os.isatty(self.stdin_fd):
                self.terminal = RawTerminal(self.stdin_fd)
                self.terminal.enter()
                self.newline = "\r\n"
            previous = stop_on_signals(self.reactor, self.finished)
            # Said once the terminal and the signals are ours: from here on
            # every way out restores the terminal.
            self.say(
                f"Connected to {self.vm_id} at {self.client.where}{self.newline}"
                f"Escape character is {self.escape_name}{self.newline}"
            )
            _report_start(stream, self.stderr, self.newline)
            follower.done.addBoth(self._follow_done)
            if not self.read_only:
                self._open_input()
            # Read the keyboard for input or at least for the escape; /dev/null
            # or a file cannot be watched, and there is nothing to type.
            if (not self.read_only or self.terminal) and pollable(self.stdin_fd):
                self.reader = FDReader(
                    self.reactor, self.stdin_fd, self._typed, self._stdin_eof
                )
                self.reader.start()
            result = await self.finished
            await self._flush_input()
        finally:
            self._cleanup()
            restore_signals(previous)
            self.reactor.removeSystemEventTrigger(trigger)
        if isinstance(result, BaseException):
            raise result
        return int(result)

    def _cleanup(self) -> None:
        if self.reader is not None:
            self.reader.stopProducing()
        if self._input_retry is not None and self._input_retry.active():
            self._input_retry.cancel()
        if self.follower is not None:
            self.follower.stop()
        if self.input is not None:
            self.input.stopProducing()
        if self.terminal is not None:
            if self.terminal.saved is not None:
                self.output(b"\r\n")
            self.terminal.restore()

    async def _flush_input(self) -> None:
        """Let the keystrokes typed before leaving reach the guest."""
        stream = self.input
        if stream is None or not stream.open:
            return
        stream.finish()
        done: defer.Deferred[Any] = defer.Deferred()
        stream.done.addBoth(lambda _: None if done.called else done.callback(None))
        call = self.reactor.callLater(
            FLUSH_TIMEOUT, lambda: None if done.called else done.callback(None)
        )
        await done
        if call.active():
            call.cancel()

    # output
    def _output(self, data: bytes) -> None:
        self.output(data)
        if self.output.broken is not None:
            self.end(0)

    def _lost(self, error: ClientError) -> None:
        assert self.follower is not None
        self.expected = self.follower.offset
        self.say(
            f"{self.newline}[{PROG}: connection to {self.client.where} lost; "
            "reconnecting..."
        )

    def _resumed(self, stream: Stream, lost: int) -> None:
        self.say(f" {resume_note(stream, self.expected)}]{self.newline}")
        if not self.read_only:
            self._open_input()

    def _follow_done(self, result: Any) -> None:
        if self.finished.called:
            return
        # Resuming is pointless (the console was destroyed, TLS refused).
        self.end(result.value if isinstance(result, Failure) else 0)

    # input
    def _typed(self, data: bytes) -> None:
        index = data.find(self.escape)
        if index >= 0:
            self._deliver(data[:index])
            self.end(0)
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        if data and not self.read_only and self.input is not None and self.input.open:
            self.input.write(data)

    def _stdin_eof(self) -> None:
        if self.terminal is not None:
            self.end(0)  # the terminal hung up
        elif self.input is not None:
            self.input.finish()  # piped input ended: keep following

    def _open_input(self) -> None:
        if self.finished.called or (self.input is not None and self.input.open):
            return
        stream = self.client.open_input(self.vm_id)
        self.input = stream
        stream.done.addBoth(self._input_ended, stream)

    def _input_ended(self, result: Any, stream: InputStream) -> None:
        if self.finished.called or stream is not self.input:
            return
        if isinstance(result, Failure):
            if result.check(NoSuchConsole):
                self.end(result.value)
                return
            if result.check(ConsoleUnavailable) and not self._down_noted:
                self._down_noted = True
                self.say(
                    f"{self.newline}[{PROG}: the guest of {self.vm_id} is down; "
                    f"input is not delivered]{self.newline}"
                )
        else:
            self._down_noted = False
        assert self.follower is not None
        if self.follower.connected and not self.finished.called:
            # Output flows, input does not: try again in a while.  Otherwise
            # the follower's reconnection reopens input.
            self._input_retry = self.reactor.callLater(INPUT_RETRY, self._open_input)
