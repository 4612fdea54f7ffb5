"""Which browser pages may open a websocket: the ``Origin`` check (pure).

A browser sends with every websocket the origin of the page that opened it;
a page of another site (cross-site websocket hijacking) must not reach a
console with the user's token or, on the mTLS port, the user's certificate.
Allowed: an origin listed in ``[web] allowed_origins`` (``scheme://host[:port]``,
compared without regard to case), or, when none is listed, the listener's own
name: ``https://`` and the ``Host`` the browser sent (Nova's rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

DEFAULT_PORTS = {"https": 443, "http": 80}


def normal_origin(origin: str) -> str | None:
    """``scheme://host:port`` in lower case, or None when it is not an origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    port = port or DEFAULT_PORTS[parts.scheme]
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


def origin_allowed(
    origin: bytes | None, host: bytes | None, allowed: Sequence[str]
) -> bool:
    """Whether a websocket from a page of ``origin`` may open.

    ``origin`` None (no header: not a browser) is for the caller to decide.
    """
    if origin is None:
        return False
    mine = normal_origin(origin.decode("latin-1"))
    if mine is None:
        return False
    if allowed:
        return any(mine == normal_origin(entry) for entry in allowed)
    if not host:
        return False
    own = normal_origin("https://" + host.decode("latin-1"))
    return own is not None and mine == own
