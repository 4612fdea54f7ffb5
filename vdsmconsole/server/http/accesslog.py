"""The access log line: combined log format, every field escaped.

The user field is the peer's certificate name.  Names, paths and headers
come from the client, so each field has its control characters escaped
(``identity.log_safe``) and its quotes and spaces percent-encoded: no
request can split the line or forge another.  A console token in a query
(``?token=T``, a bearer secret) is logged as ``token=-``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from vdsmconsole.identity import identity_of, log_safe

__all__ = ["access_log_line"]


def access_log_line(timestamp: str, request: Any) -> str:
    """Combined log format, with the peer's certificate name as the user."""
    referrer = _quote(redact_tokens(request.getHeader(b"referer") or b"-"))
    agent = _quote(request.getHeader(b"user-agent") or b"-")
    line = (
        '"{ip}" - {user} {timestamp} "{method} {uri} {protocol}" '
        '{code} {length} "{referrer}" "{agent}"'
    )
    return line.format(
        ip=_quote(request.getClientAddress().host or b"-"),
        # str(identity) is escaped already (identity.py), as in every log.
        user=_quote(str(identity_of(request)), escaped=True),
        timestamp=timestamp,
        method=_quote(request.method),
        uri=_quote(redact_tokens(request.uri)),
        protocol=_quote(request.clientproto),
        code=request.code,
        length=request.sentLength or "-",
        referrer=referrer,
        agent=agent,
    )


def redact_tokens(uri: bytes) -> bytes:
    """``uri`` with the value of every ``token`` query parameter left out."""
    path, mark, query = uri.partition(b"?")
    if not mark:
        return uri
    parts = []
    for part in query.split(b"&"):
        name, equals, _ = part.partition(b"=")
        if unquote_to_bytes(name.replace(b"+", b" ")).strip() == b"token":
            part = name + equals + b"-"
        parts.append(part)
    return path + b"?" + b"&".join(parts)


def _quote(value: bytes | str, escaped: bool = False) -> str:
    """One field of the line: control characters escaped, no quote or space."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not escaped:
        value = log_safe(value)
    return value.replace('"', "%22").replace(" ", "%20") if value else "-"
