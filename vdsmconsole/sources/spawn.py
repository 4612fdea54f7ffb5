"""A command named in the configuration, run on a fresh raw pty (demo, tests)."""

from __future__ import annotations

import os
import signal
import termios
from typing import Any

from twisted.internet import error
from twisted.internet.protocol import (
    ProcessProtocol,
)
from twisted.python.failure import Failure

from vdsmconsole.core.interfaces import SourceState
from vdsmconsole.sources.base import _SourceBase
from vdsmconsole.sources.options import READ_SIZE, Reactor, SourceOptions
from vdsmconsole.terminal import make_raw


def _describe_exit(reason: Failure) -> str:
    value = reason.value
    exitCode = getattr(value, "exitCode", None)
    sig = getattr(value, "signal", None)
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {name}"
    return f"exited with status {exitCode or 0}"


class _ChildProtocol(ProcessProtocol):
    def __init__(self, source: SpawnSource) -> None:
        self._source = source

    def connectionMade(self) -> None:
        self._source._childStarted(self.transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._source._emitData(data)

    def processExited(self, reason: Failure) -> None:
        self._source._childExited(reason)

    def processEnded(self, reason: Failure) -> None:
        self._source._childEnded(reason)


class SpawnSource(_SourceBase):
    """A command named in the configuration, run on a fresh raw pty."""

    kind = "spawn"

    def __init__(self, command: str, options: SourceOptions, reactor: Reactor) -> None:
        super().__init__(reactor, options)
        self._command = command
        self._options = options
        self._process: Any = None
        self._pid = 0
        self._exit = ""
        self._closeCall: Any = None
        self._killCall: Any = None

    def _target(self) -> dict[str, Any]:
        return {"command": self._command}

    def _moreFacts(self) -> dict[str, Any]:
        return {
            "pid": self._pid,
            "running": self._process is not None,
            "exitStatus": self._exit,
        }

    def _start(self) -> None:
        argv = self._options.spawn_commands.get(self._command)
        if not argv:
            self._lastError = (
                f"spawn command {self._command!r} is not in the configuration"
            )
            self._setState(SourceState.DOWN, self._lastError)
            return
        env = None if self._options.spawn_env is None else dict(self._options.spawn_env)
        master, slave = os.openpty()
        try:
            # Raw before the child starts, so that its first bytes already
            # pass unchanged and nothing it reads is echoed back to us.
            make_raw(slave)
            self._reactor.spawnProcess(
                _ChildProtocol(self),
                argv[0],
                list(argv),
                env=env,
                usePTY=(master, slave, os.ttyname(slave)),
            )
        except (OSError, termios.error) as e:
            # PTYProcess leaves a pty it was given open when fork fails.
            os.close(master)
            os.close(slave)
            self._lastError = f"cannot run {self._command!r}: {e.args[-1]}"
            self._setState(SourceState.DOWN, self._lastError)

    def _childStarted(self, process: Any) -> None:
        # Called from within spawnProcess: the pid is known, the pty is ours.
        self._process = process
        self._pid = process.pid
        self._registerGate(process)
        self._applyReading()
        self._setState(
            SourceState.CONNECTED, f"started {self._command!r} (pid {self._pid})"
        )

    def _childExited(self, reason: Failure) -> None:
        self._exit = _describe_exit(reason)
        if self._killCall is not None and self._killCall.active():
            self._killCall.cancel()
        # processEnded waits for the pty to read EIO too: output may still be
        # on its way.  But a grandchild can hold the pty open, and a paused
        # reader sees no EIO, so do not wait for ever.
        self._scheduleClose(0.0 if self._stopping else self._options.stop_timeout)

    def _scheduleClose(self, delay: float) -> None:
        if self._closeCall is not None and self._closeCall.active():
            self._closeCall.cancel()
        self._closeCall = self._reactor.callLater(delay, self._closePty)

    def _closePty(self) -> None:
        process = self._process
        if process is not None and not process.disconnected:
            # What the child wrote last is still in the pty when reading was
            # paused: hand it on rather than drop it with the master.
            for _ in range(16):
                try:
                    data = os.read(process.fileno(), READ_SIZE)
                except OSError:  # EAGAIN: all read; EIO: nobody has the slave
                    break
                if not data:
                    break
                self._emitData(data)
            # There is no abortConnection on a PTYProcess, and loseConnection
            # waits for input the child may never read; this closes the master
            # and lets processEnded come.
            process.connectionLost(Failure(error.ConnectionDone()))

    def _childEnded(self, reason: Failure) -> None:
        self._exit = _describe_exit(reason)
        self._process = None
        self._dropGate()
        for call in (self._closeCall, self._killCall):
            if call is not None and call.active():
                call.cancel()
        if self._stopping:
            self._stopDone()
            return
        self._lastError = f"{self._command!r} (pid {self._pid}) {self._exit}"
        self._setState(SourceState.DOWN, self._lastError)

    def _signal(self, name: str) -> None:
        try:
            self._process.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass

    def _kill(self) -> None:
        self._signal("KILL")
        # Reaped or not, the child may have left descendants on the pty.
        self._scheduleClose(0.0)

    def _stop(self) -> None:
        if self._process is None:
            self._stopDone()
            return
        if self._exit:
            # Already reaped, only its pty is still open: close that now.
            self._scheduleClose(0.0)
            return
        self._signal("TERM")
        self._killCall = self._reactor.callLater(self._options.stop_timeout, self._kill)

    def _writeTransport(self) -> Any:
        return self._process

    def _applyReading(self) -> None:
        if self._process is None:
            return
        if self._holdReading:
            self._process.pauseProducing()
        else:
            self._process.resumeProducing()
