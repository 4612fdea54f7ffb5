"""The soak's HTTP/2 clients: followers that stall, POSTs answered with errors.

An asyncio connection over ``ssl`` with ALPN ``h2`` drives an ``h2`` state
machine; a reader task hands events to per-stream state.  ``stall()`` stops
reading the socket: asyncio stops reading at its buffer's high-water mark,
the kernel's window fills, and the server sees a client that advertised a
2 GiB window and then went quiet (what grew the server without bound before
``client_buffer_bytes`` held per stream).
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
import xmlrpc.client
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from tests.serverproc import client_context

HUGE_WINDOW = 2**31 - 1
ANSWER_TIMEOUT = 60.0
_contexts: dict[int, ssl.SSLContext] = {}


def h2_context(soak: Any) -> ssl.SSLContext:
    """The soak's client certificate, offering ALPN h2 (one per soak)."""
    context = _contexts.get(id(soak))
    if context is None:
        context = _contexts[id(soak)] = client_context(soak.server.pki)
        context.set_alpn_protocols(["h2"])
    return context


@dataclass
class Stream:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    got_headers: asyncio.Event = field(default_factory=asyncio.Event)
    reset: bool = False


class H2Conn:
    """One HTTP/2 connection: ``request()`` opens streams, a task reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.streams: dict[int, Stream] = {}
        self.reading = asyncio.Event()
        self.reading.set()
        self.closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext) -> H2Conn:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost"
            ),
            ANSWER_TIMEOUT,
        )
        if writer.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
            writer.close()
            raise ConnectionError("the server did not pick h2")
        self = cls(reader, writer)
        self.conn.initiate_connection()
        self.conn.update_settings(
            {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: HUGE_WINDOW}
        )
        self.conn.increment_flow_control_window(HUGE_WINDOW - 65535)
        await self.flush()
        self._task = asyncio.ensure_future(self._read())
        return self

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def request(
        self, method: str, path: str, body: bytes | None = None, end: bool = True
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.streams[stream_id] = Stream()
        self.conn.send_headers(
            stream_id,
            [
                (":method", method),
                (":path", path),
                (":scheme", "https"),
                (":authority", "soak"),
            ],
            end_stream=body is None and end,
        )
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=end)
        await self.flush()
        return stream_id

    async def response(self, stream_id: int) -> Stream:
        """The stream once it ended (or the connection did)."""
        stream = self.streams[stream_id]
        ended = asyncio.ensure_future(stream.ended.wait())
        closed = asyncio.ensure_future(self.closed.wait())
        await asyncio.wait(
            [ended, closed], timeout=ANSWER_TIMEOUT, return_when="FIRST_COMPLETED"
        )
        ended.cancel()
        closed.cancel()
        if not stream.ended.is_set():
            raise ConnectionError(f"stream {stream_id} did not end")
        return stream

    def stall(self) -> None:
        self.reading.clear()

    def resume(self) -> None:
        self.reading.set()

    async def _read(self) -> None:
        try:
            while True:
                await self.reading.wait()
                data = await self.reader.read(65536)
                if not data:
                    return
                for event in self.conn.receive_data(data):
                    self._handle(event)
                await self.flush()
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            return
        finally:
            self.closed.set()

    def _handle(self, event: h2.events.Event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            stream.headers = dict(event.headers)
            stream.got_headers.set()
        elif isinstance(event, h2.events.DataReceived):
            if stream is not None:
                stream.data += event.data
            self.conn.acknowledge_received_data(
                event.flow_controlled_length, event.stream_id
            )
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.ended.set()
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            stream.reset = True
            stream.ended.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.writer.close()
        with suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 5)


async def stalled_follower(soak: Any, rng: random.Random) -> None:
    """Follow over HTTP/2, stop reading for a few seconds, read on: every byte
    received is recorded (and compared with consoleRead afterwards)."""
    vm_id = rng.choice(soak.guests)
    query = rng.choice(["", "?tail=4096", "?tail=0"])
    conn = await H2Conn.open(soak.port, h2_context(soak))
    try:
        stream_id = await conn.request("GET", f"/consoleStream/{vm_id}{query}")
        stream = conn.streams[stream_id]
        await asyncio.wait_for(stream.got_headers.wait(), ANSWER_TIMEOUT)
        if stream.headers.get(b":status") != b"200":
            raise ConnectionError(f"h2 GET {vm_id}{query}: {stream.headers}")
        start = int(stream.headers[b"x-console-offset"])
        for phase in ("read", "stall", "read"):
            if phase == "stall":
                conn.stall()
            else:
                conn.resume()
            seconds = rng.uniform(0.5, 4) if phase == "stall" else rng.uniform(0.5, 2)
            await asyncio.sleep(
                max(0.0, min(seconds, soak.deadline - time.monotonic()))
            )
        if stream.ended.is_set():
            raise ConnectionError(f"h2 GET {vm_id}: the server ended a live stream")
        soak.record(vm_id, start, bytes(stream.data))
    finally:
        await conn.close()


async def error_posts(soak: Any, rng: random.Random) -> None:
    """Stream POSTs answered at once with an error, their bodies still open;
    then a ping on the same connection."""
    vm_id = rng.choice(soak.guests)
    cases = [
        ("/consoleStream/no-such-vm", 404),
        (f"/consoleStream/{vm_id}?bogus=1", 400),
        (f"/consoleStream/{vm_id}?duplex=1&offset={10**15}", 416),
    ]
    conn = await H2Conn.open(soak.port, h2_context(soak))
    try:
        for path, expected in rng.sample(cases, k=len(cases)):
            stream_id = await conn.request("POST", path, b"echo x\r", end=False)
            stream = await conn.response(stream_id)
            status = int(stream.headers.get(b":status", b"0"))
            length = int(stream.headers.get(b"content-length", b"-1"))
            if status != expected or length != len(stream.data):
                raise ConnectionError(
                    f"h2 POST {path}: {status} {bytes(stream.data)!r}"
                )
        body = xmlrpc.client.dumps((), "ping").encode()
        stream = await conn.response(await conn.request("POST", "/RPC2", body))
        (result,), _ = xmlrpc.client.loads(bytes(stream.data))
        if result["status"]["code"] != 0:
            raise ConnectionError(f"h2 ping after errors: {json.dumps(result)}")
    finally:
        await conn.close()
