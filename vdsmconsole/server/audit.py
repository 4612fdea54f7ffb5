"""The audit trail: who attached to which console, who changed what.

One JSON object per line in ``<state_dir>/audit.log`` (easy to ship and to
grep), and the same line through the Twisted log so a foreground server shows
it too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from twisted.logger import Logger

log = Logger(namespace="vdsmconsole.audit")


class AuditLog:
    def __init__(self, path: Path | None, clock: Any = time) -> None:
        self._path = path
        self._clock = clock
        self._file: IO[str] | None = None
        # Called with each event and its fields (the metrics count tokens and
        # tunnels from them); never with the identity.
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    def record(self, event: str, identity: object, **fields: Any) -> None:
        for listener in self.listeners:
            listener(event, fields)
        entry = {"time": round(self._clock.time(), 3), "event": event}
        entry["identity"] = str(identity)
        entry.update(fields)
        line = json.dumps(entry, sort_keys=True, default=str)
        log.info("audit {line}", line=line)
        if self._path is None:
            return
        try:
            if self._file is None:
                self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
            self._file.write(line + "\n")
            self._file.flush()
        except OSError as e:
            # The audit file failing must not take consoles down; say so loudly.
            log.error("cannot write audit log {path}: {err}", path=self._path, err=e)
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
