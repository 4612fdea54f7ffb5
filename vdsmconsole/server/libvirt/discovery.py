"""The reactor's side of libvirt discovery: what the watcher thread learns,
applied to the registry.

A running domain's serial console and graphics are registered under its
UUID; a domain that starts again elsewhere (a new pty, a new VNC port) has
its console reattached there (``Console.reattach``: the streams that
followed it carry on, at growing offsets) and its graphics replaced; an
undefined domain is destroyed; a domain that stops needs nothing (its pty
console goes down, and, being ``revivable``, keeps its followers waiting
for the next start; a socket console reconnects).  A VM registered by hand under a
domain's UUID is left alone: hand and libvirt consoles live side by side,
and each keeps to its own.  The UUIDs libvirt registered are kept in
``<state_dir>/libvirt.json``, so that after a restart the first sync knows
them from hand-registered ones.  What the ``[sources]`` policy refuses is
not registered (one log line and an audit record, as for ``create``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from vdsmconsole.core.interfaces import SourceState
from vdsmconsole.core.ptyowner import PtyOwner
from vdsmconsole.graphics import GraphicsEndpoint
from vdsmconsole.server.libvirt.domxml import DomainConsoles
from vdsmconsole.spec import ConsoleSpec, NoSuchSource, NotAllowed
from vdsmconsole.status import Code, StatusError

__all__ = ["IDENTITY", "LibvirtDiscovery"]

log = Logger(namespace="vdsmconsole.libvirt")
IDENTITY = "libvirt"  # who the audit log says did it


class LibvirtDiscovery:
    def __init__(
        self,
        registry: Any,
        policy: Any,
        audit: Any,
        path: Path | None,
        reactor: Any,
        sources: Callable[[ConsoleSpec, PtyOwner | None], Any] | None = None,
    ) -> None:
        self.registry = registry
        self.sources = sources  # a new source for a console that moved
        self.policy = policy
        self.audit = audit
        self.path = path
        self.reactor = reactor
        self.managed: set[str] = self._load()
        self.names: dict[str, str] = {}  # uuid -> domain name
        self._replacing: dict[str, DomainConsoles] = {}  # newest wanted
        self._left_alone: set[str] = set()  # hand-registered, logged once

    def deliver(self, kind: str, *args: Any) -> None:
        """From the watcher's thread: run ``kind`` in the reactor."""
        self.reactor.callFromThread(getattr(self, f"on_{kind}"), *args)

    # -- what the watcher reports -------------------------------------------

    def alias(self, vm_id: str) -> str:
        """The domain name of a VM libvirt registered ("" for any other)."""
        return self.names.get(vm_id, "") if vm_id in self.managed else ""

    def on_sync(self, running: list[DomainConsoles], every: dict[str, str]) -> None:
        """After a (re)connection: drop what was undefined meanwhile, bring
        the running domains in.  ``every``: each domain's UUID to its name."""
        self.names.update(every)
        for uuid in sorted(self.managed - every.keys()):
            self.on_remove(uuid)
        for uuid in self.managed:
            self._revivable(uuid)  # brought back by the registry at start
        for domain in running:
            self.on_upsert(domain)

    def on_upsert(self, domain: DomainConsoles) -> None:
        uuid, registry = domain.uuid, self.registry
        self.names[uuid] = domain.name
        if uuid in self._replacing:
            self._replacing[uuid] = domain  # the newest wins once it is free
            return
        if registry.has_vm(uuid) and uuid not in self.managed:
            if uuid not in self._left_alone:
                self._left_alone.add(uuid)
                log.info(
                    "libvirt domain {name} ({uuid}) is registered by hand: left alone",
                    name=domain.name,
                    uuid=uuid,
                )
            return
        if uuid in self.managed and registry.has_vm(uuid):
            if self._current(uuid, domain):
                return
            if registry.find(uuid) is not None and self._reattach(domain):
                return
            self._replacing[uuid] = domain
            registry.destroy(uuid)
            registry.when_free(uuid).addCallback(lambda _: self._replaced(uuid))
            return
        self._create(domain)

    def on_remove(self, uuid: str) -> None:
        """The domain was undefined: its VM goes."""
        self._replacing.pop(uuid, None)
        if uuid not in self.managed:
            return
        self.managed.discard(uuid)
        self._save()
        if self.registry.has_vm(uuid):
            self.registry.destroy(uuid)
            self.audit.record("destroy", IDENTITY, vmId=uuid)

    def refuse_by_hand(self, vm_id: str, what: str) -> None:
        """StatusError (notAllowed) for ``create``/``destroy`` by RPC of a VM
        that libvirt registered: its domain says what it is."""
        if vm_id in self.managed:
            name = self.names.get(vm_id, "")
            domain = f"domain {name!r}" if name else "its domain"
            raise StatusError(
                Code.NOT_ALLOWED,
                f"VM {vm_id} is registered from libvirt ({domain}): {what} "
                "the domain with libvirt instead",
            )

    def on_lost(self, why: str) -> None:
        log.warn("libvirt: {why}; consoles keep streaming", why=why)

    # -- the registry ---------------------------------------------------------

    def _current(self, uuid: str, domain: DomainConsoles) -> bool:
        """Whether the registered VM is what the domain says, and alive: a
        pty console that went down is never reopened, even on the same path
        (pty numbers are reused at once), so it is replaced."""
        console = self.registry.find(uuid)
        spec = console.spec if console is not None else None
        if spec != domain.console:
            return False
        if set(self.registry.graphics(uuid)) != set(domain.graphics):
            return False
        return not (
            console is not None
            and console.spec.type == "pty"
            and console.state == SourceState.DOWN
        )

    def _revivable(self, uuid: str) -> None:
        console = self.registry.find(uuid)
        if console is not None:
            console.revivable = True

    def _reattach(self, domain: DomainConsoles) -> bool:
        """The domain's console moved: reattach it (False if it has none
        now, or one [sources] refuses: then it is registered anew)."""
        spec, owner, graphics = self._allowed(domain)
        if spec is None or self.sources is None:
            return False
        uuid = domain.uuid
        console = self.registry.get(uuid)

        def attached(_: object) -> None:
            try:
                self.registry.replace_graphics(uuid, graphics)
            except OSError as e:
                log.error("cannot save the registry: {error}", error=e)

        console.reattach(spec, self.sources(spec, owner)).addCallback(attached)
        asked = self._asked(domain, spec, graphics)
        self.audit.record("reattach", IDENTITY, **asked)
        return True

    def _allowed(
        self, domain: DomainConsoles
    ) -> tuple[ConsoleSpec | None, PtyOwner | None, list[GraphicsEndpoint]]:
        """What ``[sources]`` allows of the domain's console and graphics;
        each refusal is a log line and an audit record."""
        uuid, spec, owner = domain.uuid, domain.console, None
        refusals = []
        if spec is not None:
            try:
                owner = self.policy.check(spec, self.registry.spawned_pids())
            except (NotAllowed, NoSuchSource) as e:
                refusals.append(str(e))
                spec = None
        graphics = []
        for endpoint in domain.graphics:
            try:
                self.policy.check_graphics(endpoint)
                graphics.append(endpoint)
            except NotAllowed as e:
                refusals.append(str(e))
        for why in refusals:
            log.warn(
                "libvirt domain {name} ({uuid}): {why}",
                name=domain.name,
                uuid=uuid,
                why=why,
            )
            self.audit.record("refused", IDENTITY, vmId=uuid, reason=why)
        return spec, owner, graphics

    @staticmethod
    def _asked(
        domain: DomainConsoles,
        spec: ConsoleSpec | None,
        graphics: list[GraphicsEndpoint],
    ) -> dict[str, Any]:
        """The audit record's fields: never a password."""
        asked: dict[str, Any] = {"vmId": domain.uuid, "name": domain.name}
        if spec is not None:
            asked["console"] = spec.to_wire()
        if graphics:
            asked["graphics"] = [e.public() for e in graphics]
        return asked

    def _replaced(self, uuid: str) -> None:
        domain = self._replacing.pop(uuid, None)
        if domain is None:
            return  # undefined meanwhile
        self.managed.discard(uuid)
        self._create(domain)

    def _create(self, domain: DomainConsoles) -> None:
        uuid = domain.uuid
        spec, owner, graphics = self._allowed(domain)
        if spec is None and not graphics:
            return
        try:
            self.registry.create(uuid, spec, owner=owner, graphics=graphics)
        except StatusError as e:
            log.warn("libvirt domain {uuid}: {error}", uuid=uuid, error=e)
            return
        self.managed.add(uuid)
        self._save()
        self._revivable(uuid)
        self.audit.record("create", IDENTITY, **self._asked(domain, spec, graphics))

    # -- libvirt.json -----------------------------------------------------------

    def _load(self) -> set[str]:
        if self.path is None:
            return set()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as e:
            log.warn("cannot read {path}: {error}", path=self.path, error=e)
            return set()
        managed = data.get("managed") if isinstance(data, dict) else None
        if not isinstance(managed, list):
            return set()
        return {uuid for uuid in managed if isinstance(uuid, str)}

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"managed": sorted(self.managed)}, f)
                f.write("\n")
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("cannot write {path}: {error}", path=self.path, error=e)
