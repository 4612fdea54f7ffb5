"""What the client library's end-to-end tests share: a demo configuration,
credentials, a demo console created and read back over XML-RPC."""

from __future__ import annotations

import sys

from twisted.internet.defer import ensureDeferred

from vdsmconsole.client import ClientCredentials, ConsoleClient
from vdsmconsole.pki import PkiPaths
from vdsmconsole.testing import wait_until

# No heartbeat: the guest's output is only what the tests type.
DEMO_CONFIG = (
    "[spawn.commands]\n"
    f'demo = ["{sys.executable}", "-m", "vdsmconsole.demoguest", "--fast",'
    ' "--heartbeat", "86400"]\n'
)


def credentials(pki: PkiPaths) -> ClientCredentials:
    return ClientCredentials.from_pki_dir(pki.root)


async def create(client: ConsoleClient, vm_id: str) -> None:
    spec = {"vmId": vm_id, "console": {"type": "spawn", "command": "demo"}}
    result = await client.call("create", spec)
    assert result["status"]["code"] == 0, result
    # The prompt: the guest is up and reads its input.
    await wait_until(
        lambda: read_all(client, vm_id).addCallback(lambda d: b"demo# " in d),
        "the demo prompt",
        timeout=10,
    )


def read_all(client: ConsoleClient, vm_id: str):
    """Everything retained, by XML-RPC (a different path than the streams)."""

    async def read() -> bytes:
        data, offset = b"", 0
        while True:
            result = await client.call("consoleRead", vm_id, offset, 1024 * 1024)
            assert result["status"]["code"] == 0, result
            if not result["data"]:
                return data
            data += result["data"]
            offset = result["nextOffset"]

    return ensureDeferred(read())
