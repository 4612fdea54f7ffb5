"""Which resource a request target routes to, decided in one place.

Twisted routes on the path percent-decoded segment by segment (split at
``/`` first, so ``%2F`` never makes a new segment).  The checks made when the
headers are in (a stream POST takes its body early, a stream connection is
kept from the idle timeout, shutdown tells streams from RPC calls) must see
the same path, or ``/%63onsoleStream/vm1`` reaches the stream resource while
being treated as something else.  So both ask ``stream_vm_id``.
``CONNECT /consoleTunnel/<vmId>`` (``tunnel_vm_id``) is long-lived as a
stream is: no idle timeout, and shutdown does not wait for it as for a call.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

from vdsmconsole.spec import STREAM_PATH, TUNNEL_PATH

__all__ = [
    "STREAM_SEGMENT",
    "TUNNEL_SEGMENT",
    "is_stream_target",
    "path_segments",
    "stream_vm_id",
    "tunnel_vm_id",
]

STREAM_SEGMENT = STREAM_PATH.strip("/").encode("ascii")  # b"consoleStream"
TUNNEL_SEGMENT = TUNNEL_PATH.strip("/").encode("ascii")  # b"consoleTunnel"


def path_segments(target: bytes) -> list[bytes]:
    """The decoded segments of a request target, as Twisted's ``postpath``."""
    path = target.split(b"?", 1)[0]
    return [unquote_to_bytes(segment) for segment in path[1:].split(b"/")]


def stream_vm_id(segments: Sequence[bytes]) -> bytes | None:
    """The vmId segment if these segments route to a console stream, else None."""
    if len(segments) == 2 and segments[0] == STREAM_SEGMENT:
        return segments[1]
    return None


def tunnel_vm_id(segments: Sequence[bytes]) -> bytes | None:
    """The vmId segment if these segments route to a console tunnel, else None."""
    if len(segments) == 2 and segments[0] == TUNNEL_SEGMENT:
        return segments[1]
    return None


def is_stream_target(target: bytes) -> bool:
    """Whether a raw request target (path and query) routes to a console
    stream or a tunnel: long-lived, not an RPC call."""
    segments = path_segments(target)
    return stream_vm_id(segments) is not None or tunnel_vm_id(segments) is not None
