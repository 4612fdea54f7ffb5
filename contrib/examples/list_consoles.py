#!/usr/bin/env python3
"""List the guest consoles of a vdsmconsole host, the way vdsClient talks to VDSM.

    list_consoles.py [--pki /etc/pki/vdsm] [--client engine] [HOST[:PORT]]

Only the standard library: ``xmlrpc.client`` over TLS with a client
certificate from a PKI directory in VDSM's layout (``certs/cacert.pem``,
``certs/<client>cert.pem``, ``keys/<client>key.pem``).  Calls ``list(True)``
and prints one line per console.  Exit status 1 if the server answers with a
status other than Done.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import xmlrpc.client
from pathlib import Path
from typing import Any


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
    host, _, port = args.server.partition(":")

    context = ssl.create_default_context(cafile=args.pki / "certs/cacert.pem")
    context.load_cert_chain(
        args.pki / f"certs/{args.client}cert.pem",
        args.pki / f"keys/{args.client}key.pem",
    )
    proxy = xmlrpc.client.ServerProxy(
        f"https://{host}:{port or 54321}/RPC2", context=context
    )
    response: dict[str, Any] = proxy.list(True)  # type: ignore[assignment]
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
