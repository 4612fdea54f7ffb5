"""Helpers for the stream tests: a server with a demo guest, curl, raw clients."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path

from tests.serverproc import ServerProcess, client_context, wait_for
from tests.tools import require_tool
from vdsmconsole.demoguest import _flood_bytes

# The demo guest without its heartbeat: its output is then only its boot log
# and what the tests type, so a test can say exactly what the guest wrote.
DEMO_CONFIG = f"""
[spawn.commands]
demo = ["{sys.executable}", "-m", "vdsmconsole.demoguest", "--fast",
        "--heartbeat", "86400"]
mute = ["/bin/sleep", "100000"]
"""
PROMPT = b"demo# "


def flood_output(command: str, size: int) -> bytes:
    """What the demo guest writes for ``flood <size>`` typed at its prompt: the
    echo of the line, the flood itself, and the next prompt."""
    flood = b"".join(_flood_bytes(size))
    tail = b"" if flood.endswith(b"\n") or not flood else b"\r\n"
    return command.encode() + b"\r\n" + flood + tail + PROMPT


def create_demo(server: ServerProcess, vm_id: str, command: str = "demo") -> None:
    result = server.rpc().create(
        {"vmId": vm_id, "console": {"type": "spawn", "command": command}}
    )
    assert result["status"]["code"] == 0, result
    if command == "demo":
        wait_for(lambda: PROMPT in console_bytes(server, vm_id), 15, "the prompt")


def console_bytes(
    server: ServerProcess, vm_id: str, start: int | None = None, end: int | None = None
) -> bytes:
    """What the console retains from ``start`` (by default its first offset:
    0, or above for a vmId created again) to ``end``, via consoleRead."""
    proxy = server.rpc()
    out = bytearray()
    offset = stats(server, vm_id)["firstOffset"] if start is None else start
    while end is None or offset < end:
        want = 1024 * 1024 if end is None else min(1024 * 1024, end - offset)
        reply = proxy.consoleRead(vm_id, offset, want)
        assert reply["status"]["code"] == 0, reply
        assert reply["lost"] == 0, reply
        data = reply["data"].data
        if not data:
            break
        out += data
        offset = reply["nextOffset"]
    return bytes(out)


def at_prompt(server: ServerProcess, vm_id: str) -> bool:
    """Whether the demo guest's output ends with its prompt.

    One read of the newest bytes: while a flood runs, the retained window can
    move past the offset asked for (a small log rotates away between two
    calls), and that only means the guest is not at its prompt yet.
    """
    end = stats(server, vm_id)["nextOffset"]
    reply = server.rpc().consoleRead(vm_id, max(0, end - len(PROMPT)), 4096)
    assert reply["status"]["code"] == 0, reply
    return reply["lost"] == 0 and reply["data"].data == PROMPT


def stats(server: ServerProcess, vm_id: str) -> dict:
    reply = server.rpc().getVmStats(vm_id)
    assert reply["status"]["code"] == 0, reply
    return reply["statsList"][0]


def type_into(server: ServerProcess, vm_id: str, text: str) -> None:
    reply = server.rpc().consoleWrite(vm_id, xmlrpc.client.Binary(text.encode()))
    assert reply["status"]["code"] == 0, reply


def curl_base(server: ServerProcess) -> list[str]:
    pki = server.pki
    return [
        "curl",
        "-sS",
        "--cacert",
        str(pki.ca_cert),
        "--cert",
        str(pki.client_cert),
        "--key",
        str(pki.client_key),
    ]


def wget_argv(server: ServerProcess, path: str) -> list[str]:
    """wget following ``path`` on the server's port with the client
    certificate, the body to stdout (wget skips the test if it is missing)."""
    pki = server.pki
    return [
        require_tool("wget", "wget"),
        "-q",
        "-O",
        "-",
        f"--certificate={pki.client_cert}",
        f"--private-key={pki.client_key}",
        f"--ca-certificate={pki.ca_cert}",
        server.url(path),
    ]


def wget_follow(
    server: ServerProcess, path: str, readers: Callable[..., Reader], out: Path
) -> Reader:
    """A wget following ``path`` (``/consoleStream/<vmId>?...``) in the
    background, started with the ``readers`` fixture (which stops it), its
    output in ``out``."""
    return readers(wget_argv(server, path), out)


def tls_socket(server: ServerProcess, timeout: float = 10) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return client_context(server.pki).wrap_socket(sock, server_hostname="localhost")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Reader:
    """A background process whose stdout goes to a file the test can poll.

    It runs in a process group of its own, so that stop() also ends what a
    shell pipeline started (a curl still following after ``head`` is done).
    """

    def __init__(self, argv: list[str], out: Path, shell: bool = False) -> None:
        self.out = out
        with open(out, "wb") as f:
            self.process = subprocess.Popen(
                argv,
                stdout=f,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                shell=shell,
                start_new_session=True,
            )

    def data(self) -> bytes:
        return self.out.read_bytes()

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # its group: our child's id
        self.process.wait(10)
