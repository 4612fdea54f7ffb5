"""Console tokens out of request targets before they reach a log.

A token travels in a request target twice: as the last segment of
``/os-console-auth-tokens/<token>`` and as the ``token`` query parameter of
a tunnel or websocket URL.  The access log writes targets; this replaces
those parts with ``***`` first.  Names are compared after percent-decoding
(as Twisted routes and parses them), so ``/%6fs-console-auth-tokens/...`` or
``?t%6Fken=...`` is redacted too.  Pure.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from vdsmconsole.spec import CONNECT_INFO_PATH

__all__ = ["REDACTED", "redact_target"]

REDACTED = b"***"
_CONNECT_INFO_SEGMENT = CONNECT_INFO_PATH.strip("/").encode("ascii")


def _redact_query(query: bytes) -> bytes:
    parts = []
    for part in query.split(b"&"):
        name = part.split(b"=", 1)[0]
        if unquote_to_bytes(name.replace(b"+", b" ")) == b"token":
            part = name + b"=" + REDACTED
        parts.append(part)
    return b"&".join(parts)


def redact_target(target: bytes) -> bytes:
    """``target`` (path and query) with any console token replaced by ``***``."""
    path, sep, query = target.partition(b"?")
    segments = path.split(b"/")
    if len(segments) > 2 and unquote_to_bytes(segments[1]) == _CONNECT_INFO_SEGMENT:
        path = b"/".join([*segments[:2], REDACTED])
    return path + sep + (_redact_query(query) if sep else b"")
