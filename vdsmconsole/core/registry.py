"""vmId -> console and graphics, persisted in the state directory so they
survive restarts.

On disk (``registryfile``): ``<state_dir>/registry.json``, a snapshot, and
``registry.journal``, a line per change, durable before the change answers;
``load`` and ``stop_all`` compact: all in ``registry.json``, the old format.

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

A VM may also have graphics endpoints (``graphics.GraphicsEndpoint``: VNC,
SPICE, RDP), or only those: the file's ``"graphics"`` key maps a vmId to its
endpoints, VNC passwords included, so both files are written mode 0600 (files
without the key still load).  An endpoint the policy no longer allows is
restored *refused*: listed, kept in the file, but ``endpoint`` will not hand
it out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, overload

from twisted.internet import defer
from twisted.logger import Logger

from vdsmconsole.core.console import Console
from vdsmconsole.core.interfaces import DESTROYED, SERVER_STOPPING
from vdsmconsole.core.ptyowner import PtyOwner
from vdsmconsole.core.registryfile import RegistryFile
from vdsmconsole.graphics import GraphicsEndpoint, parse_graphics
from vdsmconsole.spec import (
    ConsoleSpec,
    NotAllowed,
    SpecError,
    parse_console_spec,
    validate_vm_id,
)
from vdsmconsole.status import Code, StatusError, no_vm_message

log = Logger(namespace="vdsmconsole.registry")


class RestorePolicy(Protocol):
    """What a restored entry may still point at (``server.policy.SourcePolicy``)."""

    def check_restored(self, spec: ConsoleSpec, owner: PtyOwner | None) -> None:
        """Raise ``spec.NotAllowed`` if the entry is no longer allowed."""

    def check_graphics(self, endpoint: GraphicsEndpoint) -> None:
        """Raise ``spec.NotAllowed`` if a graphics endpoint is not allowed."""


def _owner_of(console: Console) -> PtyOwner | None:
    """The recorded owner of a console's pty, if its source has one."""
    owner = getattr(getattr(console, "source", None), "owner", None)
    return owner if isinstance(owner, PtyOwner) else None


def _no_console(vm_id: str) -> StatusError:
    return StatusError(Code.NO_CONSOLE, f"VM {vm_id} has no serial console")


