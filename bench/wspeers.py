"""The relays of the websocket and tunnel scenarios, each in front of the fake
graphics endpoint (``bench/endpoint.py``, a TCP server) instead of a pty.

- ``ws-*``: vdsmconsole's web listener, ``/websockify?token=T`` with a token
  from ``remoteConsole`` for the VM's ``rdp`` endpoint, against Debian's
  websockify (``--ssl-only``, client certificates required) pointed straight
  at the endpoint: no bridge, as for a VNC server.
- ``tunnel-*``: vdsmconsole's ``CONNECT /consoleTunnel/<vmId>?protocol=rdp``
  on the mTLS port against socat's ``OPENSSL-LISTEN ... TCP:`` relay.

Why ``rdp``: websockify and socat relay raw bytes, and so does vdsmconsole
for an ``rdp`` (or ``spice``) endpoint.  A ``vnc`` endpoint goes through the
same relay, raw too unless it has a password or the token is a viewer's: then
the server runs the RFB handshake itself and parses the viewer's messages,
work websockify does not do.  The endpoint still talks as a VNC server (it
greets first), which the relays do not look at.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.peers import Peer, Pki, Socat, VdsmConsole, Websockify, wait_for

PROTOCOL = "rdp"  # raw bytes both ways, as websockify and socat relay them
WEB_LISTENING = re.compile(rb"vdsmconsole web listening on [^:\s]+:(\d+)")
ORIGIN = "https://localhost"  # the web listener's own name, as Host says


def _endpoint_port(targets: list[str]) -> int:
    return int(targets[0].rpartition(":")[2])


class _VdsmGraphics(VdsmConsole):
    """The server with one VM whose only console is an ``rdp`` endpoint."""

    def start(self, ptys: list[str]) -> None:
        self.serve()
        reply = self.rpc().create(
            {
                "vmId": self.vm_id(0),
                "graphics": [
                    {
                        "type": PROTOCOL,
                        "host": "127.0.0.1",
                        "port": _endpoint_port(ptys),
                    }
                ],
            }
        )
        if reply["status"]["code"] != 0:
            raise RuntimeError(f"create failed: {reply['status']}")


class VdsmWebsocket(_VdsmGraphics):
    """``/websockify?token=T`` on the ``[web]`` listener (binary messages)."""

    extra_config = "[web]\nenabled = true\nport = 0\n"

    def start(self, ptys: list[str]) -> None:
        super().start(ptys)
        log = self.workdir / "server.log"

        def port() -> int | None:
            found = WEB_LISTENING.search(log.read_bytes())
            return int(found.group(1)) if found else None

        self.web_port = wait_for(port, 30, "the web listener", self.procs[0])
        reply = self.rpc().remoteConsole(self.vm_id(0), PROTOCOL, {"ttl": 3600})
        if reply["status"]["code"] != 0:
            raise RuntimeError(f"remoteConsole failed: {reply['status']}")
        self.token = reply["console"]["token"]

    def client(self, index: int = 0) -> dict[str, Any]:
        return {
            "kind": "ws",
            "host": "127.0.0.1",
            "port": self.web_port,
            "path": f"/websockify?token={self.token}",
            "origin": ORIGIN,
            **self.pki.client(),
        }


class VdsmTunnel(_VdsmGraphics):
    """``CONNECT /consoleTunnel/<vmId>?protocol=rdp`` on the mTLS port."""

    def client(self, index: int = 0) -> dict[str, Any]:
        return {
            "kind": "tunnel",
            "host": "127.0.0.1",
            "port": self.port,
            "path": f"/consoleTunnel/{self.vm_id(0)}?protocol={PROTOCOL}",
            **self.pki.client(),
        }


class WebsockifyTcp(Websockify):
    """Debian's websockify, --ssl-only, client certificates, straight to TCP."""

    unsupported: dict[str, str] = {}

    def target(self, ptys: list[str]) -> str:
        return ptys[0]  # the endpoint's host:port


class SocatTcp(Socat):
    """socat's TLS relay to TCP: ``OPENSSL-LISTEN ... TCP:``, a child each."""

    unsupported: dict[str, str] = {}

    @staticmethod
    def target(path: str) -> str:
        return f"TCP:{path}"  # the endpoint's host:port


#: scenario family -> peer name -> class
FAMILIES: dict[str, dict[str, type[Peer]]] = {
    "ws": {"vdsmconsole": VdsmWebsocket, "websockify": WebsockifyTcp},
    "tunnel": {"vdsmconsole": VdsmTunnel, "socat": SocatTcp},
}


def make_endpoint_peer(
    family: str, name: str, workdir: Path, pki: Pki, variants: dict[str, Path]
) -> Peer:
    """A peer of ``family`` by name; ``vdsmconsole@LABEL`` runs a --variant."""
    base, _, label = name.partition("@")
    peer = FAMILIES[family][base](workdir, pki)
    if label:
        assert isinstance(peer, VdsmConsole)
        peer.name = name
        peer.root = variants[label]
    return peer
