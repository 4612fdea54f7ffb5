"""``echo``: keys typed into a chattering console, each key's echo timed.

The guest trickles (8 bytes every ``--interval-ms``, as in ``trickle``)
while one client types a key every 50-100 ms over a duplex stream (a POST
``?duplex=1`` for vdsmconsole, the TLS socket for socat, conserver's
``console`` client in read-write mode, the pty itself for the baseline) and
times, from its send to its arrival at that same client, the echo of each
key.  The chatter is digits and LF; the keys are letters, so an echo is
found among the chatter without any framing.  This is what interactive-aware
coalescing must not slow down: a relay that holds a chattering console's
output must not hold the echo of a key behind it.

The client is a process of its own, ``python -m bench.echo SPEC``, speaking
the JSON lines of ``bench.clients`` (``connected``, ``synced``, ``done``).
"""

from __future__ import annotations

import json
import random
import secrets
import select
import sys
import time
from pathlib import Path
from typing import Any

from bench import report, scenarios
from bench.clients import Sink, open_stream
from bench.procs import Child, Clients
from bench.report import V, fmt, table

KEYS = b"abcdefghijklmnopqrstuvwxyz"
KEY_GAP_MS = (50.0, 100.0)
# After the last key, how long its echo may take before it counts as lost.
LAST_ECHO_S = 5.0


# -- the typing client (a child process) -----------------------------------------


def _fileno(stream: Any) -> int:
    for name in ("sock", "rfd", "fd"):
        if hasattr(stream, name):
            handle = getattr(stream, name)
            return handle if isinstance(handle, int) else handle.fileno()
    raise TypeError(f"no file descriptor for {stream!r}")


def _buffered(stream: Any) -> bool:
    """Decrypted bytes already in hand (select would not see them)."""
    obj = getattr(stream, "obj", None)
    return bool(obj is not None and obj.pending())


