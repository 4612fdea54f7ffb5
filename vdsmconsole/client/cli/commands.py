"""The commands: an RPC by name, list, send, tail, console."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from twisted.internet import defer

from vdsmconsole.client.api import EVERYTHING, ConsoleClient
from vdsmconsole.client.cli.output import (
    PROG,
    Output,
    _report_start,
    exit_code,
    fail,
    format_table,
    jsonable,
    resume_note,
    status_of,
)
from vdsmconsole.client.cli.session import ConsoleSession
from vdsmconsole.client.cli.signals import stop_on_signals
from vdsmconsole.client.errors import (
    ClientError,
    NoSuchConsole,
)
from vdsmconsole.client.fdio import stdin_producer
from vdsmconsole.client.resuming import ResumingFollow
from vdsmconsole.client.stream import Stream
from vdsmconsole.status import no_vm_message
from vdsmconsole.streamend import StreamEnd


async def call_checked(
    client: ConsoleClient, method: str, args: tuple[Any, ...], as_json: bool
) -> tuple[Any, str, int | None]:
    """Call ``method``: with ``--json`` print the answer as it is and give the
    exit status; otherwise fail on a non-zero status (its code is the exit
    status, as vdsClient's was).  Returns (answer, message, exit status or
    None when the caller prints the answer its own way)."""
    result = await client.call(method, *args)
    code, message = status_of(result)
    if as_json:
        print(json.dumps(jsonable(result, "base64"), indent=2, sort_keys=True))
        return result, message, exit_code(code)
    if code != 0:
        fail(f"{method}: {message} (status {code})", exit_code(code))
    return result, message, None


async def run_rpc(
    client: ConsoleClient, method: str, args: tuple[Any, ...], as_json: bool
) -> int:
    result, message, status = await call_checked(client, method, args, as_json)
    if status is not None:
        return status
    payload = (
        {k: v for k, v in result.items() if k != "status"}
        if isinstance(result, dict)
        else result
    )
    if payload:
        print(json.dumps(jsonable(payload, "text"), indent=2, sort_keys=True))
    else:
        print(message or "Done")
    return 0


async def run_list(client: ConsoleClient, table: bool, as_json: bool) -> int:
    if not table:
        return await run_rpc(client, "list", (True,), as_json)
    result, _, status = await call_checked(client, "getAllVmStats", (), as_json)
    if status is not None:
        return status
    print(format_table(result.get("statsList", [])))
    return 0


async def run_send(
    reactor: Any, client: ConsoleClient, args: argparse.Namespace
) -> int:
    sub = args.sub
    if sub.text == ["-"]:
        written = await client.send(sub.vm_id, stdin_producer(reactor, 0))
    else:
        text = " ".join(sub.text) + ("" if sub.no_newline else "\n")
        written = await client.send(sub.vm_id, text.encode("utf-8"))
    if args.json:
        print(json.dumps({"written": written}))
    return 0


def _start_of(sub: argparse.Namespace, default_tail: int | None) -> dict[str, Any]:
    if sub.offset is not None:
        return {"offset": sub.offset}
    if sub.tail is not None:
        return {"tail": sub.tail}
    return {"tail": default_tail} if default_tail is not None else {}


async def run_tail(reactor: Any, client: ConsoleClient, sub: argparse.Namespace) -> int:
    out = Output(sys.stdout.fileno())
    if not sub.follow:
        stream = await client.follow(
            sub.vm_id, out, follow=False, **_start_of(sub, None)
        )
        _report_start(stream, sys.stderr)
        await stream.done
        if stream.end is StreamEnd.DESTROYED:
            raise NoSuchConsole(404, no_vm_message(sub.vm_id))
        return 0
    finished: defer.Deferred[int] = defer.Deferred()

    def on_data(data: bytes) -> None:
        out(data)
        if out.broken is not None and not finished.called:
            finished.callback(0)  # the reader went away, as with tail -f | head

    expected: int | None = None

    def lost(error: ClientError) -> None:
        nonlocal expected
        expected = follower.offset
        where = client.where
        print(
            f"{PROG}: connection to {where} lost; reconnecting",
            file=sys.stderr,
            flush=True,
        )

    def resumed(stream: Stream, lost_bytes: int) -> None:
        note = resume_note(stream, expected)
        print(f"{PROG}: {note}", file=sys.stderr, flush=True)

    follower = ResumingFollow(
        client,
        sub.vm_id,
        on_data,
        on_lost=lost,
        on_resumed=resumed,
        **_start_of(sub, EVERYTHING),
    )
    stream = await follower.start()
    _report_start(stream, sys.stderr)
    follower.done.addBoth(lambda r: None if finished.called else finished.callback(r))
    stop_on_signals(reactor, finished)
    try:
        result = await finished  # a fatal ClientError is raised from here
    finally:
        follower.stop()
    return int(result) if isinstance(result, int) else 0


async def run_console(
    reactor: Any, client: ConsoleClient, sub: argparse.Namespace
) -> int:
    session = ConsoleSession(
        reactor,
        client,
        sub.vm_id,
        escape=sub.escape_byte,
        read_only=sub.read_only,
        start=_start_of(sub, None),
    )
    return await session.run()
