"""Writing small pieces at once rather than at the reactor's next poll.

Twisted's file-descriptor transports queue every write and send it when the
reactor next finds the descriptor writable: two ``epoll_ctl`` calls and a
reactor round per write.  For keystrokes to a guest and the small TLS records
of an echo or a trickling console that round is most of the cost (see
docs/benchmarks.rst), so a write that finds nothing queued goes to the
kernel at once, and only what the kernel does not take is queued.  Large
writes (bulk output, TLS records of 16 KiB) are still gathered and sent
together at the next poll, which is cheaper for them.
"""

from __future__ import annotations

from twisted.internet import abstract, tcp

__all__ = ["EAGER_MAX", "EagerServer", "write_at_once"]

# The largest write sent at once; a full TLS record (16 KiB and its framing)
# is larger, so bulk output keeps being gathered.
EAGER_MAX = 8 * 1024


def write_at_once(transport: abstract.FileDescriptor, data: bytes) -> bytes:
    """Send ``data`` now if nothing is queued before it; return what is left."""
    if (
        data
        and transport.connected
        and not transport.disconnecting
        and not transport._tempDataLen
        and transport.offset >= len(transport.dataBuffer)
    ):
        written = transport.writeSomeData(data)
        if isinstance(written, int) and written > 0:
            return data[written:]
    return data


class EagerServer(tcp.Server):
    """An accepted TCP connection that sends small writes at once."""

    def write(self, data: bytes) -> None:
        if len(data) <= EAGER_MAX:
            data = write_at_once(self, data)
            if not data:
                return
        super().write(data)
