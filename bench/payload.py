"""What the fake guest writes and what the clients check it against.

Everything on the wire is printable ASCII (plus CR LF): conserver's client
protocol treats 0xFF specially and a terminal would act on control bytes,
so the bench never sends either through a relay.

- A *sync marker* is written again and again until every client has seen
  one: then every client is attached and live, and the measurement starts.
- A *start marker* precedes the measured bytes, so a client can skip the
  banners, replays and sync markers that came before.
- The bulk payload is 80-byte numbered lines: a lost, repeated or reordered
  block changes the checksum.
- A trickle record is 8 bytes, a 7-digit sequence number and LF.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator

LINE = 80
LINES_PER_BLOCK = 819  # 65520 bytes: one guest write
RECORD = 8


def sync_marker(nonce: str) -> bytes:
    return b"<<BENCH-SYNC-%s>>\r\n" % nonce.encode()


def start_marker(nonce: str) -> bytes:
    return b"<<BENCH-START-%s>>\r\n" % nonce.encode()


def bulk_blocks(size: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes of numbered 80-byte lines, in 64 KiB blocks."""
    filler = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-=+*" * 2
    filler = filler[: LINE - 13]  # 10 digits, a space, CR LF
    number = 0
    left = size
    while left > 0:
        block = b"".join(
            b"%010d %s\r\n" % (number + i, filler) for i in range(LINES_PER_BLOCK)
        )
        number += LINES_PER_BLOCK
        take = min(left, len(block))
        yield block[:take]
        left -= take


@functools.lru_cache(maxsize=8)
def bulk_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for block in bulk_blocks(size):
        digest.update(block)
    return digest.hexdigest()


def record(seq: int) -> bytes:
    return b"%07d\n" % (seq % 10_000_000)
