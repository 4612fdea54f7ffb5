"""The scenarios: one run of one peer each, returning plain numbers.

A run starts a fresh guest and a fresh relay, attaches the clients, writes
sync markers until every client has seen one, then takes the CPU sample and
starts the measured part.  Nothing of a run outlives it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import machine
from bench.payload import bulk_sha256
from bench.peers import Pki, VdsmConsole, make_peer, make_pki
from bench.procs import Clients, Guest

MB = 1_000_000


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


@dataclass
class Session:
    """A temporary directory and a throwaway PKI shared by every run."""

    keep: bool = False
    profile_dir: Path | None = None
    profile_tool: str = "py-spy"  # or "perf": kernel and C frames too
    variants: dict[str, Path] = field(default_factory=dict)
    root: Path = field(init=False)
    pki: Pki = field(init=False)
    _runs: int = 0

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vdsmconsole-bench-"))
        self.pki = make_pki(self.root)

    def run_dir(self, name: str) -> Path:
        self._runs += 1
        path = self.root / f"{self._runs:03d}-{name}"
        path.mkdir()
        return path

    def close(self) -> None:
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def _io_writes(roots: list[int]) -> int:
    total = 0
    for pid in machine.tree(roots):
        try:
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("syscw:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _synchronise(guest: Guest, clients: Clients, timeout: float = 60) -> None:
    """Write sync markers until every client has seen one."""
    nonce = clients.nonce
    deadline = time.monotonic() + timeout
    while not clients.all_have("synced"):
        if time.monotonic() > deadline:
            raise RuntimeError("the clients never saw the sync marker")
        guest.send({"cmd": "sync", "nonce": nonce})
        time.sleep(0.05)
    time.sleep(0.05)  # let the last markers drain


class Run:
    """One peer, one guest, some clients; the measured window in between."""

    def __init__(self, session: Session, peer_name: str, label: str) -> None:
        self.session = session
        self.dir = session.run_dir(f"{peer_name}-{label}")
        self.peer = make_peer(peer_name, self.dir, session.pki, session.variants)
        if (
            isinstance(self.peer, VdsmConsole)
            and session.profile_tool == "cprofile"
            and session.profile_dir is not None
        ):
            session.profile_dir.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%H%M%S")
            self.peer.cprofile = session.profile_dir / f"{label}-{stamp}.prof"
        self.label = label
        self.guest: Guest | None = None
        self.clients: Clients | None = None
        self.profiler: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Run:
        self.guest = Guest(self.dir)
        try:
            self.peer.start(self.guest.ptys)
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def attach(self, spec: dict[str, Any], count: int, procs: int) -> Clients:
        nonce = secrets.token_hex(6)
        spec = dict(spec, peer=self.peer.client(), sync=nonce, start=nonce)
        self.clients = Clients(self.dir, spec, count, procs)
        self.clients.nonce = nonce  # type: ignore[attr-defined]
        connected = self.clients.wait("connected", 120)
        errors = [e for c in connected for e in c.get("errors", [])]
        if errors:
            raise RuntimeError(f"{self.peer.name}: clients failed: {errors[:3]}")
        assert self.guest is not None
        _synchronise(self.guest, self.clients)
        self.start_profile()
        return self.clients

    def start_profile(self) -> None:
        """py-spy on the server for the measured window (``--profile DIR``)."""
        out_dir = self.session.profile_dir
        if out_dir is None or not isinstance(self.peer, VdsmConsole):
            return
        if self.session.profile_tool == "cprofile":
            os.kill(self.peer.roots()[0], signal.SIGUSR1)
            self.profile_path = Path(str(getattr(self.peer, "cprofile", "")))
            self.profiler_signalled = True
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%H%M%S")
        pid = str(self.peer.roots()[0])
        if self.session.profile_tool == "perf":
            self.profile_path = out_dir / f"{self.label}-{stamp}.perf.data"
            # cpu-clock: a VM without a PMU records no "cycles" samples.
            argv = ["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g"]
            argv += ["-p", pid, "-o"]
            argv.append(str(self.profile_path))
        else:
            self.profile_path = out_dir / f"{self.label}-{stamp}.txt"
            argv = [
                _py_spy(),
                "record",
                "--pid",
                pid,
                "--rate",
                "1000",
                "--format",
                "raw",
                "--output",
                str(self.profile_path),
            ]
        self.profiler = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # it attaches

    def stop_profile(self) -> None:
        if getattr(self, "profiler_signalled", False):
            self.profiler_signalled = False
            os.kill(self.peer.roots()[0], signal.SIGUSR2)
            time.sleep(0.5)  # it writes the statistics
        if self.profiler is not None:
            self.profiler.send_signal(signal.SIGINT)
            self.profiler.wait(30)
            self.profiler = None

    def sample(self) -> dict[str, Any]:
        others = [self.guest.proc.pid] if self.guest is not None else []
        if self.clients is not None:
            others += [c.proc.pid for c in self.clients.children]
        return {
            "others": machine.sample(others),
            "switches": machine.context_switches(self.peer.roots()),
            "relay": machine.sample(self.peer.roots()),
            "bridge": machine.sample(self.peer.bridge_roots()),
            "syscw": _io_writes(self.peer.roots()),
            "rss": machine.rss_bytes(self.peer.roots() + self.peer.bridge_roots()),
            "t": time.monotonic_ns(),
        }

    def cpu(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        return {
            "relay_cpu_ns": machine.cpu_between(before["relay"], after["relay"]),
            "bridge_cpu_ns": machine.cpu_between(before["bridge"], after["bridge"]),
            "relay_write_syscalls": after["syscw"] - before["syscw"],
            "guest_and_clients_cpu_ns": machine.cpu_between(
                before["others"], after["others"]
            ),
            "relay_voluntary_switches": after["switches"][0] - before["switches"][0],
            "relay_involuntary_switches": after["switches"][1] - before["switches"][1],
            "wall_ns": after["t"] - before["t"],
            "relay_rss_bytes": after["rss"],
        }

    def __exit__(self, *exc: object) -> None:
        self.stop_profile()
        for part in (self.clients, self.peer, self.guest):
            if part is not None:
                try:
                    part.stop()
                except Exception:  # noqa: BLE001, S110 - best effort teardown
                    pass


def _py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("--profile needs py-spy: pip install py-spy")
    return found


def _check_results(results: list[dict[str, Any]]) -> list[str]:
    return [r["error"] for r in results if r.get("error")]


# -- bulk and fan-out -----------------------------------------------------------


def bulk(session: Session, peer: str, size: int, clients: int = 1) -> dict[str, Any]:
    """``size`` bytes from the guest to ``clients`` followers at once."""
    expected = bulk_sha256(size)
    with Run(session, peer, f"bulk{clients}") as run:
        procs = 1 if clients == 1 else 2
        timeout = 60 + size * clients / (2 * MB)
        attached = run.attach(
            {"mode": "bulk", "size": size, "timeout": timeout}, clients, procs
        )
        before = run.sample()
        assert run.guest is not None
        run.guest.send({"cmd": "bulk", "size": size, "nonce": attached.nonce})  # type: ignore[attr-defined]
        started = run.guest.wait("bulk-start", 60)
        done = attached.wait("done", timeout + 30)
        after = run.sample()
        run.stop_profile()
        results = [r for d in done for r in d["results"]]
    errors = _check_results(results)
    intact = sum(
        1
        for r in results
        if not r.get("error") and r.get("bytes") == size and r["sha256"] == expected
    )
    t_end = max((r.get("t_last", 0) for r in results), default=0)
    seconds = max(1e-9, (t_end - started["t"]) / 1e9)
    cpu = run.cpu(before, after)
    delivered = size * intact
    out: dict[str, Any] = {
        "size": size,
        "clients": clients,
        "intact": intact,
        "errors": errors[:3],
        "seconds": seconds,
        "mb_per_s": size / MB / seconds,
        "aggregate_mb_per_s": delivered / MB / seconds,
        **cpu,
        "relay_cpu_ms_per_mb": cpu["relay_cpu_ns"] / 1e6 / (size / MB),
        "bridge_cpu_ms_per_mb": cpu["bridge_cpu_ns"] / 1e6 / (size / MB),
        "tls": results[0].get("tls", "") if results else "",
    }
    out["total_cpu_ms_per_mb"] = (
        out["relay_cpu_ms_per_mb"] + out["bridge_cpu_ms_per_mb"]
    )
    if delivered:
        out["relay_cpu_ms_per_delivered_mb"] = (
            cpu["relay_cpu_ns"] / 1e6 / (delivered / MB)
        )
    records = [r["tls_records"] for r in results if r.get("tls_records")]
    if records:
        out["bytes_per_tls_record"] = size / statistics.mean(records)
    if intact < clients:
        lost = [r for r in results if r.get("bytes") != size or r.get("error")]
        out["bad_clients"] = [
            {k: r.get(k) for k in ("index", "bytes", "extra", "error")}
            for r in lost[:5]
        ]
    return out


def client_result(done: list[dict[str, Any]], peer: str) -> dict[str, Any]:
    """The one client's result from its "done" event; its error raised."""
    result: dict[str, Any] = done[0]["results"][0]
    if result.get("error"):
        raise RuntimeError(f"{peer}: {result['error']}")
    return result


