"""A serial tunnel: the console itself, as a duplex stream without HTTP
framing.

Output goes to the viewer as to any follower (``streams/follower.py``), from
the console's end when the tunnel opens: its own cursor, paused while the
viewer's connection pushes back, ended (the tunnel closed) if it falls
behind everything retained, as a slow stream follower's response is.
Input goes to the guest as a duplex body does (``streams/input.py``): each
read from the viewer whole, with backpressure when the guest takes no
input.  A ``viewer`` role's input is read and dropped: it never reaches
the guest.
"""

from __future__ import annotations

from typing import Any

from vdsmconsole.core.console import Console
from vdsmconsole.core.interfaces import SERVER_STOPPING
from vdsmconsole.server.http.endings import StreamEnd
from vdsmconsole.server.streams.follower import Follower
from vdsmconsole.server.streams.input import BodyWriter
from vdsmconsole.server.tunnels.tunnel import Tunnel


class TunnelFollower(Follower):
    """A follower whose response is the tunnel: its end closes the tunnel."""

    def __init__(self, tunnel: SerialTunnel, console: Console) -> None:
        super().__init__(tunnel.link, console, console.end, follow=True)
        self.tunnel = tunnel

    def end(self, why: StreamEnd) -> None:
        if not self.done:
            self.stop()
            self.tunnel.close(f"console {why.value}")

    def consoleClosed(self, why: str) -> None:
        self.stop()
        if why == SERVER_STOPPING:
            self.tunnel.cut()
        else:
            self.tunnel.close("console destroyed")


class SerialTunnel(Tunnel):
    """Viewer <-> a VM's serial console."""

    follower: TunnelFollower | None = None
    writer: BodyWriter | None = None
    dropped = 0  # input bytes of a viewer role, never sent to the guest

    def begin(self, console: Console, may_type: bool) -> None:
        self.link.accept()
        self.opened(input=may_type)
        follower = self.follower = TunnelFollower(self, console)
        if may_type:
            # The writer pauses and resumes reading the viewer through the
            # request's channel, as it does for a duplex POST.
            self.writer = BodyWriter(self.link.request, console, True, follower)
            self.writer.start()
            self.link.start(self.writer.bodyChunk)
        else:
            self.link.start(self._drop)
        follower.start()

    def _drop(self, data: bytes) -> None:
        self.dropped += len(data)

    def release(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        self.link.unregisterProducer()
        if self.writer is not None:
            self.writer.stop()

    def closeFields(self) -> dict[str, Any]:
        return {"inputDropped": self.dropped} if self.writer is None else {}
