"""A fake /proc for tests of what reads it (pty owners, the sources policy)."""

from __future__ import annotations

import os
from pathlib import Path


def fake_process(
    proc: Path,
    pid: int,
    start: int,
    fds: dict[int, tuple[str, int | None]],
    comm: str = "qemu-kvm",
    *,
    ppid: int = 0,
    exe: str = "",
) -> None:
    """``<proc>/<pid>`` with a stat file and fds: fd -> (link target, tty-index);
    and its parent and executable link when given."""
    root = proc / str(pid)
    (root / "fd").mkdir(parents=True)
    (root / "fdinfo").mkdir()
    # Field 3 (the state) follows the command name, then field 4, the parent;
    # field 22 is the start.
    fields = ["S", str(ppid)] + ["0"] * 17 + [str(start)] + ["0"] * 30
    (root / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
    if exe:
        os.symlink(exe, root / "exe")
    for fd, (target, index) in fds.items():
        os.symlink(target, root / "fd" / str(fd))
        info = "pos:\t0\nflags:\t02\nmnt_id:\t24\n"
        if index is not None:
            info += f"tty-index:\t{index}\n"
        (root / "fdinfo" / str(fd)).write_text(info)
