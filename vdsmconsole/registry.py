"""vmId -> console, persisted in the state directory so it survives restarts.

The file is ``<state_dir>/registry.json``, written whole to a temporary file,
fsynced and renamed over the old one: a crash leaves the old or the new
registry, never half of one.

Each entry is the console's description as ``create`` takes it
(``ConsoleSpec.to_wire``).  A ``pty`` entry also carries ``"owner": {"pid":
.., "start": ..}``, the process that held the pty's master when the console
was first attached: after a restart the pty is reopened only if that very
process still holds it (see ``PtySource``).  Files without it still load; a
restored ``pty`` console without an owner stays down.

With a ``SourcePolicy`` (the server always gives one), ``load`` checks every
entry against the configuration as ``create`` did: an entry it no longer
allows (``[sources]`` narrowed since) is restored ``down``, its reason and
``lastError`` saying why, and never opened or connected.  It stays in the
file, so that widening the configuration again brings it back; ``destroy``
removes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from vdsmconsole.console import DESTROYED, SERVER_STOPPING
from vdsmconsole.policy import NotAllowed, SourcePolicy
from vdsmconsole.sources import PtyOwner
from vdsmconsole.spec import (
    ConsoleSpec,
    SpecError,
    parse_console_spec,
    validate_vm_id,
)
from vdsmconsole.status import Code, StatusError, no_vm_message

log = Logger(namespace="vdsmconsole.registry")

FORMAT_VERSION = 1


class ManagedConsole(Protocol):
    vm_id: str
    spec: ConsoleSpec

    def start(self) -> None: ...

    def stop(self, why: str = ...) -> defer.Deferred[None]: ...


def _owner_of(console: Any) -> PtyOwner | None:
    """The recorded owner of a console's pty, if its source has one."""
    owner = getattr(getattr(console, "source", None), "owner", None)
    return owner if isinstance(owner, PtyOwner) else None


