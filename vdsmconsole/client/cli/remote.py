"""The remote-console commands: ``tunnel`` (a local port for a native
viewer) and ``remote-console`` (a token and its URL)."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import sys
from typing import Any

from twisted.internet import defer

from vdsmconsole.client.api import ConsoleClient
from vdsmconsole.client.cli.output import (
    EXIT_NO_VM,
    PROG,
    exit_code,
    fail,
    jsonable,
    status_of,
)
from vdsmconsole.client.cli.signals import stop_on_signals


def _say(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


async def check_console(client: ConsoleClient, vm_id: str, protocol: str) -> None:
    """Before listening: the VM exists (noVM ends the command) and, where
    the server lists its graphics, has one of ``protocol`` (a tunnel would
    be refused anyway, but only once a viewer connects)."""
    result = await client.call("getVmStats", vm_id)
    code, message = status_of(result)
    if code == EXIT_NO_VM:  # noVM; anything else is for the tunnel to say
        fail(f"{vm_id}: {message} (status {code})", exit_code(code))
    if code != 0:
        return
    stats = (result.get("statsList") or [{}])[0]
    graphics = stats.get("graphics") if isinstance(stats, dict) else None
    if protocol != "serial" and isinstance(graphics, list):
        if not any(g.get("type") == protocol for g in graphics if isinstance(g, dict)):
            fail(f"{vm_id} has no {protocol} console", EXIT_NO_VM)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def run_tunnel(
    reactor: Any, client: ConsoleClient, sub: argparse.Namespace
) -> int:
    """Listen until a signal; each local connection its own tunnel."""
    await check_console(client, sub.vm_id, sub.protocol)
    host, port = sub.listen
    try:
        local = client.tunnel_port(
            sub.vm_id,
            sub.protocol,
            host=host,
            port=port,
            token=sub.token,
            on_error=_say,
        )
    except Exception as e:  # noqa: BLE001 - CannotListenError and kin: one line
        fail(f"cannot listen on {host}:{port}: {_reason(e)}", 2)
    if not _is_loopback(local.host):
        _say(
            f"warning: {local.host} is not loopback: whoever reaches it gets "
            f"this console with your certificate's rights"
        )
    print(local.describe(), flush=True)
    finished: defer.Deferred[int] = defer.Deferred()
    stop_on_signals(reactor, finished)
    try:
        result = await finished
    finally:
        await local.stop()
    return int(result)


def _reason(error: Exception) -> str:
    inner = getattr(error, "socketError", None)
    text = getattr(inner, "strerror", None) or str(inner or error)
    return text.strip().rstrip(".")


def _expiry(value: Any) -> str:
    """``expires`` as the server gave it, and as a UTC time if it is one."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        when = datetime.datetime.fromtimestamp(value, datetime.UTC)
        return f"{when:%Y-%m-%d %H:%M:%S} UTC ({value})"
    return str(value)


async def run_remote_console(client: ConsoleClient, args: argparse.Namespace) -> int:
    """Mint a token; print its URL and the token (or the answer, ``--json``)."""
    sub = args.sub
    result = await client.remote_console(
        sub.vm_id,
        sub.protocol,
        ttl=sub.ttl,
        single_use=sub.single_use,
        role=sub.role,
    )
    code, message = status_of(result)
    if args.json:
        print(json.dumps(jsonable(result, "text"), indent=2, sort_keys=True))
        return exit_code(code)
    if code != 0:
        fail(f"remoteConsole: {message} (status {code})", exit_code(code))
    console = result.get("console") if isinstance(result, dict) else None
    if not isinstance(console, dict):
        fail("remoteConsole: the answer has no console", 255)
    print(f"url: {console.get('url', '')}")
    print(f"token: {console.get('token', '')}")
    print(f"expires: {_expiry(console.get('expires'))}", flush=True)
    return 0
