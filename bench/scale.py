"""``scale``: many consoles, each with a VNC endpoint, a live token and an
idle follower; ``list`` timed while one console floods.

One fake guest holds every pty; each console is created with a graphics
endpoint (``vnc`` on a loopback port where this process accepts and closes
connections, so the server's graphics probe finds them answering) and one
``remoteConsole`` token is minted per VM.  ``list`` (the summary) and
``list(fullStatus=True)`` are timed over one kept-alive connection, idle and
while console 0 floods.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
import xmlrpc.client
from typing import Any

from bench import machine
from bench.peers import VdsmConsole, make_peer
from bench.procs import Child, Guest
from bench.scenarios import MB, Session, percentile


class RawRPC:
    """XML-RPC over one kept-alive TLS connection, timed to the last byte.

    The time covers the request and the whole response but not parsing it
    (xmlrpc.client takes longer to parse 1000 entries than the server to
    make them); every answer is still parsed and checked, outside the clock.
    """

    def __init__(self, peer: VdsmConsole) -> None:
        self.conn = http.client.HTTPSConnection(
            "127.0.0.1", peer.port, context=peer.context(), timeout=600
        )

    def call(self, method: str, *args: Any, multi: bool = False) -> tuple[float, Any]:
        body = xmlrpc.client.dumps(args, method).encode()
        t0 = time.perf_counter()
        self.conn.request(
            "POST", "/RPC2", body=body, headers={"Content-Type": "text/xml"}
        )
        response = self.conn.getresponse()
        data = response.read()
        elapsed = (time.perf_counter() - t0) * 1000
        if response.status != 200:
            raise RuntimeError(f"{method}: HTTP {response.status}")
        reply = xmlrpc.client.loads(data)[0][0]
        for answer in xmlrpc.client.MultiCallIterator(reply) if multi else [reply]:
            if answer["status"]["code"] != 0:
                raise RuntimeError(f"{method} failed: {answer['status']}")
        return elapsed, reply

    def multicall(self, calls: list[tuple[str, tuple[Any, ...]]]) -> float:
        """The calls in one system.multicall request; its time (ms)."""
        wire = [{"methodName": m, "params": list(p)} for m, p in calls]
        return self.call("system.multicall", wire, multi=True)[0]

    def close(self) -> None:
        self.conn.close()


class VncStandIn:
    """A loopback port that accepts and closes: every VM's VNC endpoint."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _time_list(
    rpc: RawRPC, peer: VdsmConsole, count: int, full: bool, prefix: str
) -> dict[str, float]:
    """Latency of ``count`` calls, and the server's CPU time per call (the
    figure the machine's load moves least)."""
    before = machine.sample(peer.roots())
    times = [rpc.call("list", full)[0] for _ in range(count)]
    cpu = machine.cpu_between(before, machine.sample(peer.roots()))
    return {
        f"{prefix}_p50_ms": percentile(times, 50),
        f"{prefix}_p99_ms": percentile(times, 99),
        f"{prefix}_max_ms": max(times),
        f"{prefix}_cpu_ms": cpu / 1e6 / count,
    }


def scale(
    session: Session,
    peer_name: str,
    consoles: int,
    followers: int,
    calls: int = 200,
    tokens: int | None = None,
    create_clients: int = 1,
    create_batch: int = 1,
) -> dict[str, Any]:
    """Many consoles, graphics and tokens; list() while one console floods."""
    tokens = consoles if tokens is None else tokens
    run_dir = session.run_dir(f"{peer_name.replace('@', '-')}-scale")
    guest = Guest(run_dir, ptys=consoles)
    vnc = VncStandIn()
    peer = make_peer(peer_name, run_dir, session.pki, session.variants)
    assert isinstance(peer, VdsmConsole)
    peer.graphics_port = vnc.port
    peer.create_clients = create_clients
    peer.create_batch = create_batch
    idle: Child | None = None
    out: dict[str, Any] = {
        "consoles": consoles,
        "followers": followers,
        "create_clients": create_clients,
        "create_batch": create_batch,
    }
    full_calls = max(5, calls // 10)
    try:
        peer.start(guest.ptys)
        out["create_seconds"] = peer.create_seconds
        out["create_cpu_seconds"] = peer.create_cpu_seconds
        out["rss_consoles_bytes"] = machine.rss_bytes(peer.roots())
        rpc = RawRPC(peer)
        t0 = time.monotonic()
        before = machine.sample(peer.roots())
        # As the creates: one request each, or create_batch per multicall.
        mints = [
            ("remoteConsole", (peer.vm_id(i % consoles), "vnc", {"ttl": 86400}))
            for i in range(tokens)
        ]
        for first in range(0, tokens, create_batch):
            if create_batch > 1:
                rpc.multicall(mints[first : first + create_batch])
            else:
                method, args = mints[first]
                rpc.call(method, *args)
        out["tokens"] = tokens
        out["mint_seconds"] = time.monotonic() - t0
        cpu = machine.cpu_between(before, machine.sample(peer.roots()))
        out["mint_cpu_seconds"] = cpu / 1e9
        out["rss_tokens_bytes"] = machine.rss_bytes(peer.roots())
        paths = [f"/consoleStream/{peer.vm_id(i % consoles)}" for i in range(followers)]
        spec = {"mode": "idle", "peer": peer.client(), "paths": paths, "readers": 1}
        t0 = time.monotonic()
        idle = Child(
            [sys.executable, "-m", "bench.clients", json.dumps(spec)],
            run_dir / "idle.log",
        )
        connected = idle.wait("connected", 120 + followers * 0.2)
        out["attach_seconds"] = time.monotonic() - t0
        out["followers_attached"] = connected["n"]
        out["follower_errors"] = connected["errors"]
        stats = rpc.call("getVmStats", peer.vm_id(0))[1]["statsList"][0]
        out["readers_of_console0"] = stats["readers"]
        out["rss_followers_bytes"] = machine.rss_bytes(peer.roots())
        listed = rpc.call("list", True)[1]["vmList"]
        if len(listed) != consoles:
            raise RuntimeError(f"list returned {len(listed)} VMs, not {consoles}")
        out["graphics_answering"] = sum(
            1 for e in listed for g in e.get("graphics", []) if g.get("answers")
        )
        out.update(_time_list(rpc, peer, calls, False, "list_idle"))
        out.update(_time_list(rpc, peer, full_calls, True, "full_idle"))
        guest.send({"cmd": "flood", "pty": 0})
        guest.wait("flood-start", 30)
        time.sleep(1.0)
        in0 = rpc.call("getVmStats", peer.vm_id(0))[1]["statsList"][0]["bytesIn"]
        t0 = time.monotonic()
        out.update(_time_list(rpc, peer, calls, False, "list_flood"))
        out.update(_time_list(rpc, peer, full_calls, True, "full_flood"))
        elapsed = time.monotonic() - t0
        in1 = rpc.call("getVmStats", peer.vm_id(0))[1]["statsList"][0]["bytesIn"]
        out["flood_mb_per_s_during_list"] = (in1 - in0) / MB / elapsed
        guest.send({"cmd": "stop", "pty": 0})
        guest.wait("stopped", 30)
        out["rss_after_flood_bytes"] = machine.rss_bytes(peer.roots())
        out["peak_rss_bytes"] = machine.peak_rss_bytes(peer.roots()[0])
        rpc.close()
        idle.send("quit")
        done = idle.wait("done", 60)
        out["flood_bytes_drained_by_reader"] = done["drained"]
    finally:
        if idle is not None:
            idle.stop()
        peer.stop()
        guest.stop()
        vnc.close()
    return out
