"""A pty whose master the guest's qemu holds: attached once, never reopened by path.

The kernel hands ``/dev/pts/N`` to the next pty as soon as the old one is
gone, so reopening the path could attach another guest's console.  After a
restart the path is opened again only if the process that held the pty's
master when it was first attached still holds it (``core.ptyowner``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.python.failure import Failure

from vdsmconsole.core.interfaces import SourceState
from vdsmconsole.core.ptyowner import (
    PROC,
    PtyOwner,
    _fd_pts_index,
    find_pty_owner,
    owner_holds,
    pts_index,
)
from vdsmconsole.sources.base import _log, _SourceBase
from vdsmconsole.sources.options import Reactor, SourceOptions
from vdsmconsole.sources.tty import _NotATerminal, _open_tty, _TtyReader, _TtyWriter


class PtySource(_SourceBase):
    """An existing pty slave whose master the guest's qemu holds.

    Opened once at start and never again: see the module docstring.  At its
    first attach (``create``) the source looks up which process holds the
    pty's master, its ``owner``, which the registry records.  After a restart
    (``restored``) the path is opened again only if that same process (pid and
    start time) still holds the master of that pty number; otherwise, or when
    no owner was recorded, the console stays ``down`` and the path is never
    opened, since the number may now be another guest's.
    """

    kind = "pty"

    def __init__(
        self,
        path: str,
        reactor: Reactor,
        options: SourceOptions | None = None,
        *,
        restored: bool = False,
        owner: PtyOwner | None = None,
        proc: Path = PROC,
    ) -> None:
        super().__init__(reactor, options)
        self._path = path
        self._reader: _TtyReader | None = None
        self._writer: _TtyWriter | None = None
        self._restored = restored
        self._proc = proc
        self.owner: PtyOwner | None = owner if restored else None
        """Who held the master when the pty was first attached; None: unknown."""

    def _target(self) -> dict[str, Any]:
        return {"path": self._path}

    def _moreFacts(self) -> dict[str, Any]:
        return {"ownerPid": 0 if self.owner is None else self.owner.pid}

    def _refuse(self, why: str) -> None:
        self._lastError = why
        self._setState(SourceState.DOWN, why)

    def _restoredIndex(self) -> int | None:
        """The pty number to reopen after a restart, if its owner still holds
        it; otherwise go down saying why and answer None."""
        path = self._path
        owner = self.owner
        # realpath only reads links, it opens nothing.
        index = pts_index(os.path.realpath(path))
        refusal = f"not reopening {path} by path: create the console again"
        if owner is None:
            self._refuse(
                f"no owner of {path} was recorded when it was attached (its "
                f"master's holder could not be seen in /proc); {refusal}"
            )
        elif index is None:
            self._refuse(f"{path} is not a /dev/pts/N pty; {refusal}")
        elif not owner_holds(owner, index, self._proc):
            self._refuse(f"pty owner {owner.pid} is gone; {refusal} with the new path")
        else:
            return index
        return None

    def _start(self) -> None:
        index: int | None = None
        if self._restored:
            index = self._restoredIndex()
            if index is None:
                return
        try:
            rfd = _open_tty(self._path)
        except _NotATerminal as e:
            self._lastError = str(e)
            self._setState(SourceState.DOWN, self._lastError)
            return
        except OSError as e:
            self._lastError = f"cannot open {self._path}: {e.strerror}"
            self._setState(SourceState.DOWN, self._lastError)
            return
        opened = _fd_pts_index(rfd)
        if self._restored:
            if opened != index:
                # The path was changed (a link) between the check and the open.
                os.close(rfd)
                self._refuse(
                    f"{self._path} is no longer /dev/pts/{index}; not reopening "
                    "it by path: create the console again with the new path"
                )
                return
        elif opened is not None:
            self.owner = find_pty_owner(opened, self._proc)
        if self.owner is None:
            _log.warn(
                "{source}: the holder of the pty's master was not found; "
                "after a restart this console stays down",
                source=self,
            )
        # A second fd for writing (see _TtyEnd).  dup rather than a second
        # open(path): it cannot land on another pty that took the path in
        # between, and epoll accepts both since they are different fds.
        wfd = os.dup(rfd)
        self._reader = _TtyReader(
            self._reactor, rfd, self._path, self._ptyLost, self._emitData
        )
        self._writer = _TtyWriter(self._reactor, wfd, self._path, self._ptyLost)
        self._registerGate(self._writer)
        self._applyReading()
        self._setState(SourceState.CONNECTED, f"attached to {self._path}")

    def _ptyLost(self, why: str) -> None:
        self._closeFds()
        self._lastError = why
        self._setState(SourceState.DOWN, f"{why}; a pty is never reopened")

    def _closeFds(self) -> None:
        self._dropGate()
        for end in (self._reader, self._writer):
            if end is not None:
                end.close()
        self._reader = self._writer = None

    def _writeTransport(self) -> Any:
        return self._writer

    def _readAfterHold(self) -> None:
        # What gathered during the wait is read now rather than after another
        # round through epoll; the reader is registered again only when the
        # pty had nothing (so a steady trickle costs no epoll_ctl at all).
        reader = self._reader
        if reader is None or self._readingPaused:
            self._applyReading()
            return
        why = reader.doRead()
        if why is not None:
            reader.connectionLost(Failure(why))
        elif not self._coalescing:
            self._applyReading()

    def _applyReading(self) -> None:
        if self._reader is None:
            return
        if self._holdReading:
            self._reader.stopReading()
        else:
            self._reader.startReading()

    def _stop(self) -> None:
        self._closeFds()
        self._stopDone()