def roundtrips_us(result: dict[str, Any]) -> tuple[list[float], dict[str, float]]:
    """A latency client's round trips in us, and their p50, p99 and max."""
    rtts = [t / 1000 for t in result["rtts"]]
    figures = {
        "p50_us": percentile(rtts, 50),
        "p99_us": percentile(rtts, 99),
        "max_us": max(rtts),
    }
    return rtts, figures


def latency_result(
    done: list[dict[str, Any]], peer: str, cpu: dict[str, Any]
) -> dict[str, Any]:
    """What a latency scenario reports: the round trips' figures and the
    relay's CPU (with any bridge's) per round trip."""
    result = client_result(done, peer)
    rtts, figures = roundtrips_us(result)
    return {
        "roundtrips": len(rtts),
        "mismatches": result["mismatches"],
        **figures,
        "relay_cpu_us_per_roundtrip": (cpu["relay_cpu_ns"] + cpu["bridge_cpu_ns"])
        / 1000
        / max(1, len(rtts)),
        **cpu,
    }


# -- latency -------------------------------------------------------------------


def latency(session: Session, peer: str, roundtrips: int) -> dict[str, Any]:
    """One-byte round trips through the guest's echo."""
    with Run(session, peer, "latency") as run:
        attached = run.attach({"mode": "latency", "roundtrips": roundtrips}, 1, 1)
        before = run.sample()
        assert run.guest is not None
        run.guest.send({"cmd": "mark", "nonce": attached.nonce})  # type: ignore[attr-defined]
        done = attached.wait("done", 60 + roundtrips * 0.05)
        after = run.sample()
        run.stop_profile()
    return latency_result(done, peer, run.cpu(before, after))


