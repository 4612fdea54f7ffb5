"""Soak: many clients mixing RPC, followers, writers, duplex and reconnects.

Run as a command (loopback only; it starts its own server on a throwaway PKI
and state directory)::

    python -m tests.soak --duration 300 --clients 200 --guests 20

The clients are asyncio tasks with ``ssl`` in one process, so the client side
stays cheap on a small machine.  Each client loops until the deadline, picking
at random: an RPC call (ping, list, stats, consoleRead, consoleWrite), a
follower (live or from an offset, for a few seconds), a follower that
disconnects and resumes from its last offset, a writer (a chunked POST of a
few commands), a writer that leaves mid-body, a duplex session (type a
token, see it echoed on the same request), and over HTTP/2
(``tests/soakh2.py``) a follower that stops reading for a few seconds with a
2 GiB window open, or stream POSTs answered at once with 404, 400 and 416
while their bodies are still open, then a ping on the same connection.

Checked at the end, and any failure is an error:

- no unexpected answer or exception on any client;
- every byte each follower or duplex session received equals what
  ``consoleRead`` returns for the same offsets (a resumed follower's two
  sessions join without a gap or a repeat);
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
import hashlib
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
from tests.serverproc import ServerProcess, client_context, wait_for
from tests.streamhelp import DEMO_CONFIG, PROMPT, rss_bytes

COMMANDS = ["uname\r", "date\r", "uptime\r", "help\r", "echo {token}\r"]
ANSWER_TIMEOUT = 60.0  # seconds for any one answer under full load


class SoakError(Exception):
    """Something a client saw that the contract does not allow."""


# -- a minimal asyncio HTTP/1.1 client ------------------------------------------


class Conn:
    """One TLS connection speaking HTTP/1.1, keep-alive or streaming."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext) -> Conn:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost"
            ),
            ANSWER_TIMEOUT,
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def head(self) -> tuple[int, dict[str, str]]:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), ANSWER_TIMEOUT)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def chunk(self) -> bytes | None:
        """The next chunk of a chunked body; None at its end."""
        size_line = await self.reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            await self.reader.readuntil(b"\r\n")
            return None
        data = await self.reader.readexactly(size + 2)
        return data[:-2]

    async def body(self, headers: dict[str, str]) -> bytes:
        if "content-length" in headers:
            return await asyncio.wait_for(
                self.reader.readexactly(int(headers["content-length"])),
                ANSWER_TIMEOUT,
            )
        if headers.get("transfer-encoding") == "chunked":
            parts = []
            while (
                part := await asyncio.wait_for(self.chunk(), ANSWER_TIMEOUT)
            ) is not None:
                parts.append(part)
            return b"".join(parts)
        return await asyncio.wait_for(self.reader.read(), ANSWER_TIMEOUT)

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (OSError, ssl.SSLError, TimeoutError):
            pass


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# -- the run ---------------------------------------------------------------------


@dataclass
class Seen:
    """Bytes a client received from a console, from an absolute offset."""

    vm_id: str
    offset: int
    length: int
    sha256: str


