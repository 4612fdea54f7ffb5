"""An HTTP/1.1 response head read off a raw connection: bytes in, head out.

Two requests are spoken by hand because Twisted's ``Agent`` cannot: the
tunnel's ``CONNECT`` and the duplex ``POST`` (see tunnel.py and duplex.py).
Both read the server's answer themselves, so the reading lives here once, as
a plain class in the sans-IO style: a protocol feeds it what
``dataReceived`` got, and once the blank line has come it returns the
parsed head and the bytes after it (the body, or the tunnel's first bytes),
which are the caller's from then on.  No sockets, no reactor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MAX_HEAD", "BadHead", "HeadReader", "ResponseHead"]

# The most a response head may take before it is refused as garbage: our
# server's answers are a status line and a few headers.
MAX_HEAD = 64 * 1024


class BadHead(ValueError):
    """What came is not an HTTP response head (or too long to be one)."""


@dataclass(frozen=True)
class ResponseHead:
    """A status line and its headers: names lower-cased, the last one of a
    repeated name kept (our server sends none twice)."""

    code: int
    reason: str = ""
    headers: dict[bytes, bytes] = field(default_factory=dict)

    def header(self, name: bytes, default: bytes = b"") -> bytes:
        return self.headers.get(name.lower(), default)

    @property
    def content_length(self) -> int | None:
        """``Content-Length`` if it is a number, else None."""
        value = self.header(b"content-length")
        return int(value) if value.isdigit() else None


def parse_head(head: bytes) -> ResponseHead:
    """The head's bytes (without the blank line) parsed; ``BadHead`` if they
    are not a status line and ``name: value`` lines."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if (
        len(parts) < 2
        or not parts[0].startswith(b"HTTP/")
        or len(parts[1]) != 3
        or not parts[1].isdigit()
    ):
        raise BadHead(f"bad status line {lines[0][:80]!r}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        name = name.strip()
        if not colon or not name:
            raise BadHead(f"bad header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    return ResponseHead(int(parts[1]), reason, headers)


class HeadReader:
    """Collects a response head from bytes as they arrive.

    ``receive(data)`` returns None until the head's blank line has come,
    then ``(head, rest)``: the parsed head and the bytes that came after it.
    A head that is not one, or grows past ``limit`` without ending, raises
    ``BadHead``.  After the head the reader takes nothing more.
    """

    def __init__(self, limit: int = MAX_HEAD) -> None:
        self.limit = limit
        self.head: ResponseHead | None = None
        self._buffer = b""

    def receive(self, data: bytes) -> tuple[ResponseHead, bytes] | None:
        if self.head is not None:
            raise ValueError("the head was read already; the rest is the caller's")
        self._buffer += data
        head, sep, rest = self._buffer.partition(b"\r\n\r\n")
        if not sep:
            if len(self._buffer) > self.limit:
                raise BadHead("response head too long")
            return None
        if len(head) > self.limit:
            raise BadHead("response head too long")
        self._buffer = b""
        self.head = parse_head(head)
        return self.head, rest
