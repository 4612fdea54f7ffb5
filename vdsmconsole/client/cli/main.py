"""The ``vdsmconsole-client`` console script: parse, run one command under
``task.react``, exit with its status (see the package docstring)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, task
from twisted.logger import globalLogBeginner, textFileLogObserver

from vdsmconsole.client.api import ConsoleClient
from vdsmconsole.client.cli.args import parse_args
from vdsmconsole.client.cli.commands import (
    run_console,
    run_list,
    run_rpc,
    run_send,
    run_tail,
)
from vdsmconsole.client.cli.output import (
    EXIT_TRANSPORT,
    EXIT_USAGE,
    UsageError,
    error_exit_code,
    fail,
)
from vdsmconsole.client.cli.remote import run_remote_console, run_tunnel
from vdsmconsole.client.cli.session import RawTerminal
from vdsmconsole.client.credentials import ClientCredentials
from vdsmconsole.client.errors import (
    ClientError,
    CredentialsError,
    RPCFault,
)


async def run(reactor: Any, args: argparse.Namespace) -> int:
    """Run one command; returns its exit status."""
    try:
        client = ConsoleClient(
            args.host,
            args.port,
            ClientCredentials.resolve(
                pki=args.pki, ca=args.ca, cert=args.cert, key=args.key
            ),
            reactor,
            timeout=args.timeout or None,
        )
    except CredentialsError as e:
        fail(str(e), EXIT_USAGE)
    try:
        if args.command == "console":
            return await run_console(reactor, client, args.sub)
        if args.command == "tail":
            return await run_tail(reactor, client, args.sub)
        if args.command == "send":
            return await run_send(reactor, client, args)
        if args.command == "tunnel":
            return await run_tunnel(reactor, client, args.sub)
        if args.command == "remote-console":
            return await run_remote_console(client, args)
        if args.command == "list" and not hasattr(args, "rpc_args"):
            return await run_list(client, args.args == ["table"], args.json)
        return await run_rpc(client, args.command, args.rpc_args, args.json)
    except RPCFault as e:
        if e.faultCode == 8001:
            fail(f"unknown command or method {args.command!r}", EXIT_USAGE)
        fail(str(e), error_exit_code(e))
    except ClientError as e:
        fail(str(e), error_exit_code(e))
    finally:
        await client.close()


def _react_main(reactor: Any, args: argparse.Namespace) -> defer.Deferred[None]:
    async def main() -> None:
        try:
            code = await run(reactor, args)
        except SystemExit:
            raise
        except BrokenPipeError:
            # Our reader left (``| head``): say nothing, as cat would.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None
        except Exception as e:  # noqa: BLE001 - one line, never a traceback
            if os.environ.get("VDSMCONSOLE_CLIENT_DEBUG"):
                raise
            fail(f"unexpected error: {type(e).__name__}: {e}", EXIT_TRANSPORT)
        if code:
            raise SystemExit(code)

    return defer.ensureDeferred(main())


def quiet_logging() -> None:
    """Twisted's log goes nowhere (or to stderr with VDSMCONSOLE_CLIENT_DEBUG)."""
    observers: list[Any] = [lambda event: None]
    if os.environ.get("VDSMCONSOLE_CLIENT_DEBUG"):
        observers = [textFileLogObserver(sys.stderr)]
    globalLogBeginner.beginLoggingTo(
        observers, discardBuffer=True, redirectStandardIO=False
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The console script: parse, run the command under ``task.react``."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        fail(str(e), EXIT_USAGE)
    quiet_logging()
    try:
        task.react(_react_main, (args,))
    finally:
        RawTerminal.restore_all()


if __name__ == "__main__":
    main()
