"""The relays under test, each started on the fake guest's pty.

Every peer takes the same pty path and the same PKI (a throwaway CA from
``vdsmconsole.pki.init_pki``: one server and one client certificate, client
certificates required by every relay that can require them) and tells the
client how to reach it.  ``roots()`` names the processes whose CPU counts as
the relay's (their children included), ``bridge_roots()`` those of a helper
the relay needs (websockify's TCP bridge to the pty).
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import ssl
import subprocess
import sys
import time
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.machine import cpu_ns
from vdsmconsole.pki import PkiPaths, init_pki
from vdsmconsole.testing import free_port

PEERS = ("vdsmconsole", "socat", "socat-nodelay", "websockify", "conserver")
LISTENING = re.compile(rb"vdsmconsole listening on [^:\s]+:(\d+)")

# The server's configuration in every run.  The connection caps are out of the
# way (the scale scenario's followers all come from one address and one
# certificate); otherwise the defaults but one: the console
# log keeps 4 x 64 MiB instead of 4 x 8 MiB, more than a 50 MB flood, so that
# a client the machine's load stalls for a moment catches up from the log.
# With the defaults a flood can outrun everything retained while the client
# is stalled, and the server then ends that client's response (it is told
# what it lost when it resumes) rather than hold the guest back: correct, but
# not what the fan-out scenario measures.
VDSMCONSOLE_CONFIG = """\
[console]
log_file_bytes = 67108864
[server]
max_connections_per_address = 100000
max_connections_per_identity = 100000
"""
# The fake guest (bench.guest) is a Python process holding the ptys' masters:
# [sources] allows ptys held by this interpreter, beside qemu's defaults.  A
# --variant checkout older than [sources] (no policy.py, in vdsmconsole/ or,
# since the layout of issue 12, vdsmconsole/server/) gets the
# file without it, which it would refuse as an unknown section.
_OWNERS = ["qemu-system-*", "qemu-kvm", os.path.realpath(sys.executable)]
SOURCES_CONFIG = f"""
[sources]
pty_owners = {json.dumps(_OWNERS)}
"""


def server_config(root: Path | None) -> str:
    """The configuration file for the server of checkout ``root`` (None: this one)."""
    homes = ("vdsmconsole/policy.py", "vdsmconsole/server/policy.py")
    if root is not None and not any((root / home).exists() for home in homes):
        return VDSMCONSOLE_CONFIG
    return VDSMCONSOLE_CONFIG + SOURCES_CONFIG


@dataclass
class Pki:
    paths: PkiPaths
    server_pem: Path  # certificate and key in one file (conserver)
    client_pem: Path

    @property
    def ca(self) -> str:
        return str(self.paths.ca_cert)

    def client(self) -> dict[str, str]:
        return {
            "ca": self.ca,
            "cert": str(self.paths.client_cert),
            "key": str(self.paths.client_key),
        }


def make_pki(root: Path) -> Pki:
    paths = init_pki(root / "pki", hostname="localhost")
    server_pem = root / "server.pem"
    client_pem = root / "client.pem"
    server_pem.write_bytes(
        paths.server_cert.read_bytes() + paths.server_key.read_bytes()
    )
    client_pem.write_bytes(
        paths.client_cert.read_bytes() + paths.client_key.read_bytes()
    )
    os.chmod(server_pem, 0o600)
    os.chmod(client_pem, 0o600)
    return Pki(paths, server_pem, client_pem)


def listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port (per /proc/net/tcp)?"""
    want = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(f[1] == want and f[3] == "0A" for f in (ln.split() for ln in lines))