class Registry:
    """vmId -> console.

    ``console_factory(vm_id, spec)`` builds a console that is not started
    yet: with ``fresh=True`` for ``create``.  For a ``pty`` console restored
    by ``load`` (or checked by the policy at ``create``) it is also given
    ``restored=True, owner=<PtyOwner or None>`` (what ``make_console_factory``
    passes on to the source), and ``refused=<why>`` for an entry ``policy``
    no longer allows.

    A destroyed console leaves the registry at once (lookups say noVM), but
    its vmId is free again only once it has stopped (a spawned guest may take
    seconds): until then ``create`` refuses it (``exist``) and
    ``when_free`` tells when it may be created again.  Two consoles of one
    vmId never run at once: they share a state directory and an offset mark.
    """

    def __init__(
        self,
        path: Path | None,
        console_factory: Callable[..., Any],
        spawn_commands: Any = None,
        policy: SourcePolicy | None = None,
    ) -> None:
        self._path = path
        self._factory = console_factory
        self._spawn_commands = spawn_commands or {}
        self.policy = policy
        self._consoles: dict[str, Any] = {}
        # vmId -> what waits for its destroyed console to have stopped.
        self._stopping: dict[str, list[defer.Deferred[None]]] = {}
        self._closed = False  # stop_all was called: the server stops

    # -- lookups -------------------------------------------------------------

    def ids(self) -> list[str]:
        return sorted(self._consoles)

    def find(self, vm_id: str) -> Any | None:
        return self._consoles.get(vm_id)

    def get(self, vm_id: str) -> Any:
        console = self._consoles.get(vm_id)
        if console is None:
            raise StatusError(Code.NO_VM, no_vm_message(vm_id))
        return console

    def __len__(self) -> int:
        return len(self._consoles)

    def spawned_pids(self) -> set[int]:
        """Pids of the children that spawn consoles run now."""
        pids = set()
        for console in self._consoles.values():
            facts = console.source.describe()
            if facts["type"] == "spawn" and facts.get("running") and facts.get("pid"):
                pids.add(facts["pid"])
        return pids

    # -- changes --------------------------------------------------------------

    def create(
        self, vm_id: str, spec: ConsoleSpec, owner: PtyOwner | None = None
    ) -> Any:
        """Register and start a console.

        ``owner``: the process the policy found holding a pty's master.  The
        pty is then opened only if that very process still holds it, as for a
        restored console, so the number cannot pass to another terminal
        between the check and the open.
        """
        # The vmId becomes a directory name under the state directory: check
        # it here too, whoever the caller is, before the factory touches a path.
        try:
            validate_vm_id(vm_id)
        except SpecError as e:
            raise StatusError(Code.MISS_PARAM, str(e)) from None
        if vm_id in self._consoles:
            raise StatusError(Code.EXIST, f"vmId {vm_id!r} is already registered")
        if vm_id in self._stopping:
            raise StatusError(
                Code.EXIST, f"vmId {vm_id!r} is still being destroyed; retry"
            )
        if self._closed:
            # A create that waited for a destroy must not start a console
            # that nothing would stop.
            raise StatusError(Code.UNEXPECTED, "the server is stopping")
        if owner is not None:
            console = self._factory(vm_id, spec, fresh=True, restored=True, owner=owner)
        else:
            console = self._factory(vm_id, spec, fresh=True)
        self._consoles[vm_id] = console
        try:
            self.save()
        except OSError as e:
            del self._consoles[vm_id]
            raise StatusError(
                Code.UNEXPECTED, f"cannot persist the registry: {e.strerror}"
            ) from None
        console.start()
        if _owner_of(console) is not None:
            # The pty's owner is known once it is attached: record it, or the
            # next start would not reopen the pty.
            try:
                self.save()
            except OSError as e:
                log.error(
                    "console {vm}: cannot record its pty's owner: {err}; after "
                    "a restart it stays down",
                    vm=vm_id,
                    err=e,
                )
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
        waiters = self._stopping[vm_id] = []

        def stopped(result: object) -> object:
            del self._stopping[vm_id]
            for waiter in waiters:
                waiter.callback(None)
            return result

        return console.stop(DESTROYED).addBoth(stopped)

    def when_free(self, vm_id: str) -> defer.Deferred[None]:
        """Fires once no destroyed console of ``vm_id`` is still stopping."""
        waiters = self._stopping.get(vm_id)
        if waiters is None:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        waiters.append(waiter)
        return waiter

    def stop_all(self) -> defer.Deferred[Any]:
        """Stop every console (server shutdown); the registry file stays.

        Their streams are cut, not ended (the consoles come back with the
        server); consoles still stopping after a destroy are waited for.
        """
        self._closed = True
        stops = [c.stop(SERVER_STOPPING) for c in self._consoles.values()]
        stops += [self.when_free(v) for v in list(self._stopping)]
        return defer.gatherResults(stops, consumeErrors=True)

    # -- persistence ----------------------------------------------------------

    def save(self) -> None:
        if self._path is None:
            return
        data = {
            "version": FORMAT_VERSION,
            "consoles": {v: self._entry(c) for v, c in self._consoles.items()},
        }
        tmp = self._path.with_name(self._path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)

    @staticmethod
    def _entry(console: Any) -> dict[str, Any]:
        entry: dict[str, Any] = console.spec.to_wire()
        owner = _owner_of(console)
        if owner is not None:
            entry["owner"] = owner.to_json()
        return entry

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
            owner = None
            if spec.type == "pty":
                recorded = desc.get("owner") if isinstance(desc, dict) else None
                owner = PtyOwner.from_json(recorded)
            refused = self._refusal(spec, owner)
            if refused:
                log.error("console {vm} stays down: {why}", vm=vm_id, why=refused)
                console = self._factory(vm_id, spec, refused=refused, owner=owner)
            elif spec.type == "pty":
                console = self._factory(vm_id, spec, restored=True, owner=owner)
            else:
                console = self._factory(vm_id, spec)
            self._consoles[vm_id] = console
            console.start()
        log.info("restored {n} console(s)", n=len(self._consoles))

    def _refusal(self, spec: ConsoleSpec, owner: PtyOwner | None) -> str:
        """Why the policy no longer allows a restored entry ("" if it does)."""
        if self.policy is None:
            return ""
        try:
            self.policy.check_restored(spec, owner)
        except NotAllowed as e:
            return f"not allowed by the configuration: {e}"
        return ""
