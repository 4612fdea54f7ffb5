"""The client side, the same for every peer: a stream, a framer, a sink.

- A *stream* moves bytes (``bench/streams.py``): TLS through memory BIOs,
  counting the records the relay sent, or pipes to conserver's client.
- A *framer* takes the relay's protocol off and puts it on
  (``bench/framers.py``): raw TLS (socat), HTTP/1.1 chunked (vdsmconsole),
  websocket frames (websockify).
- A *sink* looks for the markers, checks and times the payload.

``python -m bench.clients SPEC`` runs clients in threads and reports JSON lines
on stdout: ``connected``, ``synced`` (every client saw the sync marker) and
``done`` with one result per client.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from typing import Any

from bench.framers import HttpFramer, RawFramer, TunnelFramer, WsFramer
from bench.payload import RECORD, start_marker, sync_marker
from bench.streams import (
    TIMEOUT,
    PipeStream,
    PtyStream,
    TLSStream,
    client_context,
)

__all__ = ["HttpFramer", "Sink", "WsFramer", "main"]


# -- the sink -------------------------------------------------------------------


class Sink:
    """Finds the markers; checks, times and counts what follows the start."""

    def __init__(self, mode: str, sync: str, start: str, size: int, records: int):
        self.mode = mode
        self.sync = sync_marker(sync)
        self.start = start_marker(start)
        self.size = size
        self.records = records
        self.pre = b""
        self.synced = False
        self.started = False
        self.done = False
        self.digest = hashlib.sha256()
        self.got = 0
        self.extra = 0
        self.t_first = 0
        self.t_last = 0
        self.partial = b""
        self.arrivals: list[tuple[int, int]] = []
        self.echo = b""

    def feed(self, pieces: list[bytes], t: int) -> None:
        for piece in pieces:
            if not self.started:
                self.pre = self.pre[-128:] + piece
                if not self.synced and self.sync in self.pre:
                    self.synced = True
                at = self.pre.find(self.start)
                if at < 0:
                    continue
                self.started = True
                self.t_start = t
                piece = self.pre[at + len(self.start) :]
                self.pre = b""
                if not piece:
                    continue
            self.payload(piece, t)

    def payload(self, data: bytes, t: int) -> None:
        if self.mode == "bulk":
            want = self.size - self.got
            if want <= 0:
                self.extra += len(data)
                return
            if not self.got:
                self.t_first = t
            if len(data) > want:
                self.extra += len(data) - want
                data = data[:want]
            self.digest.update(data)
            self.got += len(data)
            if self.got >= self.size:
                self.t_last = t
                self.done = True
        elif self.mode == "trickle":
            data = self.partial + data
            whole = len(data) - len(data) % RECORD
            for i in range(0, whole, RECORD):
                self.arrivals.append((int(data[i : i + RECORD - 1]), t))
            self.partial = data[whole:]
            self.got += whole
            if len(self.arrivals) >= self.records:
                self.done = True
        else:
            self.echo += data
            self.got += len(data)


# -- one client -------------------------------------------------------------------


def open_stream(peer: dict[str, Any], mode: str) -> tuple[Any, Any]:
    kind = peer["kind"]
    if kind == "conserver":
        argv = list(peer["argv"])
        if mode != "latency":
            argv.insert(-1, "-s")  # spy: read-only, as many as you like
        return PipeStream(argv), RawFramer()
    if kind == "pty":
        return PtyStream(peer["path"]), RawFramer()
    ctx = client_context(peer["ca"], peer["cert"], peer["key"])
    stream = TLSStream(peer["host"], peer["port"], ctx)
    if kind == "raw":
        framer: Any = RawFramer()
    elif kind == "http":
        framer = HttpFramer(peer["path"], duplex=mode == "latency")
    elif kind == "ws":
        framer = WsFramer(peer.get("path", "/"), peer.get("origin", ""))
    elif kind == "tunnel":
        framer = TunnelFramer(peer["path"])
    else:
        raise ValueError(f"unknown peer kind {kind!r}")
    opening = framer.opening()
    if opening:
        stream.send(opening)
    return stream, framer


class Client(threading.Thread):
    def __init__(self, index: int, spec: dict[str, Any], ready: threading.Event):
        super().__init__(daemon=True)
        self.index = index
        self.spec = spec
        self.ready = ready
        self.sink = Sink(
            spec["mode"],
            spec["sync"],
            spec["start"],
            spec.get("size", 0),
            spec.get("records", 0),
        )
        self.connected = threading.Event()
        self.error = ""
        self.rtts: list[int] = []
        self.mismatches = 0
        self.records_at_start = 0
        self.records_at_end = 0
        self.tls_version = ""

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # noqa: BLE001 - reported, not raised
            self.error = f"{type(e).__name__}: {e}"
            self.connected.set()

    def _run(self) -> None:
        spec = self.spec
        self.stream, self.framer = open_stream(spec["peer"], spec["mode"])
        self.tls_version = self.stream.tls_version
        self.connected.set()
        sink = self.sink
        stream = self.stream
        while not sink.started:
            self._read_once()
        self.records_at_start = stream.records or 0
        if spec["mode"] == "latency":
            self._round_trips(spec["roundtrips"])
        else:
            while not sink.done:
                self._read_once()
        self.records_at_end = stream.records or 0
        if not spec.get("linger"):
            stream.close()

    def _read_once(self) -> None:
        data = self.stream.recv()
        t = time.monotonic_ns()
        if not data:
            raise RuntimeError(
                f"the relay closed the stream after {self.sink.got} payload bytes"
            )
        self.sink.feed(self.framer.feed(data), t)
        if getattr(self.framer, "ended", False) and not self.sink.done:
            # vdsmconsole ends the response of a follower that fell behind
            # everything it retains (the guest is never held back for one).
            raise RuntimeError(
                f"the relay ended the response after {self.sink.got} payload bytes"
            )

    def _round_trips(self, count: int) -> None:
        sink, stream, framer = self.sink, self.stream, self.framer
        sink.echo = b""
        letters = b"abcdefghijklmnopqrstuvwxyz"
        for i in range(count):
            byte = letters[i % 26 : i % 26 + 1]
            t0 = time.perf_counter_ns()
            stream.send(framer.encode(byte))
            while not sink.echo:
                self._read_once()
            self.rtts.append(time.perf_counter_ns() - t0)
            if sink.echo != byte:
                self.mismatches += 1
            sink.echo = b""

    def result(self) -> dict[str, Any]:
        s = self.sink
        out: dict[str, Any] = {
            "index": self.index,
            "error": self.error,
            "tls": self.tls_version,
        }
        if s.mode == "bulk":
            out.update(
                bytes=s.got,
                extra=s.extra,
                sha256=s.digest.hexdigest(),
                t_first=s.t_first,
                t_last=s.t_last,
                t_start=getattr(s, "t_start", 0),
            )
        elif s.mode == "trickle":
            out.update(arrivals=s.arrivals, t_start=getattr(s, "t_start", 0))
        elif s.mode == "latency":
            out.update(rtts=self.rtts, mismatches=self.mismatches)
        if self.records_at_end:
            out["tls_records"] = self.records_at_end - self.records_at_start
        return out


# -- idle followers (scale) -----------------------------------------------------


def idle_followers(spec: dict[str, Any]) -> None:
    """Open one follower per path and hold them until told to quit."""
    peer = spec["peer"]
    ctx = client_context(peer["ca"], peer["cert"], peer["key"])
    streams = []
    errors = 0
    for path in spec["paths"]:
        try:
            stream = TLSStream(peer["host"], peer["port"], ctx)
            framer = HttpFramer(path)
            stream.send(framer.opening())
            while not framer.in_body:
                data = stream.recv()
                if not data:
                    raise RuntimeError("closed before the headers")
                framer.feed(data)
            streams.append((stream, framer))
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors += 1
            if errors == 1:
                report({"event": "warning", "message": f"{type(e).__name__}: {e}"})
    drained = [0]

    def drain(stream: TLSStream) -> None:
        try:
            while True:
                data = stream.recv()
                if not data:
                    return
                drained[0] += len(data)
        except OSError:
            return

    for stream, _ in streams[: spec.get("readers", 0)]:
        stream.sock.settimeout(None)
        threading.Thread(target=drain, args=(stream,), daemon=True).start()
    report({"event": "connected", "n": len(streams), "errors": errors})
    sys.stdin.readline()
    report({"event": "done", "drained": drained[0]})
    for stream, _ in streams:
        stream.close()


# -- the process ------------------------------------------------------------------


def report(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["mode"] == "idle":
        from bench.guest import raise_nofile

        raise_nofile(len(spec["paths"]) + 64)
        idle_followers(spec)
        return
    ready = threading.Event()
    first = spec.get("first_index", 0)
    clients = [Client(first + i, spec, ready) for i in range(spec["clients"])]
    for c in clients:
        c.start()
    for c in clients:
        c.connected.wait(TIMEOUT)
    report({"event": "connected", "errors": [c.error for c in clients if c.error]})
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if all(c.sink.synced or c.error or not c.is_alive() for c in clients):
            break
        time.sleep(0.01)
    report({"event": "synced"})
    for c in clients:
        c.join(spec.get("timeout", 600))
        if c.is_alive():
            c.error = c.error or "timed out"
    report({"event": "done", "results": [c.result() for c in clients]})
    if spec.get("linger"):
        # The streams stay open until the orchestrator has taken its CPU
        # sample: a relay that forks a child per connection (websockify,
        # socat) would otherwise lose it, and the kernel's account of a
        # reaped child (cutime, in clock ticks) undercounts it.
        sys.stdin.readline()


if __name__ == "__main__":
    main()
