"""Websocket and tunnel scenarios: vdsmconsole against websockify and socat.

A graphics endpoint (``bench/endpoint.py``, a TCP server that greets as a VNC
server does) in place of the guest's pty; the relays of ``bench/wspeers.py``
in front of it; the same clients, sinks and CPU sampling as the pty
scenarios (``bench/scenarios.py``), interleaved run by run by the same
runner:

- ``ws-bulk``: ``--size`` bytes (50 MB) from the endpoint to one websocket
  client; MB/s and relay CPU per MB.
- ``ws-latency``: ``--roundtrips`` one-byte round trips through the
  endpoint's echo over the websocket; p50, p99.
- ``ws-trickle``: the endpoint writes 8 bytes every ``--interval-ms`` for
  ``--seconds``; relay CPU %, writes/s, delay p50/p99.
- ``tunnel-bulk``: ``--size`` bytes through vdsmconsole's CONNECT tunnel and
  through socat's ``OPENSSL-LISTEN ... TCP:``; MB/s and CPU per MB.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from bench import report
from bench.procs import Child
from bench.scenarios import (
    MB,
    Run,
    Session,
    client_result,
    latency_result,
    percentile,
)
from bench.wspeers import FAMILIES, make_endpoint_peer

SCENARIOS = ("ws-bulk", "ws-latency", "ws-trickle", "tunnel-bulk")


class Endpoint(Child):
    """The fake endpoint process; ``ptys`` is its ``127.0.0.1:PORT``."""

    def __init__(self, workdir: Any) -> None:
        super().__init__(
            [sys.executable, "-m", "bench.endpoint"], workdir / "endpoint.log"
        )
        first = self.events.get(timeout=60)
        if "ptys" not in first:
            raise RuntimeError(f"the endpoint did not start: {first}{self._tail()}")
        self.ptys: list[str] = first["ptys"]

    def stop(self) -> None:
        self.send({"cmd": "quit"})
        super().stop()


class EndpointRun(Run):
    """``scenarios.Run`` with the endpoint for a guest and a family's peer."""

    def __init__(self, session: Session, family: str, peer: str, label: str):
        self.session = session
        self.dir = session.run_dir(f"{peer}-{label}")
        self.peer = make_endpoint_peer(
            family, peer, self.dir, session.pki, session.variants
        )
        profiled = session.profile_tool == "cprofile" and session.profile_dir
        if profiled and hasattr(self.peer, "cprofile"):
            assert session.profile_dir is not None
            session.profile_dir.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%H%M%S")
            self.peer.cprofile = session.profile_dir / f"{label}-{stamp}.prof"  # type: ignore[attr-defined]
        self.label = label
        self.guest = None
        self.clients = None
        self.profiler = None

    def __enter__(self) -> EndpointRun:
        self.guest = Endpoint(self.dir)  # type: ignore[assignment]
        try:
            self.peer.start(self.guest.ptys)  # type: ignore[union-attr]
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self


def bulk(session: Session, family: str, peer: str, size: int) -> dict[str, Any]:
    """``size`` bytes from the endpoint to one client."""
    from bench.payload import bulk_sha256

    expected = bulk_sha256(size)
    with EndpointRun(session, family, peer, f"{family}-bulk") as run:
        timeout = 60 + size / (2 * MB)
        attached = run.attach(
            {"mode": "bulk", "size": size, "timeout": timeout, "linger": True}, 1, 1
        )
        before = run.sample()
        nonce = attached.nonce  # type: ignore[attr-defined]
        run.guest.send({"cmd": "bulk", "size": size, "nonce": nonce})  # type: ignore[union-attr]
        started = run.guest.wait("bulk-start", 60)  # type: ignore[union-attr]
        done = attached.wait("done", timeout + 30)
        after = run.sample()
        run.stop_profile()
    result = client_result(done, peer)
    intact = int(result.get("bytes") == size and result["sha256"] == expected)
    seconds = max(1e-9, (result["t_last"] - started["t"]) / 1e9)
    cpu = run.cpu(before, after)
    out: dict[str, Any] = {
        "size": size,
        "clients": 1,
        "intact": intact,
        "seconds": seconds,
        "mb_per_s": size / MB / seconds,
        **cpu,
        "relay_cpu_ms_per_mb": cpu["relay_cpu_ns"] / 1e6 / (size / MB),
        "bridge_cpu_ms_per_mb": 0.0,
        "tls": result.get("tls", ""),
    }
    out["total_cpu_ms_per_mb"] = out["relay_cpu_ms_per_mb"]
    if result.get("tls_records"):
        out["bytes_per_tls_record"] = size / result["tls_records"]
    return out


def latency(session: Session, peer: str, roundtrips: int) -> dict[str, Any]:
    """One-byte round trips through the endpoint's echo, over the websocket."""
    with EndpointRun(session, "ws", peer, "ws-latency") as run:
        attached = run.attach(
            {"mode": "latency", "roundtrips": roundtrips, "linger": True}, 1, 1
        )
        before = run.sample()
        nonce = attached.nonce  # type: ignore[attr-defined]
        run.guest.send({"cmd": "mark", "nonce": nonce})  # type: ignore[union-attr]
        done = attached.wait("done", 60 + roundtrips * 0.05)
        after = run.sample()
        run.stop_profile()
    # No bridge here (bridge_cpu_ns is 0): the relay's CPU alone, as before.
    return latency_result(done, peer, run.cpu(before, after))


