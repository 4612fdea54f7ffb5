"""Soak: many clients mixing RPC, followers, writers, duplex and reconnects.

Run as a command (loopback only; it starts its own server on a throwaway PKI
and state directory)::

    python -m tests.soak --duration 300 --clients 200 --guests 20

The clients are asyncio tasks with ``ssl`` in one process, so the client side
stays cheap on a small machine.  Each client loops until the deadline, picking
at random: an RPC call (ping, list, stats, consoleRead, consoleWrite), a
follower (live or from an offset, for a few seconds), a follower that
disconnects and resumes from its last offset, a writer (a chunked POST of a
few commands), a writer that leaves mid-chunk, a duplex session (type a
token, see it echoed on the same request), a flood (a duplex session that
types ``flood N``), and over HTTP/2 (``tests/soakh2.py``) a follower that
stops reading for a few seconds with a 2 GiB window open, or stream POSTs
answered at once with 404, 400 and 416 while their bodies are still open,
then a ping on the same connection.

Checked at the end, and any failure is an error:

- no unexpected answer or exception on any client;
- every byte each follower, duplex session or flood received equals what
  ``consoleRead`` returns for the same offsets afterwards; a resumed
  follower's second session starts at the offset it asked for
  (``X-Console-Offset``), so its two sessions join without a gap or a repeat;
- what the guest wrote, where it is known: a flood's bytes are exactly the
  demo guest's flood (``flood_output``), a duplex session sees its token
  echoed;
- each ``consoleRead`` answer equals the bytes streaming clients received
  for the same offsets, where they overlap (counted apart:
  ``consoleReadRangesChecked``);
- none of a chunk whose writer left mid-chunk reached a guest (its token is
  in no console's retained output);
- the server's RSS after the warm-up (the first ``--warmup`` fraction of the
  run) grows by less than 10 %;
- once the clients are gone: no reader or writer left on any console, and
  the server's open file descriptors are back to the count before the load;
- no traceback in the server log.

The exit status is 0 when all holds; a summary goes to stdout as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import ssl
import sys
import tempfile
import time
import traceback
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import soakh2
from tests.hardening import fd_count
from tests.serverproc import (
    ServerProcess,
    client_context,
)
from tests.soakcheck import (
    Seen,
    create_guests,
    sample_rss,
    settle_fds,
    verify_nothing_left,
    verify_polled,
    verify_seen,
    wait_until,
)
from tests.soakhttp import ANSWER_TIMEOUT, Conn, chunk
from tests.streamhelp import (
    DEMO_CONFIG,
    flood_output,
    rss_bytes,
)

COMMANDS = ["uname\r", "date\r", "uptime\r", "help\r", "echo {token}\r"]


class SoakError(Exception):
    """Something a client saw that the contract does not allow."""


@dataclass
class Soak:
    server: ServerProcess
    guests: list[str]
    duration: float
    seed: int = 0
    context: ssl.SSLContext = field(init=False)
    seen: list[Seen] = field(default_factory=list)  # by streams
    polled: list[Seen] = field(default_factory=list)  # by consoleRead
    left_tokens: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    deadline: float = 0.0

    def __post_init__(self) -> None:
        self.context = client_context(self.server.pki)

    @property
    def port(self) -> int:
        return self.server.port

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def record(self, vm_id: str, offset: int, data: bytes) -> None:
        if data:
            self.seen.append(Seen(vm_id, offset, data))

    # -- RPC --------------------------------------------------------------

    async def rpc(self, conn: Conn | None, method: str, *args: Any) -> tuple[Any, Conn]:
        body = xmlrpc.client.dumps(args, method).encode()
        request = (
            b"POST /RPC2 HTTP/1.1\r\nHost: soak\r\nContent-Type: text/xml\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        if conn is not None:
            try:
                await conn.send(request)
                status, headers = await conn.head()
            except (ConnectionError, asyncio.IncompleteReadError):
                # A keep-alive connection the server closed after its idle
                # timeout (60 s): what any HTTP client retries, once.
                await conn.close()
                self.count("rpc-stale-keepalive")
                conn = None
        if conn is None:
            conn = await Conn.open(self.port, self.context)
            await conn.send(request)
            status, headers = await conn.head()
        data = await conn.body(headers)
        if status != 200:
            raise SoakError(f"{method}: HTTP {status}")
        (result,), _ = xmlrpc.client.loads(data, use_builtin_types=True)
        return result, conn

    async def rpc_client(self, rng: random.Random, conn: Conn | None) -> Conn:
        vm_id = rng.choice(self.guests)
        choice = rng.random()
        if choice < 0.2:
            result, conn = await self.rpc(conn, "ping")
        elif choice < 0.35:
            result, conn = await self.rpc(conn, "list", True)
        elif choice < 0.5:
            result, conn = await self.rpc(conn, "getVmStats", vm_id)
        elif choice < 0.6:
            result, conn = await self.rpc(conn, "getAllVmStats")
        elif choice < 0.9:
            stats, conn = await self.rpc(conn, "getVmStats", vm_id)
            first = stats["statsList"][0]["firstOffset"]
            end = stats["statsList"][0]["nextOffset"]
            if rng.random() < 0.5:  # recent output, as a polling client reads
                first = max(first, end - 4096)
            offset = rng.randint(first, end)
            result, conn = await self.rpc(conn, "consoleRead", vm_id, offset, 4096)
            if result["status"]["code"] == 0:
                if result["lost"] != 0 or result["offset"] != offset:
                    raise SoakError(f"consoleRead {vm_id} {offset}: {result}")
                if result["data"]:
                    self.polled.append(Seen(vm_id, offset, result["data"]))
        else:
            token = f"rpc-{rng.randrange(10**9)}"
            result, conn = await self.rpc(
                conn, "consoleWrite", vm_id, f"echo {token}\r"
            )
        code = result["status"]["code"]
        if code != 0:
            raise SoakError(f"RPC answered {result['status']}")
        self.count("rpc")
        return conn

    # -- streams ---------------------------------------------------------

    async def follow(
        self,
        rng: random.Random,
        vm_id: str,
        query: str,
        seconds: float,
        offset: int | None = None,
    ) -> int:
        """Follow for a while (from ``offset``, if given); record what came;
        return the next offset."""
        if offset is not None:
            query = f"?offset={offset}"
        conn = await Conn.open(self.port, self.context)
        try:
            await conn.send(
                f"GET /consoleStream/{vm_id}{query} HTTP/1.1\r\n"
                "Host: soak\r\n\r\n".encode()
            )
            status, headers = await conn.head()
            if status != 200:
                raise SoakError(f"GET {vm_id}{query}: HTTP {status}")
            if "x-console-lost" in headers:
                raise SoakError(f"GET {vm_id}{query}: lost {headers['x-console-lost']}")
            start = int(headers["x-console-offset"])
            if offset is not None and start != offset:
                raise SoakError(f"GET {vm_id}{query}: X-Console-Offset {start}")
            received = bytearray()
            stop = min(time.monotonic() + seconds, self.deadline)
            while (left := stop - time.monotonic()) > 0:
                try:
                    part = await asyncio.wait_for(conn.chunk(), left)
                except TimeoutError:
                    break
                if part is None:
                    raise SoakError(f"GET {vm_id}: the server ended a live stream")
                received += part
            self.record(vm_id, start, bytes(received))
            return start + len(received)
        finally:
            await conn.close()

    async def follower(self, rng: random.Random) -> None:
        vm_id = rng.choice(self.guests)
        query = rng.choice(["", "?tail=2048", "?tail=0"])
        await self.follow(rng, vm_id, query, rng.uniform(0.5, 8))
        self.count("follower")

    async def resumer(self, rng: random.Random) -> None:
        vm_id = rng.choice(self.guests)
        nxt = await self.follow(rng, vm_id, "?tail=512", rng.uniform(0.5, 4))
        await self.follow(rng, vm_id, "", rng.uniform(0.5, 4), offset=nxt)
        self.count("resume")

    async def writer(self, rng: random.Random, leave_early: bool = False) -> None:
        vm_id = rng.choice(self.guests)
        conn = await Conn.open(self.port, self.context)
        try:
            await conn.send(
                f"POST /consoleStream/{vm_id} HTTP/1.1\r\nHost: soak\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            sent = 0
            for _ in range(rng.randint(1, 3)):
                command = rng.choice(COMMANDS).format(token=f"w-{rng.randrange(10**9)}")
                await conn.send(chunk(command.encode()))
                sent += len(command)
                await asyncio.sleep(rng.uniform(0, 0.3))
            if leave_early:
                # Leave in the middle of a chunk: none of it may reach the
                # guest (chunks go whole), which would echo the token.
                token = f"left-{rng.randrange(10**9)}"
                self.left_tokens.append(token)
                await conn.send(b"100\r\necho %s" % token.encode())
                self.count("writer-left")
                return
            await conn.send(b"0\r\n\r\n")
            status, headers = await conn.head()
            body = await conn.body(headers)
            if status != 200 or json.loads(body) != {"written": sent}:
                raise SoakError(f"POST {vm_id}: {status} {body!r}, sent {sent}")
            self.count("writer")
        finally:
            await conn.close()

    async def duplex(self, rng: random.Random, flood: bool = False) -> None:
        """Type a line and wait for the guest's answer on the same request:
        an echoed token, or a flood of a random size, byte for byte."""
        vm_id = rng.choice(self.guests)
        token = f"d-{rng.randrange(10**9)}"
        conn = await Conn.open(self.port, self.context)
        try:
            await conn.send(
                f"POST /consoleStream/{vm_id}?duplex=1 HTTP/1.1\r\nHost: soak\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            status, headers = await conn.head()
            if status != 200:
                raise SoakError(f"duplex {vm_id}: HTTP {status}")
            start = int(headers["x-console-offset"])
            if flood:
                # Lines reach the guest whole, so its answer to this one is
                # one unbroken stretch of its output: what the guest wrote.
                size = rng.randrange(1000, 30000)
                command = f"flood {size}"
                wanted = flood_output(command, size)
            else:
                command = f"echo {token}"
                wanted = f"\r\n{token}\r\n".encode()
            await conn.send(chunk(f"{command}\r".encode()))
            received = bytearray()
            stop = time.monotonic() + ANSWER_TIMEOUT
            while wanted not in received:
                echo = received.find(command.encode() + b"\r\n")
                if flood and echo >= 0 and len(received) - echo >= len(wanted):
                    raise SoakError(f"duplex {vm_id}: {command} is not the guest's")
                left = stop - time.monotonic()
                try:
                    part = await asyncio.wait_for(conn.chunk(), left)
                except TimeoutError:
                    raise SoakError(f"duplex {vm_id}: no answer to {command}") from None
                if part is None:
                    raise SoakError(f"duplex {vm_id}: the server ended it")
                received += part
            self.record(vm_id, start, bytes(received))
            self.count("flood" if flood else "duplex")
        finally:
            await conn.close()

    # -- a client ------------------------------------------------------------

    async def client(self, number: int) -> None:
        rng = random.Random(self.seed * 100_003 + number)
        conn: Conn | None = None
        while time.monotonic() < self.deadline:
            choice = rng.random()
            action = "rpc"
            try:
                if choice < 0.32:
                    conn = await self.rpc_client(rng, conn)
                    if rng.random() < 0.1:  # reconnect now and then
                        await conn.close()
                        conn = None
                elif choice < 0.5:
                    action = "follower"
                    await self.follower(rng)
                elif choice < 0.6:
                    action = "resume"
                    await self.resumer(rng)
                elif choice < 0.73:
                    action = "writer"
                    await self.writer(rng)
                elif choice < 0.78:
                    action = "writer-left"
                    await self.writer(rng, leave_early=True)
                elif choice < 0.84:
                    action = "duplex"
                    await self.duplex(rng)
                elif choice < 0.88:
                    action = "flood"
                    await self.duplex(rng, flood=True)
                elif choice < 0.95:
                    action = "h2-stalled"
                    await soakh2.stalled_follower(self, rng)
                    self.count(action)
                else:
                    action = "h2-errors"
                    await soakh2.error_posts(self, rng)
                    self.count(action)
            except Exception as e:  # noqa: BLE001 - every surprise is reported
                where = "".join(traceback.format_exception(e)[-3:-1]).strip()
                self.errors.append(
                    f"client {number} {action}: {type(e).__name__}: {e} at {where}"
                )
                if conn is not None:
                    await conn.close()
                    conn = None
            await asyncio.sleep(rng.uniform(0, 0.5))
        if conn is not None:
            await conn.close()

    async def run_clients(self, clients: int) -> None:
        self.deadline = time.monotonic() + self.duration
        await asyncio.gather(*(self.client(n) for n in range(clients)))

    # -- checks afterwards ---------------------------------------------------


def run(
    server: ServerProcess,
    clients: int,
    guests: int,
    duration: float,
    warmup: float = 0.3,
    seed: int = 0,
) -> dict[str, Any]:
    """Drive the load against a running server; return the summary."""
    assert server.process is not None
    pid = server.process.pid
    names = create_guests(server, guests)
    soak = Soak(server, names, duration, seed)
    fds_before = fd_count(pid)
    log_start = len(server.log())
    samples: list[tuple[float, int]] = []

    async def main() -> tuple[int, int]:
        sampler = asyncio.ensure_future(
            sample_rss(pid, samples, max(1.0, duration / 60))
        )
        try:
            await soak.run_clients(clients)
        finally:
            sampler.cancel()
        rss_loaded = rss_bytes(pid)
        samples.append((duration, rss_loaded))

        async def idle() -> bool:
            result, conn = await soak.rpc(None, "getAllVmStats")
            await conn.close()
            return all(
                s["readers"] == 0 and s["writers"] == 0 and s["state"] == "connected"
                for s in result["statsList"]
            )

        if not await wait_until(idle, 30):
            soak.errors.append("readers or writers left after the clients went")
        mismatches = await verify_seen(soak)
        await verify_nothing_left(soak)
        # The checks' own connections are closed: the figure reported is the
        # one waited for, once the server has let go of them too.
        fds_after = await settle_fds(pid, fds_before, 30)
        if fds_after > fds_before:
            soak.errors.append(f"fds: {fds_after} after, {fds_before} before")
        return mismatches, fds_after

    started = time.monotonic()
    mismatches, fds_after = asyncio.run(main())
    polled_checked = verify_polled(soak)
    elapsed = time.monotonic() - started
    warm = [rss for t, rss in samples if t >= duration * warmup]
    rss_warm = warm[0] if warm else samples[-1][1]
    rss_max = max(warm) if warm else rss_warm
    growth = (rss_max - rss_warm) / rss_warm
    if growth >= 0.10:
        soak.errors.append(f"RSS grew {growth:.1%} after the warm-up")
    new_log = server.log()[log_start:]
    if "Traceback" in new_log:
        soak.errors.append("a traceback in the server log")
    return {
        "clients": clients,
        "guests": guests,
        "duration": duration,
        "elapsed": round(elapsed, 1),
        "counts": dict(sorted(soak.counts.items())),
        "byteRangesChecked": len(soak.seen),
        "bytesChecked": sum(len(s.data) for s in soak.seen),
        "mismatches": mismatches,
        "consoleReadRanges": len(soak.polled),
        "consoleReadRangesChecked": polled_checked,
        "leftTokensChecked": len(soak.left_tokens),
        "rssWarmMiB": round(rss_warm / 2**20, 1),
        "rssMaxAfterWarmMiB": round(rss_max / 2**20, 1),
        "rssGrowth": round(growth, 4),
        "fdsBefore": fds_before,
        "fdsAfter": fds_after,
        "errors": soak.errors[:50],
        "errorCount": len(soak.errors),
        "ok": not soak.errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--guests", type=int, default=20)
    parser.add_argument("--warmup", type=float, default=0.3, help="fraction of run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from vdsmconsole.pki import init_pki

    with tempfile.TemporaryDirectory(prefix="vdsmconsole-soak-") as tmp:
        root = Path(tmp)
        pki = init_pki(root / "pki", hostname="localhost")
        server = ServerProcess(pki, root / "server", DEMO_CONFIG)
        try:
            server.start()
            summary = run(
                server, args.clients, args.guests, args.duration, args.warmup, args.seed
            )
        finally:
            server.stop()
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