def wait_for(condition: Any, timeout: float, what: str, proc: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _more_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Peer:
    name = ""
    #: scenario -> why it is not supported (absent: supported)
    unsupported: dict[str, str] = {}

    def __init__(self, workdir: Path, pki: Pki) -> None:
        self.workdir = workdir
        self.pki = pki
        self.procs: list[subprocess.Popen[bytes]] = []
        self.bridge: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], log: str, **kw: Any) -> subprocess.Popen[bytes]:
        out = open(self.workdir / log, "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_more_files,
            **kw,
        )
        out.close()
        self.procs.append(proc)
        return proc

    def start(self, ptys: list[str]) -> None:
        raise NotImplementedError

    def client(self, index: int = 0) -> dict[str, Any]:
        raise NotImplementedError

    def roots(self) -> list[int]:
        return [p.pid for p in self.procs if p is not self.bridge]

    def bridge_roots(self) -> list[int]:
        return [self.bridge.pid] if self.bridge is not None else []

    def log(self) -> str:
        texts = []
        for f in sorted(self.workdir.glob("*.log")):
            texts.append(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}")
        return "\n".join(texts)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()


class VdsmConsole(Peer):
    """The real server, ``python -m vdsmconsole serve``, each pty a console."""

    name = "vdsmconsole"
    #: set to a path to run the server under cProfile (--profile-tool cprofile)
    cprofile: Path | None = None
    #: another checkout's vdsmconsole to run instead (a --variant), or None
    root: Path | None = None
    create_seconds = 0.0  # how long start() took to create the consoles
    create_cpu_seconds = 0.0  # and the server's CPU time meanwhile
    #: connections the creates are spread over (scale --create-clients)
    create_clients = 1
    #: creates per system.multicall request (scale --create-batch); 1: one each
    create_batch = 1
    #: give each console a VNC endpoint on this loopback port (scale)
    graphics_port: int | None = None
    #: configuration appended to the common one (bench.wspeers: [web])
    extra_config = ""

    def start(self, ptys: list[str]) -> None:
        proc = self.serve()
        clients = max(1, min(self.create_clients, len(ptys)))
        rpcs = [self.rpc() for _ in range(clients)]
        for rpc in rpcs:
            rpc.ping()  # connected and handshaken before the clock starts
        t0 = time.monotonic()
        cpu0 = cpu_ns(proc.pid)
        if clients == 1:
            self._create(rpcs[0], ptys, range(len(ptys)))
        else:
            # A burst from several connections at once, as an engine
            # registering a host's VMs from a thread pool would send it.
            with ThreadPoolExecutor(clients) as pool:
                shares = [range(k, len(ptys), clients) for k in range(clients)]
                for done in [
                    pool.submit(self._create, rpc, ptys, share)
                    for rpc, share in zip(rpcs, shares, strict=True)
                ]:
                    done.result()
        self.create_seconds = time.monotonic() - t0  # the creates alone
        cpu1 = cpu_ns(proc.pid)
        if cpu0 is not None and cpu1 is not None:
            self.create_cpu_seconds = (cpu1[0] - cpu0[0]) / 1e9  # the server's

    def _create(
        self, rpc: xmlrpc.client.ServerProxy, ptys: list[str], indexes: range
    ) -> None:
        batch = max(1, self.create_batch)
        wanted = [self._create_params(ptys[i], i) for i in indexes]
        for first in range(0, len(wanted), batch):
            share = wanted[first : first + batch]
            if batch == 1:
                replies: list[Any] = [rpc.create(share[0])]
            else:
                # The burst in one request (system.multicall).
                calls = xmlrpc.client.MultiCall(rpc)
                for params in share:
                    calls.create(params)
                replies = list(calls())
            for reply in replies:
                if reply["status"]["code"] != 0:
                    raise RuntimeError(f"create failed: {reply['status']}")

    def _create_params(self, pty: str, i: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "vmId": self.vm_id(i),
            "console": {"type": "pty", "path": pty},
        }
        if self.graphics_port is not None:
            vnc = {"type": "vnc", "host": "127.0.0.1", "port": self.graphics_port}
            params["graphics"] = [vnc]
        return params

    def serve(self) -> subprocess.Popen[bytes]:
        """Start the server and wait until it listens (``self.port``)."""
        argv = [sys.executable, "-m"]
        if self.cprofile is not None:
            # Profiled between SIGUSR1 and SIGUSR2 (bench.profserve).
            argv += ["bench.profserve", str(self.cprofile)]
        else:
            argv += ["vdsmconsole"]
        config = self.workdir / "vdsmconsole.conf"
        config.write_text(server_config(self.root) + self.extra_config)
        argv += [
            "serve",
            "--config",
            str(config),
            "--pki",
            str(self.pki.paths.root),
            "--state-dir",
            str(self.workdir / "state"),
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
        ]
        log = self.workdir / "server.log"
        here = Path(__file__).resolve().parent.parent
        env = None
        if self.root is not None:
            # That checkout's package first; bench (for profserve) after it.
            env = dict(os.environ, PYTHONPATH=f"{self.root}{os.pathsep}{here}")
        proc = self.spawn(argv, "server.log", cwd=self.root or here, env=env)

        def port() -> int | None:
            found = LISTENING.search(log.read_bytes()) if log.exists() else None
            return int(found.group(1)) if found else None

        self.port = wait_for(port, 30, "vdsmconsole to listen", proc)
        return proc

    @staticmethod
    def vm_id(index: int) -> str:
        return f"bench-{index}"

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.pki.ca)
        ctx.load_cert_chain(
            str(self.pki.paths.client_cert), str(self.pki.paths.client_key)
        )
        return ctx

    def rpc(self) -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy(
            f"https://127.0.0.1:{self.port}/RPC2", context=self.context()
        )

    def client(self, index: int = 0) -> dict[str, Any]:
        return {
            "kind": "http",
            "host": "127.0.0.1",
            "port": self.port,
            "path": f"/consoleStream/{self.vm_id(index)}",
            **self.pki.client(),
        }


