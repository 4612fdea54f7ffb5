"""Console streams over HTTP: GET follows, POST types, duplex does both."""

from __future__ import annotations

from typing import Any


def install_streams(site: Any, root: Any, context: Any) -> None:
    """Route /consoleStream/<vmId> (added with the streams issue)."""