class Typist:
    """Reads the console, and types a key whenever one is due."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.stream, self.framer = open_stream(spec["peer"], "latency")
        self.sink = Sink("echo", spec["sync"], spec["start"], 0, 0)
        self.fd = _fileno(self.stream)
        self.sent: dict[int, int] = {}  # key -> send time (ns), while unanswered
        self.rtts: list[int] = []
        self.keys = 0
        self.strays = 0  # letters that answered no key in flight
        self.random = random.Random(spec.get("seed", 15))

    def read(self, timeout: float) -> None:
        """What arrives within ``timeout`` seconds, timed as it arrives."""
        if not _buffered(self.stream):
            ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
            if not ready:
                return
        data = self.stream.recv()
        t = time.monotonic_ns()
        if not data:
            raise RuntimeError("the relay closed the stream")
        self.sink.feed(self.framer.feed(data), t)
        if self.sink.echo:
            for key in self.sink.echo.translate(None, b"0123456789\n\r"):
                sent = self.sent.pop(key, None)
                if sent is None:
                    self.strays += 1
                else:
                    self.rtts.append(t - sent)
            self.sink.echo = b""

    def type_key(self) -> None:
        key = KEYS[self.keys % len(KEYS)]
        self.keys += 1
        self.sent[key] = time.monotonic_ns()
        self.stream.send(self.framer.encode(bytes([key])))

    def run(self) -> dict[str, Any]:
        while not self.sink.synced:
            self.read(1.0)
        _report({"event": "synced"})
        while not self.sink.started:
            self.read(1.0)
        sink_started = time.monotonic()
        end = sink_started + self.spec["seconds"]
        due = time.monotonic() + 0.1  # the chatter under way first
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if now >= due:
                self.type_key()
                due = now + self.random.uniform(*KEY_GAP_MS) / 1000
            self.read(min(due, end) - time.monotonic())
        deadline = time.monotonic() + LAST_ECHO_S
        while self.sent and time.monotonic() < deadline:
            self.read(deadline - time.monotonic())
        return {
            "rtts": self.rtts,
            "keys": self.keys,
            "lost": len(self.sent),
            "strays": self.strays,
        }


def _report(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        typist = Typist(spec)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        _report({"event": "connected", "errors": [f"{type(e).__name__}: {e}"]})
        return
    _report({"event": "connected", "errors": []})
    try:
        result = typist.run()
    except Exception as e:  # noqa: BLE001 - reported, not raised
        result = {"error": f"{type(e).__name__}: {e}"}
    typist.stream.close()
    _report({"event": "done", "results": [result]})


# -- the scenario (the orchestrator's side) --------------------------------------


class _Typing(Clients):
    """One ``bench.echo`` child in place of ``bench.clients`` children."""

    def __init__(self, workdir: Path, spec: dict[str, Any]) -> None:
        self.children = [
            Child(
                [sys.executable, "-m", "bench.echo", json.dumps(spec)],
                workdir / "typist.log",
            )
        ]


def echo(
    session: scenarios.Session, peer: str, seconds: float, interval_ms: float = 1.0
) -> dict[str, Any]:
    """The guest trickles for ``seconds`` while a client types and times echoes."""
    with scenarios.Run(session, peer, "echo") as run:
        nonce = secrets.token_hex(6)
        spec = {
            "peer": run.peer.client(),
            "sync": nonce,
            "start": nonce,
            "seconds": seconds,
        }
        typing = _Typing(run.dir, spec)
        typing.nonce = nonce  # type: ignore[attr-defined]
        run.clients = typing
        errors = typing.wait("connected", 120)[0].get("errors")
        if errors:
            raise RuntimeError(f"{peer}: the typist failed: {errors}")
        assert run.guest is not None
        scenarios._synchronise(run.guest, typing)
        run.start_profile()
        before = run.sample()
        run.guest.send(
            {
                "cmd": "trickle",
                "seconds": seconds,
                "interval_ms": interval_ms,
                "nonce": nonce,
            }
        )
        done = typing.wait("done", seconds + LAST_ECHO_S + 60)
        after = run.sample()
        run.stop_profile()
    result = scenarios.client_result(done, peer)
    rtts = [t / 1000 for t in result["rtts"]]
    if not rtts:
        raise RuntimeError(f"{peer}: no echo came back of {result['keys']} keys")
    cpu = run.cpu(before, after)
    return {
        "keys": result["keys"],
        "lost": result["lost"],
        "echo_p50_us": scenarios.percentile(rtts, 50),
        "echo_p99_us": scenarios.percentile(rtts, 99),
        "echo_max_us": max(rtts),
        "echo_slowest_us": [round(x) for x in sorted(rtts)[-5:]],
        "stray_letters": result["strays"],
        "relay_cpu_percent": 100
        * (cpu["relay_cpu_ns"] + cpu["bridge_cpu_ns"])
        / cpu["wall_ns"],
        **cpu,
    }


# -- its table and target --------------------------------------------------------


def echo_table(section: dict[str, Any]) -> str:
    headers = ["peer", "keys", "echo p50 us", "p99 us", "max us", "lost"]
    headers += ["relay CPU %", "note"]
    rows = []
    for name in report._ordered(section["peers"]):
        m = section["peers"][name]
        if "skipped" in m or "error" in m:
            note = m.get("skipped") or m["error"]
            rows.append(report._skip_row(name, len(headers), note))
            continue
        note = report.peer_note(name, report.ONE_MORE_HOP)
        rows.append(
            [
                name,
                fmt(m.get("keys"), 0),
                fmt(m.get("echo_p50_us"), 0),
                fmt(m.get("echo_p99_us"), 0),
                fmt(m.get("echo_max_us"), 0),
                fmt(m.get("lost"), 0),
                fmt(m.get("relay_cpu_percent"), 2),
                note,
            ]
        )
    return table(headers, rows)


def targets(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """echo p99 <= 1.5x socat's, in the same run."""
    section = sections.get("echo")
    if not section:
        return []
    out = []
    for socat in ("socat", "socat-nodelay"):
        v, s = section["peers"].get(V, {}), section["peers"].get(socat, {})
        if "echo_p99_us" not in v or "echo_p99_us" not in s:
            continue
        ratio = v["echo_p99_us"] / s["echo_p99_us"]
        spread = report._per_run(section["peers"], V, socat, "echo_p99_us")
        out.append(
            report._target(
                f"echo p99 <= 1.5x {socat} (keys typed into a chattering console)",
                ratio <= 1.5,
                f"{v['echo_p99_us']:.0f} vs {s['echo_p99_us']:.0f} us "
                f"({ratio:.2f}x{spread}); p50 {v.get('echo_p50_us', 0):.0f} vs "
                f"{s.get('echo_p50_us', 0):.0f} us; {v.get('lost', 0):.0f} lost",
            )
        )
    return out


if __name__ == "__main__":
    main()
