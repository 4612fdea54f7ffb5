"""The access log line: combined log format, every field escaped.

The user field is the peer's certificate name.  Names, paths and headers
come from the client, so each field has its control characters escaped
(``identity.log_safe``) and its quotes and spaces percent-encoded: no
request can split the line or forge another.  Console tokens in the target
are replaced by ``***`` (redact.py).
"""

from __future__ import annotations

from typing import Any

from vdsmconsole.identity import identity_of, log_safe
from vdsmconsole.server.http.redact import redact_target

__all__ = ["access_log_line"]


def access_log_line(timestamp: str, request: Any) -> str:
    """Combined log format, with the peer's certificate name as the user."""
    # A console page's address carries its token: a Referer may too.
    referrer = _quote(redact_target(request.getHeader(b"referer") or b"-"))
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
        uri=_quote(redact_target(request.uri)),
        protocol=_quote(request.clientproto),
        code=request.code,
        length=request.sentLength or "-",
        referrer=referrer,
        agent=agent,
    )


def _quote(value: bytes | str, escaped: bool = False) -> str:
    """One field of the line: control characters escaped, no quote or space."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not escaped:
        value = log_safe(value)
    return value.replace('"', "%22").replace(" ", "%20") if value else "-"
