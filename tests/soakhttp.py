"""A minimal asyncio HTTP/1.1 client over TLS, for the soak's many clients.

The soak runs hundreds of clients as asyncio tasks in one process, so the
client side stays cheap on a small machine; this is the little of HTTP/1.1
they need: a request out, a status and headers in, a chunked or sized body.
"""

from __future__ import annotations

import asyncio
import ssl

ANSWER_TIMEOUT = 60.0  # seconds for any one answer under full load


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
