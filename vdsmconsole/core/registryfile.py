"""The registry on disk: a snapshot and a journal of changes since it.

``registry.json`` (the snapshot) is the whole registry, written to a
temporary file, fsynced and renamed over the old one (``write_atomically``):
``{"version": 1, "consoles": {vmId: entry}, "graphics": {vmId: [..]}}``,
the format servers before the journal wrote and read.

``registry.journal`` beside it (mode 0600, it holds VNC passwords): one JSON
line per change, each the whole record of one VM, so a change costs one
line whatever the registry's size::

    {"vm": ID, "console": ENTRY, "graphics": [..]}   (either key may be absent)
    {"vm": ID, "gone": true}

A line is appended with one ``write`` and fdatasynced before the change is
acknowledged.  Reading is the snapshot, then every line in order.

Crash rules:

- A last line without its newline, or that does not parse, was never
  acknowledged (a crash mid-append): ignored.  A bad line before the last is
  reported and skipped; the lines after it still count.
- Records are absolute, so replaying lines the snapshot already holds
  changes nothing: compaction writes the snapshot, makes the rename durable
  (fsync of the directory), then empties the journal, and a crash between
  any two of those steps reads back the same registry.
- A failed append is cut back off the file; if even that fails, the next
  append first ends the piece with a NUL and a newline, so the piece never
  parses (it was never acknowledged) and the next record stays whole.

Pure file I/O: the registry (``registry.py``) keeps the meaning.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from vdsmconsole.core.jsonfile import TextCache, json_object, write_atomically

__all__ = [
    "COMPACT_AT",
    "FILE_MODE",
    "FORMAT_VERSION",
    "Journal",
    "RegistryFile",
    "State",
    "journal_path",
    "read",
    "record",
]

C = TypeVar("C")


class Endpoint(Protocol):
    """A graphics endpoint as the files hold it (``GraphicsEndpoint``)."""

    def to_persist(self) -> dict[str, Any]: ...


Graphics = Iterable[Endpoint]

FORMAT_VERSION = 1  # the snapshot's
FILE_MODE = 0o600
COMPACT_AT = 256  # journal records, or the number of VMs if more
BROKEN = b"\x00\n"  # ends the piece of a failed append (see Journal.append)


def journal_path(snapshot: Path) -> Path:
    """``registry.journal`` beside ``registry.json``."""
    return snapshot.with_suffix(".journal")


def record(vm_id: str, console: object, graphics: object) -> bytes:
    """One VM's whole record as a journal line (``gone`` if it has nothing)."""
    line: dict[str, Any] = {"vm": vm_id}
    if console is not None:
        line["console"] = console
    if graphics is not None:
        line["graphics"] = graphics
    if len(line) == 1:
        line["gone"] = True
    return (json.dumps(line, sort_keys=True) + "\n").encode("utf-8")