class Registry:
    """vmId -> console and graphics endpoints (a VM has either or both).

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

    ``added`` and ``destroyed``: hooks called with the vmId once a VM is
    created or restored (the server's graphics probe), and once it is
    destroyed (its console tokens are revoked).  A hook that raises is logged
    and the others still run.  ``removed``: hooks called with a destroyed
    console the moment it leaves the registry (the metrics keep its counts).
    """

    def __init__(
        self,
        path: Path | None,
        console_factory: Callable[..., Console],
        spawn_commands: Mapping[str, object] | None = None,
        policy: RestorePolicy | None = None,
    ) -> None:
        self._file = RegistryFile(path, self._entry)
        self._factory = console_factory
        self._spawn_commands = spawn_commands or {}
        self.policy = policy
        self._consoles: dict[str, Console] = {}
        self._spawns: dict[str, Console] = {}  # the spawn consoles among them
        self._graphics: dict[str, tuple[GraphicsEndpoint, ...]] = {}
        # vmId -> {type: why} for restored endpoints the policy refuses now.
        self._refused: dict[str, dict[str, str]] = {}
        self.added: list[Callable[[str], None]] = []
        self.destroyed: list[Callable[[str], None]] = []
        self.removed: list[Callable[[Console], None]] = []
        # vmId -> what waits for its destroyed console to have stopped.
        self._stopping: dict[str, list[defer.Deferred[None]]] = {}
        self._closed = False  # stop_all was called: the server stops

    # -- lookups -------------------------------------------------------------

    def ids(self) -> list[str]:
        """Every VM: with a console, graphics or both."""
        return sorted(self._consoles.keys() | self._graphics.keys())

    def consoles(self) -> list[Console]:
        """Every serial console, in the order they were registered."""
        return list(self._consoles.values())

    def has_vm(self, vm_id: str) -> bool:
        return vm_id in self._consoles or vm_id in self._graphics

    def find(self, vm_id: str) -> Console | None:
        """The VM's serial console; None if there is no such VM or console."""
        return self._consoles.get(vm_id)

    def get(self, vm_id: str) -> Console:
        """The VM's serial console: noVM, or noConsole for a graphics-only VM."""
        console = self._consoles.get(vm_id)
        if console is None:
            if vm_id in self._graphics:
                raise _no_console(vm_id)
            raise StatusError(Code.NO_VM, no_vm_message(vm_id))
        return console

    def graphics(self, vm_id: str) -> tuple[GraphicsEndpoint, ...]:
        """The VM's graphics endpoints (``()`` if none); noVM if unknown."""
        if not self.has_vm(vm_id):
            raise StatusError(Code.NO_VM, no_vm_message(vm_id))
        return self._graphics.get(vm_id, ())

    def endpoint(self, vm_id: str, protocol: str) -> GraphicsEndpoint:
        """The VM's endpoint of type ``protocol`` (vnc, spice, rdp).

        noVM for an unknown vmId, noConsole if it has none of that type,
        notAllowed if the configuration no longer allows it (restored).
        """
        for endpoint in self.graphics(vm_id):
            if endpoint.type == protocol:
                why = self.refusal(vm_id, protocol)
                if why:
                    raise StatusError(Code.NOT_ALLOWED, why)
                return endpoint
        raise StatusError(
            Code.NO_CONSOLE, f"VM {vm_id} has no {protocol!r} graphics console"
        )

    def refusal(self, vm_id: str, protocol: str) -> str:
        """Why a restored endpoint is no longer allowed ("" if it is)."""
        return self._refused.get(vm_id, {}).get(protocol, "")

    def __len__(self) -> int:
        """The number of VMs."""
        return len(self._consoles.keys() | self._graphics.keys())

    def spawned_pids(self) -> set[int]:
        """Pids of the children that spawn consoles run now."""
        pids = set()
        for console in self._spawns.values():
            facts = console.source.describe()
            if facts["type"] == "spawn" and facts.get("running") and facts.get("pid"):
                pids.add(facts["pid"])
        return pids

    # -- changes --------------------------------------------------------------

    @overload
    def create(
        self,
        vm_id: str,
        spec: ConsoleSpec,
        owner: PtyOwner | None = None,
        graphics: Iterable[GraphicsEndpoint] = (),
    ) -> Console: ...

    @overload
    def create(
        self,
        vm_id: str,
        spec: None,
        owner: PtyOwner | None = None,
        graphics: Iterable[GraphicsEndpoint] = (),
    ) -> None: ...

    @overload
    def create(
        self,
        vm_id: str,
        spec: ConsoleSpec | None,
        owner: PtyOwner | None = None,
        graphics: Iterable[GraphicsEndpoint] = (),
    ) -> Console | None: ...

    def create(
        self,
        vm_id: str,
        spec: ConsoleSpec | None,
        owner: PtyOwner | None = None,
        graphics: Iterable[GraphicsEndpoint] = (),
    ) -> Console | None:
        """Register a VM and start its console; None for a graphics-only VM.

        ``owner``: the process the policy found holding a pty's master.  The
        pty is then opened only if that very process still holds it, as for a
        restored console, so the number cannot pass to another terminal
        between the check and the open.  ``graphics``: its endpoints, at most
        one of each type, already checked against the policy by the caller.
        A VM needs a console or graphics (missParam otherwise).
        """
        endpoints = _checked_graphics(graphics)
        if spec is None and not endpoints:
            raise StatusError(Code.MISS_PARAM, "a VM needs a console, graphics or both")
        # The vmId becomes a directory name under the state directory: check
        # it here too, whoever the caller is, before the factory touches a path.
        try:
            validate_vm_id(vm_id)
        except SpecError as e:
            raise StatusError(Code.MISS_PARAM, str(e)) from None
        if self.has_vm(vm_id):
            raise StatusError(Code.EXIST, f"vmId {vm_id!r} is already registered")
        if vm_id in self._stopping:
            raise StatusError(
                Code.EXIST, f"vmId {vm_id!r} is still being destroyed; retry"
            )
        if self._closed:
            # A create that waited for a destroy must not start a console
            # that nothing would stop.
            raise StatusError(Code.UNEXPECTED, "the server is stopping")
        console = None
        if spec is None:
            pass
        elif owner is not None:
            console = self._factory(vm_id, spec, fresh=True, restored=True, owner=owner)
        else:
            console = self._factory(vm_id, spec, fresh=True)
        if console is not None:
            self._put(vm_id, console)
        if endpoints:
            self._graphics[vm_id] = endpoints
        try:
            self._persist(vm_id)
        except OSError as e:
            self._drop(vm_id)
            self._graphics.pop(vm_id, None)
            raise StatusError(
                Code.UNEXPECTED, f"cannot persist the registry: {e.strerror}"
            ) from None
        self._run_hooks(self.added, vm_id)
        if console is None:
            return None
        console.start()
        if _owner_of(console) not in (None, owner):
            # The pty's owner is known once it is attached (unless the policy
            # found it, and it is saved already): record it, or the next
            # start would not reopen the pty.
            self._file.forget(vm_id)
            try:
                self._persist(vm_id)
            except OSError as e:
                log.error(
                    "console {vm}: cannot record its pty's owner: {err}; after "
                    "a restart it stays down",
                    vm=vm_id,
                    err=e,
                )
        return console

    def replace_graphics(
        self, vm_id: str, graphics: Iterable[GraphicsEndpoint]
    ) -> None:
        """A VM's graphics from now on (checked by the caller), saved with
        its console as it is now (a reattached pty's owner); OSError."""
        endpoints = _checked_graphics(graphics)
        if endpoints:
            self._graphics[vm_id] = endpoints
        else:
            self._graphics.pop(vm_id, None)
        self._persist(vm_id)
        self._run_hooks(self.added, vm_id)  # the graphics probe

    def destroy(self, vm_id: str) -> defer.Deferred[None]:
        """Forget a VM (console and graphics); its console stops.

        The ``destroyed`` hooks run once it is gone from the file.
        """
        if not self.has_vm(vm_id):
            raise StatusError(Code.NO_VM, no_vm_message(vm_id))
        console = self._drop(vm_id)
        graphics = self._graphics.pop(vm_id, None)
        try:
            self._persist(vm_id)
        except OSError as e:
            # The file still names it and would bring it back at the next
            # start: keep it registered (and running) rather than half-destroy.
            if console is not None:
                self._put(vm_id, console)
            if graphics is not None:
                self._graphics[vm_id] = graphics
            raise StatusError(
                Code.UNEXPECTED, f"cannot persist the registry: {e.strerror}"
            ) from None
        self._refused.pop(vm_id, None)
        if console is not None:
            self._run_hooks(self.removed, console)
        self._run_hooks(self.destroyed, vm_id)
        if console is None:
            return defer.succeed(None)
        waiters = self._stopping[vm_id] = []

        def stopped(result: object) -> object:
            del self._stopping[vm_id]
            for waiter in waiters:
                waiter.callback(None)
            return result

        return console.stop(DESTROYED).addBoth(stopped)

    def _run_hooks(self, hooks: list[Callable[[Any], None]], vm_id: Any) -> None:
        for hook in list(hooks):
            try:
                hook(vm_id)
            except Exception:  # noqa: BLE001 - one hook must not stop the others
                log.failure("registry hook {hook} failed for {vm}", hook=hook, vm=vm_id)

    def when_free(self, vm_id: str) -> defer.Deferred[None]:
        """Fires once no destroyed console of ``vm_id`` is still stopping."""
        waiters = self._stopping.get(vm_id)
        if waiters is None:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        waiters.append(waiter)
        return waiter

    def stop_all(self) -> defer.Deferred[list[None]]:
        """Stop every console (server shutdown); the registry stays, compacted.

        Their streams are cut, not ended (the consoles come back with the
        server); consoles still stopping after a destroy are waited for.
        """
        self._closed = True
        self._compact_quietly()
        stops = [c.stop(SERVER_STOPPING) for c in self._consoles.values()]
        stops += [self.when_free(v) for v in list(self._stopping)]
        return defer.gatherResults(stops, consumeErrors=True)

    # -- persistence ----------------------------------------------------------

    def _put(self, vm_id: str, console: Console) -> None:
        self._consoles[vm_id] = console
        if console.spec.type == "spawn":
            self._spawns[vm_id] = console

    def _drop(self, vm_id: str) -> Console | None:
        self._spawns.pop(vm_id, None)
        return self._consoles.pop(vm_id, None)

    def _persist(self, vm_id: str) -> None:
        """Journal the VM's whole record as it is now, durably; OSError."""
        self._file.change(vm_id, self._consoles.get(vm_id), self._graphics.get(vm_id))
        # Not len(self), a set union per change: this bound is at most it.
        if self._file.due(max(len(self._consoles), len(self._graphics))):
            self._compact_quietly()

    def _compact_quietly(self) -> None:
        """Compact if the journal has records; an error only leaves them."""
        try:
            if self._file.pending():
                self.save()
        except OSError as e:
            log.error("registry: cannot compact (the journal keeps it): {e}", e=e)

    def batch(self) -> AbstractContextManager[None]:
        """Changes inside are durable only once ``sync`` returns (a multicall)."""
        return self._file.held_syncs()

    def sync(self) -> None:
        """Make the changes of ``batch`` durable; OSError."""
        self._file.sync(self._consoles, self._graphics)

    def save(self) -> None:
        """Compact: the whole registry into the snapshot, journal emptied; OSError."""
        self._file.compact(self._consoles, self._graphics)

    @staticmethod
    def _entry(console: Console) -> dict[str, Any]:
        entry: dict[str, Any] = console.spec.to_wire()
        owner = _owner_of(console)
        if owner is not None:
            entry["owner"] = owner.to_json()
        return entry

    def load(self) -> None:
        """Restore every VM the files name and start its console."""
        state = self._file.read()
        if state is None:
            return
        for problem in state.problems:
            log.error("registry: {why}", why=problem)
        self._load_graphics(state.graphics)
        for vm_id, desc in sorted(state.consoles.items()):
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
            refused = self._refusal("check_restored", spec, owner)
            if refused:
                log.error("console {vm} stays down: {why}", vm=vm_id, why=refused)
                console = self._factory(vm_id, spec, refused=refused, owner=owner)
            elif spec.type == "pty":
                console = self._factory(vm_id, spec, restored=True, owner=owner)
            else:
                console = self._factory(vm_id, spec)
            self._put(vm_id, console)
            console.start()
        self._compact_quietly()
        for vm_id in self.ids():
            self._run_hooks(self.added, vm_id)
        log.info(
            "restored {n} console(s), graphics of {g} VM(s)",
            n=len(self._consoles),
            g=len(self._graphics),
        )

    def _load_graphics(self, entries: object) -> None:
        if not isinstance(entries, dict):
            log.error("registry: graphics ignored: not a map of vmIds")
            return
        for vm_id, desc in sorted(entries.items()):
            try:
                validate_vm_id(vm_id)
                endpoints = parse_graphics(desc)
            except SpecError as e:
                # The why never quotes a password (graphics.py's messages).
                log.error("not restoring graphics of {vm}: {why}", vm=vm_id, why=e)
                continue
            if not endpoints:
                continue
            self._graphics[vm_id] = endpoints
            for endpoint in endpoints:
                why = self._refusal("check_graphics", endpoint)
                if why:
                    log.error(
                        "graphics {type} of {vm} refused: {why}",
                        type=endpoint.type,
                        vm=vm_id,
                        why=why,
                    )
                    self._refused.setdefault(vm_id, {})[endpoint.type] = why

    def _refusal(self, check: str, *what: Any) -> str:
        """Why the policy's ``check`` (``check_restored``, ``check_graphics``)
        no longer allows a restored entry, or ""."""
        if self.policy is None:
            return ""
        try:
            getattr(self.policy, check)(*what)
        except NotAllowed as e:
            return f"not allowed by the configuration: {e}"
        return ""


def _checked_graphics(
    graphics: Iterable[GraphicsEndpoint],
) -> tuple[GraphicsEndpoint, ...]:
    """At most one endpoint of each type (parse_graphics made them)."""
    endpoints = tuple(graphics)
    types = [e.type for e in endpoints]
    if len(set(types)) != len(types):
        raise StatusError(Code.MISS_PARAM, "at most one endpoint of each type per VM")
    return endpoints
