"""vmId -> console, persisted in the state directory so it survives restarts.

The file is ``<state_dir>/registry.json``, written whole to a temporary file,
fsynced and renamed over the old one: a crash leaves the old or the new
registry, never half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from vdsmconsole.spec import (
    ConsoleSpec,
    SpecError,
    parse_console_spec,
    validate_vm_id,
)
from vdsmconsole.status import Code, StatusError

log = Logger(namespace="vdsmconsole.registry")

FORMAT_VERSION = 1


class ManagedConsole(Protocol):
    vm_id: str
    spec: ConsoleSpec

    def start(self) -> None: ...

    def stop(self) -> defer.Deferred[None]: ...


class Registry:
    def __init__(
        self,
        path: Path | None,
        console_factory: Callable[[str, ConsoleSpec], Any],
        spawn_commands: Any = None,
    ) -> None:
        self._path = path
        self._factory = console_factory
        self._spawn_commands = spawn_commands or {}
        self._consoles: dict[str, Any] = {}

    # -- lookups -------------------------------------------------------------

    def ids(self) -> list[str]:
        return sorted(self._consoles)

    def find(self, vm_id: str) -> Any | None:
        return self._consoles.get(vm_id)

    def get(self, vm_id: str) -> Any:
        console = self._consoles.get(vm_id)
        if console is None:
            raise StatusError(Code.NO_VM, f"no console for vmId {vm_id!r}")
        return console

    def __len__(self) -> int:
        return len(self._consoles)

    # -- changes --------------------------------------------------------------

    def create(self, vm_id: str, spec: ConsoleSpec) -> Any:
        # The vmId becomes a directory name under the state directory: check
        # it here too, whoever the caller is, before the factory touches a path.
        try:
            validate_vm_id(vm_id)
        except SpecError as e:
            raise StatusError(Code.MISS_PARAM, str(e)) from None
        if vm_id in self._consoles:
            raise StatusError(Code.EXIST, f"vmId {vm_id!r} is already registered")
        console = self._factory(vm_id, spec)
        self._consoles[vm_id] = console
        try:
            self.save()
        except OSError as e:
            del self._consoles[vm_id]
            raise StatusError(
                Code.UNEXPECTED, f"cannot persist the registry: {e.strerror}"
            ) from None
        console.start()
        return console

    def destroy(self, vm_id: str) -> defer.Deferred[None]:
        console = self.get(vm_id)
        del self._consoles[vm_id]
        try:
            self.save()
        except OSError as e:
            # The file still names it and would bring it back at the next
            # start: keep it registered (and running) rather than half-destroy.
            self._consoles[vm_id] = console
            raise StatusError(
                Code.UNEXPECTED, f"cannot persist the registry: {e.strerror}"
            ) from None
        return console.stop()

    def stop_all(self) -> defer.Deferred[Any]:
        """Stop every console (server shutdown); the registry file stays."""
        return defer.gatherResults(
            [c.stop() for c in self._consoles.values()], consumeErrors=True
        )

    # -- persistence ----------------------------------------------------------

    def save(self) -> None:
        if self._path is None:
            return
        data = {
            "version": FORMAT_VERSION,
            "consoles": {v: c.spec.to_wire() for v, c in self._consoles.items()},
        }
        tmp = self._path.with_name(self._path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)

    def load(self) -> None:
        """Restore and start every console the file names."""
        if self._path is None or not self._path.exists():
            return
        with open(self._path, encoding="utf-8") as f:
            data = json.load(f)
        for vm_id, desc in sorted(data.get("consoles", {}).items()):
            try:
                validate_vm_id(vm_id)
                spec = parse_console_spec(desc, self._spawn_commands)
            except SpecError as e:
                # E.g. a spawn command removed from the configuration since.
                log.error("not restoring console {vm}: {why}", vm=vm_id, why=e)
                continue
            console = self._factory(vm_id, spec)
            self._consoles[vm_id] = console
            console.start()
        log.info("restored {n} console(s)", n=len(self._consoles))
