#!/usr/bin/env python3
"""List the guest consoles of a vdsmconsole host, the way vdsClient talks to VDSM.

    list_consoles.py [--pki /etc/pki/vdsm] [--client engine] [HOST[:PORT]]

Only the standard library: ``xmlrpc.client`` over TLS with a client
certificate from a PKI directory in VDSM's layout (``certs/cacert.pem``,
``certs/<client>cert.pem``, ``keys/<client>key.pem``).  Calls ``list(True)``
and prints one line per console.  HOST is read as ``vdsmconsole-client``
reads it: ``0`` is this host, ``[v6addr]:PORT`` an IPv6 address, the port
54321 unless given.  Exit status 1 if the server answers with a status other
than Done, 2 for a bad argument; every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import re
import ssl
import sys
import xmlrpc.client
from pathlib import Path
from typing import Any

PROG = "list_consoles.py"
DEFAULT_PORT = 54321


def parse_host_port(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port``, a bare IPv6 address, ``0``.

    The rules of vdsmconsole-client's HOST[:PORT] (a test keeps the two in
    step), copied so that this script needs nothing but Python.
    """
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
        if not match:
            raise ValueError(f"bad HOST[:PORT] {text!r}")
        host = match.group(1)
        port = int(match.group(2)) if match.group(2) else DEFAULT_PORT
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"bad port in {text!r}")
        port = int(port_text)
    if not host or not 0 < port < 65536:
        raise ValueError(f"bad HOST[:PORT] {text!r}")
    return ("localhost" if host == "0" else host), port


def fail(message: str, status: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return status


def source_of(console: dict[str, Any]) -> str:
    """Where the console reads from, in one word: a path, host:port or a name."""
    if "host" in console:
        return f"{console['host']}:{console.get('port', '')}"
    return str(console.get("path") or console.get("command") or "-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server", nargs="?", default="localhost:54321")
    parser.add_argument("--pki", type=Path, default=Path("/etc/pki/vdsm"))
    parser.add_argument(
        "--client", default="engine", help="certificate pair to use (default engine)"
    )
    args = parser.parse_args()
    try:
        host, port = parse_host_port(args.server)
    except ValueError as e:
        return fail(str(e), 2)

    try:
        context = ssl.create_default_context(cafile=args.pki / "certs/cacert.pem")
        context.load_cert_chain(
            args.pki / f"certs/{args.client}cert.pem",
            args.pki / f"keys/{args.client}key.pem",
        )
    except (OSError, ssl.SSLError) as e:
        return fail(f"cannot load the certificates from {args.pki}: {e}", 2)
    url = f"https://{f'[{host}]' if ':' in host else host}:{port}/RPC2"
    try:
        proxy = xmlrpc.client.ServerProxy(url, context=context)
        response: dict[str, Any] = proxy.list(True)  # type: ignore[assignment]
    except (OSError, xmlrpc.client.Error) as e:
        # OSError covers refused connections, unknown hosts and TLS failures.
        return fail(f"{url}: {e}", 1)
    status = response["status"]
    if status["code"] != 0:
        print(f"error {status['code']}: {status['message']}", file=sys.stderr)
        return 1

    row = "{:<36}  {:<12}  {:<6}  {:<30}  {:>12}"
    print(row.format("vmId", "status", "type", "source", "nextOffset"))
    for vm in response["vmList"]:
        console: dict[str, Any] = vm.get("console") or {}
        print(
            row.format(
                vm["vmId"],
                vm.get("status", "-"),
                console.get("type", "-"),
                source_of(console),
                vm.get("nextOffset", 0),
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