class Socat(Peer):
    """The C baseline: TLS straight onto the pty, a child per connection."""

    name = "socat"
    unsupported = {
        "fanout": "not supported: a forked reader per client splits the stream",
    }

    #: appended to the OPENSSL-LISTEN address (SocatNodelay)
    listen_options = ""

    @staticmethod
    def target(path: str) -> str:
        """socat's address of what the relay serves (the guest's pty)."""
        return f"FILE:{path},raw,echo=0"

    def start(self, ptys: list[str]) -> None:
        held = free_port()  # socat's reuseaddr binds it while we hold it
        self.port = held.port
        p = self.pki.paths
        proc = self.spawn(
            [
                "socat",
                f"OPENSSL-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork,"
                f"cert={p.server_cert},key={p.server_key},cafile={p.ca_cert},verify=1"
                + self.listen_options,
                self.target(ptys[0]),
            ],
            "socat.log",
        )
        try:
            wait_for(lambda: listening(self.port), 10, "socat to listen", proc)
        finally:
            held.release()

    def client(self, index: int = 0) -> dict[str, Any]:
        return {
            "kind": "raw",
            "host": "127.0.0.1",
            "port": self.port,
            **self.pki.client(),
        }


class SocatNodelay(Socat):
    """socat as an operator tuning it for typing would run it: ``nodelay``
    on the TLS socket, so that Nagle does not hold a small write back
    (socat sets no ``TCP_NODELAY`` by default, and its echo p99 is then
    Nagle's and delayed ACK's ~40 ms).  Only where that matters."""

    name = "socat-nodelay"
    listen_options = ",nodelay"
    unsupported = {
        scenario: "measured in latency and echo only (Nagle matters there)"
        for scenario in ("bulk", "fanout", "trickle", "scale")
    }


class Websockify(Peer):
    """Debian's websockify, --ssl-only, over a socat TCP bridge to the pty."""

    name = "websockify"
    unsupported = {
        "fanout": "not supported: a bridge connection (a forked reader) per "
        "client splits the stream",
    }

    def start(self, ptys: list[str]) -> None:
        held = free_port()
        self.port = held.port
        target = self.target(ptys)
        # Released just before websockify binds it: it may not set SO_REUSEADDR.
        held.release()
        p = self.pki.paths
        proc = self.spawn(
            [
                "websockify",
                "--ssl-only",
                f"--cert={p.server_cert}",
                f"--key={p.server_key}",
                "--verify-client",
                f"--cafile={p.ca_cert}",
                f"127.0.0.1:{self.port}",
                target,
            ],
            "websockify.log",
        )
        wait_for(lambda: listening(self.port), 20, "websockify to listen", proc)

    def target(self, ptys: list[str]) -> str:
        """What websockify relays to: a socat TCP bridge to the pty (its
        CPU counted as the bridge's)."""
        bridge = free_port()  # the bridge's reuseaddr binds it while held
        bridge_port = bridge.port
        self.bridge = self.spawn(
            [
                "socat",
                f"TCP-LISTEN:{bridge_port},bind=127.0.0.1,reuseaddr,fork",
                f"FILE:{ptys[0]},raw,echo=0",
            ],
            "bridge.log",
        )
        try:
            wait_for(lambda: listening(bridge_port), 10, "the bridge", self.bridge)
        finally:
            bridge.release()
        return f"127.0.0.1:{bridge_port}"

    def client(self, index: int = 0) -> dict[str, Any]:
        return {
            "kind": "ws",
            "host": "127.0.0.1",
            "port": self.port,
            **self.pki.client(),
        }


