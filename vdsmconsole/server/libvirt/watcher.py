"""libvirt's side: one thread runs libvirt's own event loop and hands what
it learns to the reactor.

Why a thread with libvirt's default event loop, not ``virEventRegisterImpl``
over Twisted: libvirt calls block (each is an RPC to libvirtd, up to its
keepalive timeout when libvirtd hangs), so they must stay off the reactor
anyway; the default implementation is the one libvirt tests and documents,
it is registered once per process in one call, and libvirt-python's own
examples run it on a thread.  An implementation of the eight callbacks
over Twisted's readers and timers would be more code to keep right and
would still leave the blocking calls to a thread.  So everything that
touches libvirt runs on this thread (connect, list, XML, callbacks), and
the reactor only receives plain data through ``callFromThread``.

A lost connection (libvirtd restarted, keepalive timeout) is retried with
backoff; consoles already attached do not depend on it and keep streaming.
The connection is read-only: listing domains, their XML and their events
need nothing more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from vdsmconsole.backoff import Backoff
from vdsmconsole.server.libvirt.domxml import DomainConsoles, parse_domain

__all__ = ["LibvirtWatcher"]

log = Logger(namespace="vdsmconsole.libvirt")

_registered = False
_registering = threading.Lock()
# How long one round of libvirt's loop may wait: how soon stop() is seen.
WAKE_MS = 250


def _event_loop_registered(libvirt: Any) -> None:
    """libvirt's default event loop, registered once for the process (it
    must be before the first connection is opened)."""
    global _registered
    with _registering:
        if not _registered:
            # libvirt prints every error to stderr unless told otherwise;
            # the watcher logs what matters, once, in the server's log.
            libvirt.registerErrorHandler(lambda *_: None, None)
            libvirt.virEventRegisterDefaultImpl()
            libvirt.virEventAddTimeout(WAKE_MS, lambda *_: None, None)
            _registered = True


class LibvirtWatcher(threading.Thread):
    """The thread; ``deliver(kind, *args)`` is called on it and must hand the
    work to the reactor (``reactor.callFromThread``).

    kinds: ``("sync", [DomainConsoles of running domains], {uuid: name})``
    after each (re)connection; ``("upsert", DomainConsoles)`` when a domain
    starts; ``("remove", uuid)`` when one is undefined; ``("lost", why)``.
    """

    def __init__(
        self,
        uri: str,
        deliver: Callable[..., None],
        initial: float = 0.5,
        maximum: float = 30.0,
    ) -> None:
        super().__init__(name="libvirt", daemon=True)
        import libvirt  # only when [libvirt] uri is set

        self.libvirt = libvirt
        self.uri = uri
        self.deliver = deliver
        self.backoff = Backoff(initial, maximum)
        self.retry_at = 0.0
        self.connection: Any = None
        self.stopping = threading.Event()
        self.connected = threading.Event()  # for tests and logs
        _event_loop_registered(libvirt)

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        libvirt = self.libvirt
        while not self.stopping.is_set():
            if self.connection is None and time.monotonic() >= self.retry_at:
                self._connect()
            libvirt.virEventRunDefaultImpl()
        if self.connection is not None:
            try:
                self.connection.close()
            except libvirt.libvirtError:
                pass

    def _connect(self) -> None:
        libvirt = self.libvirt
        try:
            connection = libvirt.openReadOnly(self.uri)
            try:
                # A hung libvirtd is noticed within 20 s (remote drivers;
                # local ones, such as test:///, have no keepalive).
                connection.setKeepAlive(5, 3)
            except libvirt.libvirtError:
                pass
            connection.registerCloseCallback(self._closed, None)
            connection.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
            )
            running, every = self._snapshot(connection)
        except libvirt.libvirtError as e:
            self._retry_later(str(e).splitlines()[0] if str(e) else "error")
            return
        self.connection = connection
        self.backoff.reset()
        self.connected.set()
        log.info(
            "libvirt {uri}: connected, {count} domains running",
            uri=self.uri,
            count=len(running),
        )
        self.deliver("sync", running, every)

    def _retry_later(self, why: str) -> None:
        delay = self.backoff.next_delay()
        log.warn(
            "libvirt {uri}: {why}; retrying in {delay:g} s",
            uri=self.uri,
            why=why,
            delay=delay,
        )
        self.retry_at = time.monotonic() + delay

    def _snapshot(self, connection: Any) -> tuple[list[DomainConsoles], dict[str, str]]:
        running, every = [], {}
        for domain in connection.listAllDomains():
            every[domain.UUIDString()] = domain.name()
            found = self._consoles(domain)
            if found is not None:
                running.append(found)
        return running, every

    def _consoles(self, domain: Any) -> DomainConsoles | None:
        """A running domain's consoles; None if it does not run (or went)."""
        try:
            if not domain.isActive():
                return None
            return parse_domain(domain.XMLDesc(0))
        except self.libvirt.libvirtError:
            return None  # gone meanwhile: its own event follows
        except ValueError as e:
            log.warn("libvirt: unreadable domain XML: {error}", error=e)
            return None

    # -- libvirt's callbacks, on this thread --------------------------------

    def _lifecycle(
        self, connection: Any, domain: Any, event: int, detail: int, opaque: Any
    ) -> None:
        libvirt = self.libvirt
        if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
            self.deliver("remove", domain.UUIDString())
        elif event in (
            libvirt.VIR_DOMAIN_EVENT_STARTED,
            libvirt.VIR_DOMAIN_EVENT_RESUMED,
            libvirt.VIR_DOMAIN_EVENT_DEFINED,
        ):
            found = self._consoles(domain)
            if found is not None:
                self.deliver("upsert", found)
        # Stopped, crashed, shut down: the console's source sees its guest go
        # (a pty closes and goes down; a socket reconnects) without us.

    def _closed(self, connection: Any, reason: int, opaque: Any) -> None:
        self.connection = None
        self.connected.clear()
        self.deliver("lost", f"connection closed (reason {reason})")
        self._retry_later("connection lost")
