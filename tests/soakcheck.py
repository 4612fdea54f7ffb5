"""What the soak does around its clients: guests, checks, RSS and fds.

The guests are created, and their rings filled, before the clients start.
Once the clients are gone, what streams received is compared with
``consoleRead``; what ``consoleRead`` answered during the run with what
streams received; and no token of a chunk whose writer left may have reached
any guest.  The server's RSS is sampled during the run, and its descriptors
counted once they settle.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tests.hardening import fd_count
from tests.serverproc import ServerProcess, wait_for, wait_for_progress
from tests.soakhttp import Conn
from tests.streamhelp import at_prompt, rss_bytes, stats, type_into

if TYPE_CHECKING:
    from tests.soak import Soak


@dataclass
class Seen:
    """Bytes a client received from a console, from an absolute offset."""

    vm_id: str
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


async def console_read(
    soak: Soak, conn: Conn | None, vm_id: str, offset: int, length: int | None = None
) -> tuple[bytes, Conn | None]:
    """consoleRead from ``offset``: ``length`` bytes, or to the end."""
    data = bytearray()
    while length is None or len(data) < length:
        want = 1 << 20 if length is None else min(1 << 20, length - len(data))
        result, conn = await soak.rpc(conn, "consoleRead", vm_id, offset, want)
        if result["status"]["code"] != 0 or result["lost"] or not result["data"]:
            break
        data += result["data"]
        offset = result["nextOffset"]
    return bytes(data), conn


async def verify_seen(soak: Soak) -> int:
    """Compare every byte range streamed to a client with consoleRead now;
    count mismatches."""
    conn: Conn | None = None
    bad = 0
    for seen in soak.seen:
        data, conn = await console_read(
            soak, conn, seen.vm_id, seen.offset, len(seen.data)
        )
        if data != seen.data:
            bad += 1
            soak.errors.append(
                f"{seen.vm_id} [{seen.offset}, +{len(seen.data)}): the client's "
                "bytes differ from consoleRead"
            )
    if conn is not None:
        await conn.close()
    return bad


def verify_polled(soak: Soak) -> int:
    """Compare each consoleRead answer of the run with the bytes streams
    received for the same offsets; return how many overlapped one."""
    streamed: dict[str, list[Seen]] = {}
    for seen in soak.seen:
        streamed.setdefault(seen.vm_id, []).append(seen)
    checked = 0
    for polled in soak.polled:
        overlapped = False
        for seen in streamed.get(polled.vm_id, []):
            low, high = max(seen.offset, polled.offset), min(seen.end, polled.end)
            if low >= high:
                continue
            overlapped = True
            mine = polled.data[low - polled.offset : high - polled.offset]
            if mine != seen.data[low - seen.offset : high - seen.offset]:
                soak.errors.append(
                    f"{polled.vm_id} [{low}, {high}): consoleRead during the run "
                    "differs from what a stream received"
                )
        checked += overlapped
    return checked


async def verify_nothing_left(soak: Soak) -> None:
    """No token of a writer that left mid-chunk is in any guest's output."""
    conn: Conn | None = None
    for vm_id in soak.guests:
        stats, conn = await soak.rpc(conn, "getVmStats", vm_id)
        first = stats["statsList"][0]["firstOffset"]
        data, conn = await console_read(soak, conn, vm_id, first)
        for token in soak.left_tokens:
            if token.encode() in data:
                soak.errors.append(
                    f"{vm_id}: {token}, of a chunk whose writer left, reached it"
                )
    if conn is not None:
        await conn.close()


async def settle_fds(pid: int, before: int, timeout: float) -> int:
    """The server's open descriptors once they are back to ``before``, or
    the count at the deadline."""
    deadline = time.monotonic() + timeout
    while (count := fd_count(pid)) > before and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return count


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
    """Create the guests and fill their rings (1 MiB each by default) with a
    flood, so RSS growing during the run is not the rings filling up."""
    proxy = server.rpc()
    ring = proxy.getVdsCapabilities()["info"]["ringBytes"]
    guests = [f"soak-{n:02d}" for n in range(count)]
    for vm_id in guests:
        reply = proxy.create(
            {"vmId": vm_id, "console": {"type": "spawn", "command": "demo"}}
        )
        assert reply["status"]["code"] == 0, reply
    for vm_id in guests:
        wait_for(lambda v=vm_id: at_prompt(server, v), 60, f"{vm_id}'s prompt")
        type_into(server, vm_id, f"flood {ring}\r")
    for vm_id in guests:
        wait_for_progress(
            lambda v=vm_id: (
                stats(server, v)["nextOffset"] > ring and at_prompt(server, v)
            ),
            lambda v=vm_id: stats(server, v)["nextOffset"],
            60,
            f"{vm_id}'s ring to fill",
        )
    return guests