class Conserver(Peer):
    """Debian's conserver in the foreground, and its ``console`` client."""

    name = "conserver"

    def start(self, ptys: list[str]) -> None:
        held = free_port()
        self.port = held.port
        cf = self.workdir / "conserver.cf"
        consoles = "\n".join(
            f"console guest{i} {{ type device; device {path}; baud 115200; "
            "parity none; }"
            for i, path in enumerate(ptys)
        )
        cf.write_text(
            f"""config * {{
    sslcredentials {self.pki.server_pem};
    sslcacertificatefile {self.pki.ca};
    sslreqclientcert yes;
    sslrequired yes;
}}
default full {{ rw *; }}
default * {{ logfile ""; timestamp ""; include full; master 127.0.0.1; }}
access * {{ trusted 127.0.0.1; }}
{consoles}
"""
        )
        passwd = self.workdir / "conserver.passwd"
        passwd.write_text("")
        self.client_cf = self.workdir / "console.cf"
        self.client_cf.write_text(
            f"""config * {{
    master 127.0.0.1;
    port {self.port};
    sslcredentials {self.pki.client_pem};
    sslcacertificatefile {self.pki.ca};
    sslrequired yes;
}}
"""
        )
        # Released just before conserver binds it: it may not set SO_REUSEADDR.
        held.release()
        proc = self.spawn(
            [
                "conserver",
                "-C",
                str(cf),
                "-P",
                str(passwd),
                "-p",
                str(self.port),
                "-M",
                "127.0.0.1",
            ],
            "conserver.log",
        )
        wait_for(lambda: listening(self.port), 10, "conserver to listen", proc)
        time.sleep(0.2)  # its group children start listening a moment later

    def client(self, index: int = 0) -> dict[str, Any]:
        return {
            "kind": "conserver",
            "argv": ["console", "-n", "-C", str(self.client_cf), f"guest{index}"],
        }


class Direct(Peer):
    """No relay: the client reads the pty itself (what the device costs)."""

    name = "pty"

    def start(self, ptys: list[str]) -> None:
        self.path = ptys[0]

    def client(self, index: int = 0) -> dict[str, Any]:
        return {"kind": "pty", "path": self.path}


def make_peer(
    name: str, workdir: Path, pki: Pki, variants: dict[str, Path] | None = None
) -> Peer:
    """A peer by name; ``vdsmconsole@LABEL`` runs the server of a --variant."""
    base, _, label = name.partition("@")
    peer = PEER_CLASSES[base](workdir, pki)
    if label:
        assert isinstance(peer, VdsmConsole)
        peer.name = name
        peer.root = (variants or {})[label]
    return peer


def unsupported(name: str, scenario: str) -> str | None:
    return PEER_CLASSES[name.partition("@")[0]].unsupported.get(scenario)


PEER_CLASSES: dict[str, type[Peer]] = {
    c.name: c for c in (VdsmConsole, Socat, SocatNodelay, Websockify, Conserver, Direct)
}

# command -> Debian package, per peer
NEEDS: dict[str, dict[str, str]] = {
    "vdsmconsole": {},
    "pty": {},
    "socat": {"socat": "socat"},
    "socat-nodelay": {"socat": "socat"},
    "websockify": {"websockify": "websockify", "socat": "socat"},
    "conserver": {"conserver": "conserver-server", "console": "conserver-client"},
}
