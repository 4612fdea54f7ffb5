"""Facts about the machine, and what processes cost: CPU time and memory.

CPU time comes from ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds on a
CPU, every thread) for every process in the relay's tree, plus the
``cutime``/``cstime`` of children reaped meanwhile (relays that fork a child
per connection: socat, websockify).  Where schedstat is missing, the clock
ticks of ``/proc/<pid>/stat`` stand in.
"""

from __future__ import annotations

import os
import platform
import shutil
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HZ = os.sysconf("SC_CLK_TCK")


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(argv: list[str]) -> str:
    if not shutil.which(argv[0]):
        return ""
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else ""


def _dpkg_version(package: str) -> str:
    return _version(["dpkg-query", "-W", "-f", "${Version}", package])


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    return _version(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])


def machine_facts() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "nproc_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "openssl": ssl.OPENSSL_VERSION,
        "memory_gb": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1
        ),
        "vdsmconsole_commit": _git_commit(),
        "socat": _dpkg_version("socat"),
        "websockify": _dpkg_version("websockify"),
        "conserver": _dpkg_version("conserver-server"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# -- processes ------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces.
    return text[text.rindex(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields is None:
            continue
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def tree(roots: list[int]) -> list[int]:
    """The roots and all their descendants that are alive now."""
    kids = children_map()
    out: list[int] = []
    todo = [p for p in roots if _stat(p) is not None]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def cpu_ns(pid: int) -> tuple[int, int] | None:
    """(ns on a CPU of the process's threads, ns of its reaped children)."""
    fields = _stat(pid)
    if fields is None:
        return None
    # After the ")": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
    ticks = int(fields[11]) + int(fields[12])
    reaped = (int(fields[13]) + int(fields[14])) * 1_000_000_000 // HZ
    own = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            own += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        own = ticks * 1_000_000_000 // HZ
    return own, reaped


@dataclass
class CpuSample:
    at: float
    per_pid: dict[int, tuple[int, int]] = field(default_factory=dict)


def sample(roots: list[int]) -> CpuSample:
    s = CpuSample(at=time.monotonic())
    for pid in tree(roots):
        value = cpu_ns(pid)
        if value is not None:
            s.per_pid[pid] = value
    return s


def cpu_between(before: CpuSample, after: CpuSample) -> int:
    """CPU ns the tree used between two samples."""
    total = 0
    for pid, (own, reaped) in after.per_pid.items():
        own0, reaped0 = before.per_pid.get(pid, (0, 0))
        total += own - own0 + reaped - reaped0
    for pid, (own0, _) in before.per_pid.items():
        if pid not in after.per_pid:
            total -= own0  # its whole life is in a survivor's reaped time
    return max(total, 0)


def rss_bytes(roots: list[int]) -> int:
    total = 0
    for pid in tree(roots):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def peak_rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def context_switches(roots: list[int]) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of the tree's processes."""
    vol = invol = 0
    for pid in tree(roots):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    vol += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    invol += int(line.split()[1])
        except OSError:
            continue
    return vol, invol
