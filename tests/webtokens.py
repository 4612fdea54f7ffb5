"""The web listener's tests: a server with ``[web]`` on, and console tokens
minted by it (``remoteConsole`` over XML-RPC as the engine, an admin).

The tokens are the real store's (server/tokens/): expiry, single use and
the role are the server's own, nothing stood in for.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.serverproc import ServerProcess, wait_for
from tests.wshelp import SyncSocket, ws_connect

OWN = "own"  # web_socket's Origin: the listener's own
WEB_LISTENING = re.compile(r"vdsmconsole web listening on [^:\s]+:(\d+)")


def web_config(assets: Path | str, extra: str = "") -> str:
    """A ``[web]`` section: on, any free port, ``assets`` served."""
    return f'\n[web]\nenabled = true\nport = 0\nassets = "{assets}"\n{extra}'


def web_port(server: ServerProcess) -> int:
    """The web listener's port, from the server's log line."""
    found = wait_for(lambda: WEB_LISTENING.search(server.log()), 10, "the web port")
    return int(found.group(1))


def remote_console(
    server: ServerProcess,
    vm_id: str,
    protocol: str = "serial",
    role: str | None = None,
    single_use: bool = False,
    ttl: int | None = None,
) -> dict[str, Any]:
    """remoteConsole's ``console`` answer (its token, type and URL)."""
    params: dict[str, Any] = {"singleUse": single_use}
    if role is not None:
        params["role"] = role
    if ttl is not None:
        params["ttl"] = ttl
    reply = server.rpc().remoteConsole(vm_id, protocol, params)
    assert reply["status"]["code"] == 0, reply
    return reply["console"]


def mint(server: ServerProcess, vm_id: str, protocol: str = "serial", **kw: Any) -> str:
    """A token for ``vm_id``'s console (see remote_console)."""
    token = remote_console(server, vm_id, protocol, **kw)["token"]
    assert isinstance(token, str)
    return token


def token_in(url: str) -> str:
    """The ``token`` query parameter of a URL."""
    return parse_qs(urlsplit(url).query)["token"][0]


def browser_tls(server: ServerProcess) -> ssl.SSLContext:
    """What a browser has: the CA to trust, no client certificate."""
    return ssl.create_default_context(cafile=str(server.pki.ca_cert))


def web_socket(
    server: ServerProcess,
    port: int,
    path: str,
    origin: str | None = OWN,
    **kwargs: Any,
) -> SyncSocket:
    """A browser's websocket on the web listener; ``origin`` the listener's
    own by default (a page it served), None for no Origin header."""
    if origin == OWN:
        origin = f"https://127.0.0.1:{port}"
    kwargs.setdefault("subprotocols", ["binary"])
    return ws_connect(
        f"wss://127.0.0.1:{port}{path}",
        ssl=browser_tls(server),
        server_hostname="localhost",
        origin=origin,
        **kwargs,
    )
