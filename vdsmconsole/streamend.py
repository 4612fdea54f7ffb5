"""Why a console stream ended: the words server and client share.

The server says it in the ``X-Console-End`` trailer of a stream that ends
cleanly, or as a header of a 503 (see endings.py for the wire).  Pure: no
Twisted here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = ["END_HEADER", "StreamEnd", "end_of", "parse_end"]

END_HEADER = b"X-Console-End"


class StreamEnd(enum.StrEnum):
    DESTROYED = "destroyed"  # the console was destroyed
    DOWN = "down"  # its guest is gone for good; everything retained was sent
    COMPLETE = "complete"  # follow=0: everything asked for was sent
    BEHIND = "behind"  # fell behind what is retained: resume to learn the loss
    STOPPING = "stopping"  # the server stops (a 503; a stream is cut instead)


def parse_end(value: bytes) -> StreamEnd | None:
    """An ``X-Console-End`` value; None for a word this side does not know."""
    try:
        return StreamEnd(value.strip().decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


def end_of(lines: Iterable[bytes]) -> StreamEnd | None:
    """The ``X-Console-End`` among raw ``name: value`` trailer lines, if any."""
    for line in lines:
        name, sep, value = bytes(line).partition(b":")
        if sep and name.strip().lower() == END_HEADER.lower():
            return parse_end(value)
    return None
