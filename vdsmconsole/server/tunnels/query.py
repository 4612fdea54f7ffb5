"""A tunnel's query (``protocol``, ``token``) and its refusals: pure."""

from __future__ import annotations

from dataclasses import dataclass

from vdsmconsole.spec import REMOTE_PROTOCOLS, is_valid_token


class Refusal(Exception):
    """A tunnel request refused: the HTTP status and a short message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TunnelQuery:
    protocol: str
    token: str | None = None


def _one(name: str, values: list[bytes]) -> str:
    if len(values) != 1:
        raise Refusal(400, f"give {name} once")
    try:
        return values[0].decode("ascii")
    except UnicodeDecodeError:
        raise Refusal(400, f"malformed {name}") from None


def parse_tunnel_query(args: dict[bytes, list[bytes]]) -> TunnelQuery:
    """``protocol`` (serial, vnc, spice or rdp) and maybe ``token``, or 400."""
    unknown = set(args) - {b"protocol", b"token"}
    if unknown:
        name = sorted(unknown)[0].decode("utf-8", "replace")
        raise Refusal(400, f"unknown parameter {name!r}")
    if b"protocol" not in args:
        raise Refusal(400, f"protocol missing: one of {', '.join(REMOTE_PROTOCOLS)}")
    protocol = _one("protocol", args[b"protocol"])
    if protocol not in REMOTE_PROTOCOLS:
        raise Refusal(400, f"protocol must be one of {', '.join(REMOTE_PROTOCOLS)}")
    token = _one("token", args[b"token"]) if b"token" in args else None
    if token is not None and not is_valid_token(token):
        raise Refusal(400, "malformed token")  # never echoed
    return TunnelQuery(protocol, token)


# Roles in order of what they may do (server/authz.py).
ROLE_ORDER = ("viewer", "operator", "admin")


def lower_role(a: str, b: str) -> str:
    """The role that may do less of the two."""
    return min(a, b, key=ROLE_ORDER.index)
