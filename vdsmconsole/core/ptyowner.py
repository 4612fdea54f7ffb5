"""Who holds a pty's master, read from /proc (no reactor).

The guest's qemu, named by pid and start time so that a later start can tell
it from whoever holds that pty number next.  The registry records it; a
restored pty source checks it before reopening its path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


# What a pty master's fd links to: /dev/ptmx, or the devpts instance's own
# ptmx in a container (where /dev/ptmx is a symlink to it).
_PTMX_LINKS = frozenset({"/dev/ptmx", "/dev/pts/ptmx"})


_PTS_PATH = re.compile(r"/dev/pts/(\d+)")


@dataclass(frozen=True)
class PtyOwner:
    """The process holding a pty's master: a guest's qemu, named so that a
    later start can tell it from whoever holds that pty number next.

    ``start`` is the process's start time (field 22 of ``/proc/<pid>/stat``,
    clock ticks since boot): with the pid it names one process for the life
    of the host, even after the pid is reused.
    """

    pid: int
    start: int

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_json(cls, value: object) -> PtyOwner | None:
        """The owner a registry entry recorded; None if absent or malformed."""
        if not isinstance(value, Mapping):
            return None
        pid, start = value.get("pid"), value.get("start")
        for number in (pid, start):
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                return None
        assert isinstance(pid, int) and isinstance(start, int)
        return cls(pid, start) if pid > 0 else None


def _fd_pts_index(fd: int) -> int | None:
    """N if ``fd`` is open on ``/dev/pts/N``."""
    try:
        return pts_index(os.ttyname(fd))
    except OSError:
        return None


def pts_index(path: str) -> int | None:
    """N for ``/dev/pts/N``; None for any other path."""
    found = _PTS_PATH.fullmatch(path)
    return int(found.group(1)) if found else None


def read_proc_file(path: str) -> str:
    """A small ``/proc`` file's text; OSError if it cannot be read.

    ``os.open`` and one ``read`` on a string path: a create checks a pty's
    owner several times, and ``Path.read_text`` (path objects, a text
    wrapper) cost more than the reads themselves.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536).decode("utf-8", "replace")
    finally:
        os.close(fd)


def process_start(pid: int, proc: Path = PROC) -> int | None:
    """Field 22 of ``<proc>/<pid>/stat`` (start time); None if unreadable."""
    try:
        text = read_proc_file(f"{proc}/{pid}/stat")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count the
    # fields after its closing parenthesis, which is field 3.
    fields = text[text.rfind(")") + 1 :].split()
    try:
        return int(fields[22 - 3])
    except (IndexError, ValueError):
        return None


def _tty_index(fdinfo: str) -> int | None:
    for line in fdinfo.splitlines():
        key, _, value = line.partition(":")
        if key == "tty-index" and value.strip().isdigit():
            return int(value)
    return None


def _master_index(pid: int, fd: str, proc: Path) -> int | None:
    """N if ``pid``'s descriptor ``fd`` is the master of ``/dev/pts/N``."""
    try:
        if os.readlink(f"{proc}/{pid}/fd/{fd}") not in _PTMX_LINKS:
            return None
        return _tty_index(read_proc_file(f"{proc}/{pid}/fdinfo/{fd}"))
    except OSError:  # closed meanwhile, or not ours to see
        return None


def master_fds(pid: int, proc: Path = PROC) -> dict[int, str]:
    """pty number -> the descriptor by which ``pid`` holds its master."""
    try:
        fds = os.listdir(f"{proc}/{pid}/fd")
    except OSError:  # gone, or another user's process
        return {}
    found: dict[int, str] = {}
    for fd in fds:
        index = _master_index(pid, fd, proc)
        if index is not None:
            found.setdefault(index, fd)
    return found


def master_indexes(pid: int, proc: Path = PROC) -> set[int]:
    """The pty numbers whose master ``pid`` holds (empty if it cannot be seen)."""
    return set(master_fds(pid, proc))


def scan_pty_owners(proc: Path = PROC) -> dict[int, tuple[PtyOwner, str]]:
    """Every visible pty master: pty number -> the process holding it, and
    the descriptor by which it does.

    One pass over every ``<proc>/<pid>/fd`` (a few milliseconds per hundred
    processes); processes we may not look into are skipped, so a guest of
    another user is not found without privileges.  Several holders (a master
    inherited across fork): the one started first.
    """
    try:
        pids = [int(name) for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return {}
    owners: dict[int, tuple[PtyOwner, str]] = {}
    for pid in pids:
        fds = master_fds(pid, proc)
        if not fds:
            continue
        start = process_start(pid, proc)
        if start is None:
            continue
        owner = PtyOwner(pid, start)
        for index, fd in fds.items():
            known = owners.get(index)
            if known is None or (owner.start, owner.pid) < (
                known[0].start,
                known[0].pid,
            ):
                owners[index] = (owner, fd)
    return owners


# The last scan, so that many creates in a row (a host's guests registered
# at once) cost one scan, not one each.  An entry is used only after that
# very process is confirmed to still hold that pty by the descriptor the scan
# found (one readlink and one fdinfo read, whatever the number of the
# process's descriptors): ptys are recycled at once, so a remembered holder
# is never trusted unchecked.
_last_scan: dict[tuple[Path, int], tuple[PtyOwner, str]] = {}


def find_pty_owner(index: int, proc: Path = PROC) -> PtyOwner | None:
    """The process holding the master of ``/dev/pts/<index>``, or None."""
    cached = _last_scan.get((proc, index))
    if cached is not None and owner_holds(cached[0], index, proc, fd=cached[1]):
        return cached[0]
    owners = scan_pty_owners(proc)
    _last_scan.clear()
    _last_scan.update({(proc, i): found for i, found in owners.items()})
    found = owners.get(index)
    return found[0] if found is not None else None


def owner_holds(
    owner: PtyOwner, index: int, proc: Path = PROC, *, fd: str | None = None
) -> bool:
    """Whether that very process (pid and start time) still holds the master
    of ``/dev/pts/<index>`` (by descriptor ``fd``, when given)."""
    if process_start(owner.pid, proc) != owner.start:
        return False
    if fd is not None:
        holds = _master_index(owner.pid, fd, proc) == index
    else:
        # The descriptor the last scan saw that very process hold it by: one
        # readlink and one fdinfo read instead of all of the process's
        # descriptors (a guest holding a thousand masters).  Only a hint:
        # when it no longer holds, every descriptor is looked at.
        seen = _last_scan.get((proc, index))
        holds = (
            seen is not None
            and seen[0] == owner
            and _master_index(owner.pid, seen[1], proc) == index
        ) or index in master_indexes(owner.pid, proc)
    # Read the start again: the pid may have been reused meanwhile.
    return holds and process_start(owner.pid, proc) == owner.start
