"""What the command line's end-to-end tests share: running vdsmconsole-client
against a server with demo consoles."""

from __future__ import annotations

import shlex
import subprocess
import sys

from tests.serverproc import wait_for

PROG = "vdsmconsole-client"


CLIENT = [sys.executable, "-m", "vdsmconsole.client.cli"]


# No heartbeat: the guest's output is only what the tests type.
DEMO_CONFIG = (
    "[spawn.commands]\n"
    f'demo = ["{sys.executable}", "-m", "vdsmconsole.demoguest", "--fast",'
    ' "--heartbeat", "86400"]\n'
)


def client_args(server, pki, *args: str) -> list[str]:
    return [*CLIENT, "--pki", str(pki.root), f"127.0.0.1:{server.port}", *args]


def run_client(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("text", True)
    return subprocess.run(argv, capture_output=True, timeout=60, check=False, **kwargs)


def demo_server(server_factory, *vm_ids: str):
    server = server_factory(DEMO_CONFIG)
    proxy = server.rpc()
    for vm_id in vm_ids:
        spec = {"vmId": vm_id, "console": {"type": "spawn", "command": "demo"}}
        assert proxy.create(spec)["status"]["code"] == 0
    for vm_id in vm_ids:
        wait_for(lambda v=vm_id: b"demo# " in retained(server, v), 10, "a prompt")
    return server


def retained(server, vm_id: str) -> bytes:
    result = server.rpc().consoleRead(vm_id, 0, 1024 * 1024)
    return result["data"].data


def console_command(server, pki, vm_id: str, *extra: str) -> str:
    return shlex.join(client_args(server, pki, "console", vm_id, *extra))