@dataclass
class Soak:
    server: ServerProcess
    guests: list[str]
    duration: float
    seed: int = 0
    context: ssl.SSLContext = field(init=False)
    seen: list[Seen] = field(default_factory=list)
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
            digest = hashlib.sha256(data).hexdigest()
            self.seen.append(Seen(vm_id, offset, len(data), digest))

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
            offset = rng.randint(first, end)
            result, conn = await self.rpc(conn, "consoleRead", vm_id, offset, 4096)
            if result["status"]["code"] == 0:
                if result["lost"] != 0 or result["offset"] != offset:
                    raise SoakError(f"consoleRead {vm_id} {offset}: {result}")
                self.record(vm_id, offset, result["data"])
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
        self, rng: random.Random, vm_id: str, query: str, seconds: float
    ) -> int:
        """Follow for a while; record what came; return the next offset."""
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
        await self.follow(rng, vm_id, f"?offset={nxt}", rng.uniform(0.5, 4))
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
                # Leave in the middle of a chunk.  What arrived of it reaches
                # the guest, so it is a whole line, not to garble the next
                # client's command on that guest.
                await conn.send(b"100\r\necho partial\r")
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

    async def duplex(self, rng: random.Random) -> None:
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
            await conn.send(chunk(f"echo {token}\r".encode()))
            wanted = f"\r\n{token}\r\n".encode()
            received = bytearray()
            stop = time.monotonic() + ANSWER_TIMEOUT
            while wanted not in received:
                left = stop - time.monotonic()
                if left <= 0:
                    raise SoakError(f"duplex {vm_id}: no echo of {token}")
                part = await asyncio.wait_for(conn.chunk(), left)
                if part is None:
                    raise SoakError(f"duplex {vm_id}: the server ended it")
                received += part
            self.record(vm_id, start, bytes(received))
            self.count("duplex")
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
                elif choice < 0.88:
                    action = "duplex"
                    await self.duplex(rng)
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

    async def verify_seen(self) -> int:
        """Compare every recorded byte range with consoleRead; count mismatches."""
        conn: Conn | None = None
        bad = 0
        for seen in self.seen:
            data = bytearray()
            offset = seen.offset
            while len(data) < seen.length:
                result, conn = await self.rpc(
                    conn, "consoleRead", seen.vm_id, offset, seen.length - len(data)
                )
                if (
                    result["status"]["code"] != 0
                    or result["lost"]
                    or not result["data"]
                ):
                    break
                data += result["data"]
                offset = result["nextOffset"]
            if hashlib.sha256(data).hexdigest() != seen.sha256:
                bad += 1
                self.errors.append(
                    f"{seen.vm_id} [{seen.offset}, +{seen.length}): the client's bytes "
                    "differ from consoleRead"
                )
        if conn is not None:
            await conn.close()
        return bad


def fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def sample_rss(pid: int, samples: list[tuple[float, int]], every: float) -> None:
    started = time.monotonic()
    while True:
        samples.append((time.monotonic() - started, rss_bytes(pid)))
        await asyncio.sleep(every)


async def wait_until(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.2)
    return bool(await check())


def create_guests(server: ServerProcess, count: int) -> list[str]:
    proxy = server.rpc()
    guests = [f"soak-{n:02d}" for n in range(count)]
    for vm_id in guests:
        reply = proxy.create(
            {"vmId": vm_id, "console": {"type": "spawn", "command": "demo"}}
        )
        assert reply["status"]["code"] == 0, reply

    def at_prompt(vm_id: str) -> bool:
        end = proxy.getVmStats(vm_id)["statsList"][0]["nextOffset"]
        tail = proxy.consoleRead(vm_id, max(0, end - len(PROMPT)), 64)["data"].data
        return bool(tail == PROMPT)

    for vm_id in guests:
        wait_for(lambda v=vm_id: at_prompt(v), 60, f"guest {vm_id}'s prompt")
    return guests


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

    async def main() -> int:
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
        if not await wait_until(_fds_back(pid, fds_before), 30):
            soak.errors.append(f"fds: {fd_count(pid)} after, {fds_before} before")
        mismatches = await soak.verify_seen()
        # The check's own connection has just closed: let the server see it.
        await wait_until(_fds_back(pid, fds_before), 10)
        return mismatches

    started = time.monotonic()
    mismatches = asyncio.run(main())
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
        "bytesChecked": sum(s.length for s in soak.seen),
        "mismatches": mismatches,
        "rssWarmMiB": round(rss_warm / 2**20, 1),
        "rssMaxAfterWarmMiB": round(rss_max / 2**20, 1),
        "rssGrowth": round(growth, 4),
        "fdsBefore": fds_before,
        "fdsAfter": fd_count(pid),
        "errors": soak.errors[:50],
        "errorCount": len(soak.errors),
        "ok": not soak.errors,
    }


def _fds_back(pid: int, before: int) -> Any:
    async def check() -> bool:
        return fd_count(pid) <= before

    return check


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