# -- trickle -------------------------------------------------------------------


def trickle(
    session: Session, peer: str, seconds: float, interval_ms: float = 1.0
) -> dict[str, Any]:
    """The guest writes 8 bytes every ``interval_ms`` for ``seconds``."""
    count = int(seconds * 1000 / interval_ms)
    with Run(session, peer, "trickle") as run:
        attached = run.attach(
            {"mode": "trickle", "records": count, "timeout": seconds + 60}, 1, 1
        )
        assert run.guest is not None
        before = run.sample()
        run.guest.send(
            {
                "cmd": "trickle",
                "seconds": seconds,
                "interval_ms": interval_ms,
                "nonce": attached.nonce,  # type: ignore[attr-defined]
            }
        )
        sent = run.guest.wait("trickle-done", seconds + 60)
        done = attached.wait("done", 60)
        after = run.sample()
        run.stop_profile()
    result = client_result(done, peer)
    sends = sent["sends"]
    arrivals = result["arrivals"]
    delays = [(t - sends[seq]) / 1e6 for seq, t in arrivals if 0 <= seq < len(sends)]
    in_order = all(seq == i for i, (seq, _) in enumerate(arrivals))
    cpu = run.cpu(before, after)
    wall = cpu["wall_ns"]
    out: dict[str, Any] = {
        "seconds": seconds,
        "records_sent": len(sends),
        "records_received": len(arrivals),
        "in_order": in_order,
        "delay_p50_ms": percentile(delays, 50) if delays else None,
        "delay_p99_ms": percentile(delays, 99) if delays else None,
        "delay_max_ms": max(delays) if delays else None,
        "relay_cpu_percent": 100 * cpu["relay_cpu_ns"] / wall,
        "bridge_cpu_percent": 100 * cpu["bridge_cpu_ns"] / wall,
        **cpu,
    }
    out["total_cpu_percent"] = out["relay_cpu_percent"] + out["bridge_cpu_percent"]
    if result.get("tls_records"):
        out["writes_per_s"] = result["tls_records"] / seconds
        out["writes_measured_as"] = "TLS records received by the client"
    elif cpu["relay_write_syscalls"]:
        out["writes_per_s"] = cpu["relay_write_syscalls"] * 1e9 / wall
        out["writes_measured_as"] = "write syscalls of the relay (/proc/PID/io)"
    return out
