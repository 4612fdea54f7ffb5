"""Websocket implementations side by side: server->client binary throughput.

Which websocket library the server uses (issue 14) is chosen on features and
on this: the same Twisted web site on loopback TLS 1.3 sends ``--mb`` MiB as
64 KiB binary messages to one client, under backpressure (a push producer on
the transport), with

- ``twisted``: Twisted's own ``twisted.web.websocket`` (on wsproto);
- ``autobahn``: autobahn's ``autobahn.twisted`` resource and protocol.

The client is the same for both (the ``websockets`` library, in this
process).  The server runs in a child process; its CPU (user + system, from
``/proc/<pid>/stat``) is read when the client has the first message and when
it has the last.  Runs alternate between the implementations.

    python -m bench.wsimpl --mb 200 --runs 3
"""

from __future__ import annotations

import argparse
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MESSAGE = 64 * 1024


def serve(impl: str, pki_root: str, total: int) -> None:
    """The child: one site on an ephemeral port, printing the port."""
    from twisted.internet import reactor
    from twisted.internet import ssl as tssl
    from twisted.internet.interfaces import IPushProducer
    from twisted.web import resource, server
    from zope.interface import implementer

    payload = bytes(range(256)) * (MESSAGE // 256)
    root = resource.Resource()

    @implementer(IPushProducer)
    class Pump:
        def __init__(self, send, close) -> None:
            self.send, self.close = send, close
            self.left = total
            self.paused = False

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False
            self.run()

        def stopProducing(self) -> None:
            self.left = 0

        def run(self) -> None:
            while not self.paused and self.left > 0:
                self.left -= MESSAGE
                self.send(payload)
            if self.left <= 0 and not self.paused:
                self.left = -1
                self.close()

    if impl == "twisted":
        from twisted.web.websocket import WebSocketResource

        class Proto:
            def negotiationStarted(self, transport) -> None:
                self.transport = transport

            def negotiationFinished(self) -> None:
                pump = Pump(
                    self.transport.sendBytesMessage, self.transport.loseConnection
                )
                # The HTTP channel is still the transport's producer: Twisted's
                # attachProducer fails until it is unregistered (26.10).
                self.transport.transport.unregisterProducer()
                self.transport.attachProducer(pump)
                pump.run()

            def bytesMessageReceived(self, data) -> None: ...
            def textMessageReceived(self, data) -> None: ...
            def pongReceived(self, data) -> None: ...
            def connectionLost(self, reason) -> None: ...

        class Factory:
            def buildProtocol(self, request) -> Proto:
                return Proto()

        root.putChild(b"ws", WebSocketResource(Factory()))
    else:
        from autobahn.twisted.resource import WebSocketResource as ABResource
        from autobahn.twisted.websocket import (
            WebSocketServerFactory,
            WebSocketServerProtocol,
        )

        class ABProto(WebSocketServerProtocol):
            def onOpen(self) -> None:
                pump = Pump(
                    lambda data: self.sendMessage(data, isBinary=True),
                    self.sendClose,
                )
                # As above: the hijacked HTTP channel is still registered.
                self.transport.unregisterProducer()
                self.transport.registerProducer(pump, True)
                pump.run()

        factory = WebSocketServerFactory()
        factory.protocol = ABProto
        root.putChild(b"ws", ABResource(factory))

    pki = Path(pki_root)
    context = tssl.DefaultOpenSSLContextFactory(
        str(pki / "keys/vdsmkey.pem"), str(pki / "certs/vdsmcert.pem")
    )
    port = reactor.listenSSL(0, server.Site(root), context, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(impl: str, pki_root: Path, total: int) -> tuple[float, float]:
    """(MB/s, server CPU ms per MB) of one transfer."""
    from websockets.sync.client import connect

    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.wsimpl",
            "--serve",
            impl,
            str(pki_root),
            str(total),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        tls = ssl.create_default_context(cafile=str(pki_root / "certs/cacert.pem"))
        with connect(
            f"wss://127.0.0.1:{port}/ws", ssl=tls, max_size=None, compression=None
        ) as ws:
            got = len(ws.recv())
            start, cpu0 = time.perf_counter(), cpu_seconds(child.pid)
            while got < total:
                got += len(ws.recv())
            elapsed = time.perf_counter() - start
            cpu = cpu_seconds(child.pid) - cpu0
        mb = (total - MESSAGE) / 1e6
        return mb / elapsed, cpu * 1000 / mb
    finally:
        child.kill()
        child.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]))
        return
    from vdsmconsole.pki import init_pki

    total = args.mb * 1024 * 1024
    results: dict[str, list[tuple[float, float]]] = {"twisted": [], "autobahn": []}
    with tempfile.TemporaryDirectory() as tmp:
        pki = init_pki(Path(tmp) / "pki", hostname="localhost")
        for _ in range(args.runs):
            for impl in results:
                results[impl].append(one_run(impl, pki.root, total))
    print(f"{args.mb} MiB as 64 KiB binary messages, server->client, TLS, loopback")
    print(f"{'implementation':<16}{'MB/s (median)':>16}{'CPU ms/MB (median)':>22}")
    for impl, runs in results.items():
        rate = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(f"{impl:<16}{rate:>16.1f}{cpu:>22.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
