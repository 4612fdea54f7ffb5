"""Counts kept from the audit trail: tokens minted, used and refused, tunnels
opened and the bytes of those that closed, console sessions (streams and
websockets: ``attach``/``detach`` by ``mode``) and the bytes of those that
ended, every event by name.

Every one of these already passes through ``AuditLog.record`` (tokens'
``record_*``, ``Tunnel.opened``/``close``), so one listener there counts
them, rather than a counter beside each call.  Label values come from the
code (event names, ``via``, protocols), and are still bounded here: an
unexpected value is ``other``, and at most ``MAX_VALUES`` of a label are
kept, so no input can grow a series set without bound.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

__all__ = ["EventCounts", "PROTOCOLS"]

PROTOCOLS = ("serial", "vnc", "spice", "rdp")
OTHER = "other"
MAX_VALUES = 32
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")


class Bounded:
    """Label values seen, at most MAX_VALUES of them; then ``other``."""

    def __init__(self, fixed: tuple[str, ...] = ()) -> None:
        self.fixed = fixed
        self.seen: set[str] = set()

    def __call__(self, value: object) -> str:
        if self.fixed:
            return value if isinstance(value, str) and value in self.fixed else OTHER
        if not isinstance(value, str) or not _WORD.fullmatch(value):
            return OTHER
        if value not in self.seen and len(self.seen) >= MAX_VALUES:
            return OTHER
        self.seen.add(value)
        return value


class EventCounts:
    """An ``AuditLog`` listener: counts by a bounded label each."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.tokens_minted: Counter[str] = Counter()  # by protocol
        self.tokens_used: Counter[str] = Counter()  # by via
        self.tokens_refused: Counter[str] = Counter()  # by via
        self.tunnels_opened: Counter[str] = Counter()  # by protocol
        # (protocol, "to_viewer"|"from_viewer") of the tunnels that closed
        self.closed_tunnel_bytes: Counter[tuple[str, str]] = Counter()
        # Console sessions by mode (follow, send, duplex, websocket...).
        self.sessions_opened: Counter[str] = Counter()
        self.sessions_closed: Counter[str] = Counter()
        # (mode, "to_client"|"to_guest") of the sessions that ended
        self.ended_session_bytes: Counter[tuple[str, str]] = Counter()
        self._mode = Bounded()
        self._event = Bounded()
        self._via = Bounded()
        self._protocol = Bounded(PROTOCOLS)

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        self.events[self._event(event)] += 1
        if event == "tokenMint":
            self.tokens_minted[self._protocol(fields.get("protocol"))] += 1
        elif event == "tokenUse":
            self.tokens_used[self._via(fields.get("via"))] += 1
        elif event == "tokenRefused":
            self.tokens_refused[self._via(fields.get("via"))] += 1
        elif event == "tunnel-open":
            self.tunnels_opened[self._protocol(fields.get("protocol"))] += 1
        elif event == "attach":
            self.sessions_opened[self._mode(fields.get("mode"))] += 1
        elif event == "detach":
            mode = self._mode(fields.get("mode"))
            self.sessions_closed[mode] += 1
            for direction, key in (
                ("to_client", "bytesSent"),
                ("to_guest", "bytesWritten"),
            ):
                value = fields.get(key)
                if isinstance(value, int) and value > 0:
                    self.ended_session_bytes[mode, direction] += value
        elif event == "tunnel-close":
            protocol = self._protocol(fields.get("protocol"))
            for direction, key in (
                ("to_viewer", "bytesToViewer"),
                ("from_viewer", "bytesFromViewer"),
            ):
                value = fields.get(key)
                if isinstance(value, int) and value > 0:
                    self.closed_tunnel_bytes[protocol, direction] += value

    def protocol(self, value: object) -> str:
        return self._protocol(value)
