"""How the client speaks to its user: messages, exit codes, tables, bytes."""

from __future__ import annotations

import base64
import os
import select
import sys
from typing import IO, Any, NoReturn

from vdsmconsole.client.errors import (
    ClientError,
    ConsoleUnavailable,
    CredentialsError,
    NoSuchConsole,
    RPCFault,
)
from vdsmconsole.client.stream import Stream

PROG = "vdsmconsole-client"


EXIT_USAGE = 2


EXIT_NO_VM = 1


EXIT_CONSOLE_DOWN = 100


EXIT_TRANSPORT = 255


class UsageError(Exception):
    """Bad arguments: one line, exit status 2."""


def fail(message: str, code: int) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def jsonable(value: Any, binary: str) -> Any:
    """``value`` for ``json.dumps``: bytes as text, or base64 with ``--json``."""
    if isinstance(value, bytes):
        if binary == "base64":
            return base64.b64encode(value).decode("ascii")
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): jsonable(v, binary) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, binary) for v in value]
    return value


def status_of(result: Any) -> tuple[int, str]:
    if isinstance(result, dict) and isinstance(result.get("status"), dict):
        status = result["status"]
        code = status.get("code", 0)
        return (code if isinstance(code, int) else 16), str(status.get("message", ""))
    return 0, ""


def exit_code(code: int) -> int:
    """A status code as an exit status (255 is the transport's)."""
    return code if 0 <= code < EXIT_TRANSPORT else 1


TABLE_COLUMNS = ("vmId", "state", "firstOffset", "nextOffset", "readers", "writers")


def format_table(stats: list[dict[str, Any]]) -> str:
    """One row per console under a header; numbers right-aligned."""
    rows = [list(TABLE_COLUMNS)]
    for entry in sorted(stats, key=lambda e: str(e.get("vmId", ""))):
        rows.append([str(entry.get(column, "-")) for column in TABLE_COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    lines = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cells.append(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def write_all(fd: int, data: bytes) -> None:
    """Write everything, waiting if the descriptor is non-blocking and full."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])
        except InterruptedError:
            continue


class Output:
    """Console bytes to a file descriptor; a reader that went away ends us."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.broken: OSError | None = None

    def __call__(self, data: bytes) -> None:
        if self.broken is not None:
            return
        try:
            write_all(self.fd, data)
        except OSError as e:
            self.broken = e


def _report_start(stream: Stream, err: IO[str], newline: str = "\n") -> None:
    if stream.lost:
        err.write(
            f"{PROG}: {stream.lost} bytes before offset {stream.start_offset} "
            f"are no longer retained{newline}"
        )
        err.flush()


def resume_note(stream: Stream, expected: int | None) -> str:
    """The end of the one line a reconnection prints."""
    where = f"reconnected at offset {stream.start_offset}"
    if expected is not None and stream.start_offset < expected:
        return (
            f"{where} (the server lost its last {expected - stream.start_offset} bytes)"
        )
    if stream.lost:
        return f"{where}, {stream.lost} bytes lost"
    return f"{where}, no bytes lost"


def error_exit_code(error: ClientError) -> int:
    if isinstance(error, NoSuchConsole):
        return EXIT_NO_VM
    if isinstance(error, ConsoleUnavailable):
        return EXIT_CONSOLE_DOWN
    if isinstance(error, CredentialsError):
        return EXIT_USAGE
    if isinstance(error, RPCFault) and error.faultCode == 8001:
        return EXIT_USAGE  # no such method: a mistyped command
    return EXIT_TRANSPORT