@dataclass
class State:
    """The registry as the files describe it (entries not checked yet)."""

    consoles: dict[str, Any] = field(default_factory=dict)
    graphics: dict[str, Any] = field(default_factory=dict)
    records: int = 0  # lines in the journal, bad ones included
    # What was wrong, for the log; never a line's content (passwords).
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The registry as one snapshot shows it (what a compaction writes)."""
        data: dict[str, Any] = {"version": FORMAT_VERSION, "consoles": self.consoles}
        if self.graphics:
            data["graphics"] = self.graphics
        return data


def read(snapshot: Path) -> State | None:
    """The snapshot with the journal replayed; None if neither exists.

    OSError if a file cannot be read, ValueError if the snapshot is not a
    registry (as before the journal: the server does not start on it).
    """
    state = State()
    journal = journal_path(snapshot)
    if not snapshot.exists() and not journal.exists():
        return None
    if snapshot.exists():
        with open(snapshot, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"{snapshot}: not a JSON object")
        consoles = data.get("consoles", {})
        if not isinstance(consoles, dict):
            raise ValueError(f"{snapshot}: consoles is not a map of vmIds")
        state.consoles = consoles
        graphics = data.get("graphics", {})
        if isinstance(graphics, dict):
            state.graphics = graphics
        else:
            state.problems.append("graphics ignored: not a map of vmIds")
    if journal.exists():
        _replay(journal.read_bytes(), state)
    return state


def _replay(data: bytes, state: State) -> None:
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" if the file ends with its newline
    state.records = len(lines) + bool(torn)
    for number, line in enumerate(lines, 1):
        change = _parse(line)
        if change is None:
            if number == len(lines) and not torn:
                state.problems.append(
                    f"journal line {number} ignored: it does not parse "
                    "(an append cut short, never acknowledged)"
                )
            else:
                state.problems.append(
                    f"journal line {number} skipped: not a registry record"
                )
            continue
        vm_id = change["vm"]
        state.consoles.pop(vm_id, None)
        state.graphics.pop(vm_id, None)
        if "console" in change:
            state.consoles[vm_id] = change["console"]
        if "graphics" in change:
            state.graphics[vm_id] = change["graphics"]
    if torn:
        state.problems.append(
            f"journal line {len(lines) + 1} ignored: no newline "
            "(an append cut short, never acknowledged)"
        )


def _parse(line: bytes) -> dict[str, Any] | None:
    """A record, or None if the line is not one."""
    try:
        change = json.loads(line)
    except ValueError:  # UnicodeDecodeError too
        return None
    if not isinstance(change, dict) or not isinstance(change.get("vm"), str):
        return None
    if change.get("gone") is True:
        return change if change.keys() == {"vm", "gone"} else None
    if change.keys() - {"vm", "console", "graphics"} or len(change) == 1:
        return None
    return change


def write_snapshot(path: Path, text: str) -> None:
    """Replace the snapshot, the rename made durable; OSError."""
    write_atomically(path, text, FILE_MODE)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """``registry.journal``: appends, each durable before it returns.

    Opened for each append, so a state directory gone from under the server
    fails the change (as a rewrite of the whole file did) rather than
    writing to a file nobody will read.
    """

    def __init__(self, path: Path, records: int = 0) -> None:
        self.path = path
        self.records = records  # lines since the snapshot
        self._created = False  # its directory entry made durable
        self.hold_sync = False  # appends are synced later, by ``sync``
        self.unsynced = False  # some are not durable yet

    def append(self, line: bytes) -> None:
        """Add one record (a line from ``record``); OSError, the file as
        before (or at worst a broken last line that ``read`` skips)."""
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            if not self._created:
                os.fchmod(fd, FILE_MODE)  # whatever made it before
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # An earlier failed append could not be cut off.  End its
                # line with a NUL (never in JSON): even if the piece happens
                # to be a whole record, it was never acknowledged, so ``read``
                # must skip it; this record gets a line of its own.
                line = BROKEN + line
            try:
                # One write: a record is never interleaved with another.
                written = self._write(fd, line)
                if written != len(line):
                    raise OSError(errno.ENOSPC, "short write")
                if self.hold_sync:
                    self.unsynced = True
                else:
                    os.fdatasync(fd)
                if not self._created:
                    _fsync_dir(self.path.parent)  # the file itself is durable
            except OSError:
                # Not acknowledged: it must not come back at the next start.
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass  # the next append ends the piece (BROKEN)
                raise
        finally:
            os.close(fd)
        self._created = True
        self.records += 1

    @staticmethod
    def _write(fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def sync(self) -> None:
        """Make appends made while ``hold_sync`` durable; OSError."""
        if not self.unsynced:
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self.unsynced = False

    def clear(self) -> None:
        """Empty it (the snapshot holds everything now); OSError."""
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except FileNotFoundError:
            self.records = 0
            return
        try:
            os.ftruncate(fd, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records = 0


class RegistryFile(Generic[C]):
    """Both files of one registry (none for ``path=None``: kept in memory).

    ``change`` journals one VM's record; ``compact`` writes the snapshot
    (each entry's JSON made once per value, ``TextCache``) and empties the
    journal.  ``entry(console)``: what the files hold of a console.
    """

    def __init__(
        self,
        snapshot: Path | None,
        entry: Callable[[C], object],
    ) -> None:
        self.snapshot = snapshot
        self.journal = None if snapshot is None else Journal(journal_path(snapshot))
        self._entry = entry
        self._texts = TextCache()
        self._graphics_texts = TextCache()

    @property
    def records(self) -> int:
        """Journal lines since the snapshot."""
        return 0 if self.journal is None else self.journal.records

    def due(self, vms: int) -> bool:
        """Whether to compact: the journal holds more than ``max(COMPACT_AT,
        vms)`` records, so compaction costs O(1) per change amortized."""
        return self.records > max(COMPACT_AT, vms)

    def pending(self) -> bool:
        """Whether the journal has records the snapshot may not."""
        return self.records > 0

    def read(self) -> State | None:
        """As ``read``; the journal's lines count from here on."""
        if self.snapshot is None or self.journal is None:
            return None
        state = read(self.snapshot)
        if state is not None:
            self.journal.records = state.records
        return state

    def change(self, vm_id: str, console: C | None, graphics: Graphics | None) -> None:
        """The VM's whole record (None, None: it is gone), durable; OSError."""
        if self.journal is None:
            return
        self.journal.append(
            record(
                vm_id,
                None if console is None else self._entry(console),
                None if graphics is None else _shown(graphics),
            )
        )

    def forget(self, vm_id: str) -> None:
        """The VM's console entry changed in place (a pty's owner)."""
        self._texts.forget(vm_id)

    def compact(
        self, consoles: Mapping[str, C], graphics: Mapping[str, Graphics]
    ) -> None:
        """Write the whole registry as the snapshot, then empty the journal;
        OSError (the journal then still holds every change)."""
        if self.snapshot is None or self.journal is None:
            return
        members = {
            "version": str(FORMAT_VERSION),
            "consoles": self._texts.json_map(consoles, self._entry),
        }
        if graphics:
            # Only when there are some: a file without graphics stays as an
            # older server wrote it (and reads it).
            members["graphics"] = self._graphics_texts.json_map(graphics, _shown)
        # The rename is durable before the journal is emptied: a crash in
        # between replays records the snapshot holds already, to the same state.
        write_snapshot(self.snapshot, json_object(members))
        self.journal.unsynced = False  # what it holds, the snapshot holds
        self.journal.clear()

    @contextmanager
    def held_syncs(self) -> Iterator[None]:
        """Changes inside are written but not synced one by one: ``sync``
        makes them durable at once (a multicall's, before it answers)."""
        if self.journal is None:
            yield
            return
        self.journal.hold_sync = True
        try:
            yield
        finally:
            self.journal.hold_sync = False

    def sync(self, consoles: Mapping[str, C], graphics: Mapping[str, Graphics]) -> None:
        """Make the changes ``held_syncs`` held durable; if the journal cannot
        be synced, the whole registry goes into the snapshot instead (the
        arguments, as for ``compact``); OSError if that fails too."""
        if self.journal is None or not self.journal.unsynced:
            return
        try:
            self.journal.sync()
        except OSError:
            self.compact(consoles, graphics)


def _shown(graphics: Graphics) -> list[dict[str, Any]]:
    return [e.to_persist() for e in graphics]