def trickle(
    session: Session, peer: str, seconds: float, interval_ms: float
) -> dict[str, Any]:
    """The endpoint writes 8 bytes every ``interval_ms`` for ``seconds``."""
    count = int(seconds * 1000 / interval_ms)
    with EndpointRun(session, "ws", peer, "ws-trickle") as run:
        attached = run.attach(
            {
                "mode": "trickle",
                "records": count,
                "timeout": seconds + 60,
                "linger": True,
            },
            1,
            1,
        )
        before = run.sample()
        nonce = attached.nonce  # type: ignore[attr-defined]
        run.guest.send(  # type: ignore[union-attr]
            {
                "cmd": "trickle",
                "seconds": seconds,
                "interval_ms": interval_ms,
                "nonce": nonce,
            }
        )
        sent = run.guest.wait("trickle-done", seconds + 60)  # type: ignore[union-attr]
        done = attached.wait("done", 60)
        after = run.sample()
        run.stop_profile()
    result = client_result(done, peer)
    sends, arrivals = sent["sends"], result["arrivals"]
    delays = [(t - sends[seq]) / 1e6 for seq, t in arrivals if 0 <= seq < len(sends)]
    cpu = run.cpu(before, after)
    out: dict[str, Any] = {
        "seconds": seconds,
        "records_sent": len(sends),
        "records_received": len(arrivals),
        "in_order": all(seq == i for i, (seq, _) in enumerate(arrivals)),
        "delay_p50_ms": percentile(delays, 50) if delays else None,
        "delay_p99_ms": percentile(delays, 99) if delays else None,
        "delay_max_ms": max(delays) if delays else None,
        "relay_cpu_percent": 100 * cpu["relay_cpu_ns"] / cpu["wall_ns"],
        "bridge_cpu_percent": 0.0,
        **cpu,
    }
    out["total_cpu_percent"] = out["relay_cpu_percent"]
    if result.get("tls_records"):
        out["writes_per_s"] = result["tls_records"] / seconds
    return out


# -- the runner's side ----------------------------------------------------------


def run(runner: Any, name: str) -> dict[str, Any]:
    """Scenario ``name`` over the peers of its family among ``--peers``."""
    a = runner.args
    family = name.partition("-")[0]
    saved = a.peer_list
    a.peer_list = [p for p in saved if p in FAMILIES[family]]
    try:
        if name.endswith("-bulk"):
            runner.say(f"{name}: {a.size} bytes from a TCP endpoint to one client")
            peers = runner.repeat(
                name, name, lambda p: bulk(runner.session, family, p, a.size)
            )
            return {"size": a.size, "peers": peers}
        if name == "ws-latency":
            runner.say(f"{name}: {a.roundtrips} one-byte round trips")
            peers = runner.repeat(
                name, name, lambda p: latency(runner.session, p, a.roundtrips)
            )
            return {"roundtrips": a.roundtrips, "peers": peers}
        runner.say(f"{name}: 8 bytes every {a.interval_ms} ms for {a.seconds} s")
        peers = runner.repeat(
            name,
            name,
            lambda p: trickle(runner.session, p, a.seconds, a.interval_ms),
        )
        return {"seconds": a.seconds, "interval_ms": a.interval_ms, "peers": peers}
    finally:
        a.peer_list = saved


TABLES = {
    "ws-bulk": report.bulk_table,
    "ws-latency": report.latency_table,
    "ws-trickle": report.trickle_table,
    "tunnel-bulk": report.bulk_table,
}


def _spread(peers: dict[str, Any], name: str, key: str) -> str:
    values = [
        r[key]
        for r in peers.get(name, {}).get("all_runs", [])
        if isinstance(r.get(key), int | float)
    ]
    return f"{min(values):.3g}-{max(values):.3g}" if values else "-"


def _ratio(
    section: dict[str, Any], peer: str, key: str, limit: float, most: bool, what: str
) -> dict[str, Any] | None:
    """vdsmconsole's median of ``key`` over ``peer``'s, against ``limit``."""
    peers = section["peers"]
    v, o = peers.get("vdsmconsole", {}), peers.get(peer, {})
    if not isinstance(v.get(key), int | float) or not o.get(key):
        return None
    ratio = v[key] / o[key]
    met = ratio <= limit if most else ratio >= limit
    return {
        "target": what,
        "met": None if what.endswith("(for the record)") else met,
        "detail": f"{v[key]:.3g} ({_spread(peers, 'vdsmconsole', key)}) vs "
        f"{peer} {o[key]:.3g} ({_spread(peers, peer, key)}): {ratio:.2f}x"
        + report._per_run(peers, "vdsmconsole", peer, key),
    }


def targets(scenarios: dict[str, Any]) -> list[dict[str, Any]]:
    checks = {
        "ws-bulk": [
            ("websockify", "mb_per_s", 1.5, False, "ws-bulk MB/s >= 1.5x websockify"),
            (
                "websockify",
                "total_cpu_ms_per_mb",
                0.5,
                True,
                "ws-bulk CPU/MB <= 0.5x websockify",
            ),
        ],
        "ws-latency": [
            ("websockify", "p50_us", 1.0, True, "ws-latency p50 <= websockify"),
            ("websockify", "p99_us", 1.0, True, "ws-latency p99 <= websockify"),
        ],
        "ws-trickle": [
            (
                "websockify",
                "total_cpu_percent",
                1.0,
                True,
                "ws-trickle CPU vs websockify (for the record)",
            ),
        ],
        "tunnel-bulk": [
            (
                "socat",
                "total_cpu_ms_per_mb",
                1.2,
                True,
                "tunnel-bulk CPU/MB <= 1.2x socat",
            ),
            (
                "socat",
                "mb_per_s",
                1.0,
                False,
                "tunnel-bulk MB/s vs socat (for the record)",
            ),
        ],
    }
    out = []
    for name, items in checks.items():
        section = scenarios.get(name)
        if not section:
            continue
        for item in items:
            found = _ratio(section, *item)
            if found is not None:
                out.append(found)
    return out
