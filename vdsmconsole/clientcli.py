"""``vdsmconsole-client``: vdsClient's command line, for vdsmconsole's port.

::

    vdsmconsole-client [options] [-s] HOST[:PORT] COMMAND [ARGS...]

``HOST`` ``0`` means this host; the port is 54321 unless given.  Commands:

``list``, ``list table``
    the consoles (full status), or one row each: vmId, state, firstOffset,
    nextOffset, readers, writers.
``console VMID [-e CHAR] [--read-only] [--offset N | --tail N]``
    interactive, like ``virsh console``: the terminal in raw mode, ``^]``
    (or ``-e CHAR``, e.g. ``-e '^A'``) leaves.  A lost connection (or the
    server stopping) is re-established with backoff and output resumes from
    the last offset; one line says how many bytes were lost meanwhile, if
    any.  A destroyed console ends it (exit 1), so does a guest gone for
    good (exit 100), without a reconnection.
``tail VMID [-f] [--offset N | --tail N]``
    what is retained (from the oldest byte, or the given start); ``-f``
    keeps following (and reconnects and ends like ``console``).
``send VMID TEXT...`` / ``send VMID -``
    TEXT and a newline (``-n``: no newline), or standard input streamed as
    one POST, each read sent as it comes.
any other word
    an XML-RPC method by that name (``getVmStats VMID``, ``destroy VMID``,
    ``create vmId=vm1 console.type=spawn console.command=demo``).

Arguments of an RPC: plain words are positional; ``key=value`` names a
parameter of a known method (``consoleRead vmId=vm1 maxBytes=100``); other
keys (dotted for nesting) build a struct: the method's struct parameter
(``create``'s ``params``), or a struct appended as the last argument.
Values: ``true``/``false`` are booleans, decimal numbers are ints, text
starting with ``{``, ``[`` or ``"`` is JSON, anything else a string; a known
parameter gets its own type (a vmId stays a string).

Certificates: ``--ca/--cert/--key``, else ``--pki DIR`` (a ``vdsmconsole pki
init`` directory: ``certs/cacert.pem``, ``certs/enginecert.pem``,
``keys/enginekey.pem``), else ``VDSMCONSOLE_CA``, ``VDSMCONSOLE_CERT``,
``VDSMCONSOLE_KEY``, else ``VDSMCONSOLE_PKI``, else VDSM's host files under
``/etc/pki/vdsm``.

Exit status: an RPC's status code (vdsClient's convention: 0 Done, 1 noVM,
11 MissParam...); for streams 1 when the console does not exist and 100 when
its guest is down; 2 for bad arguments or unreadable certificates; 255 when
the server cannot be reached, the TLS handshake fails or the connection is
lost (vdsClient's -1); 128+N after signal N.  Every error is one line on
stderr.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import select
import signal
import sys
import termios
import tty
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from twisted.internet import defer, task
from twisted.python.failure import Failure

from vdsmconsole import __version__
from vdsmconsole.client import (
    DEFAULT_PORT,
    EVERYTHING,
    ClientCredentials,
    ClientError,
    ConsoleClient,
    ConsoleUnavailable,
    CredentialsError,
    FDReader,
    InputStream,
    NoSuchConsole,
    ResumingFollow,
    RPCFault,
    Stream,
    pollable,
    stdin_producer,
)
from vdsmconsole.status import no_vm_message
from vdsmconsole.streamend import StreamEnd

PROG = "vdsmconsole-client"
EXIT_USAGE = 2
EXIT_NO_VM = 1
EXIT_CONSOLE_DOWN = 100
EXIT_TRANSPORT = 255
DEFAULT_ESCAPE = "^]"
INPUT_RETRY = 2.0  # seconds between attempts to reopen input to a down guest
FLUSH_TIMEOUT = 2.0  # how long leaving waits for typed bytes to be delivered


class UsageError(Exception):
    """Bad arguments: one line, exit status 2."""


def fail(message: str, code: int) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {PROG} --help)")


# -- HOST[:PORT] and RPC arguments ------------------------------------------------


def parse_host_port(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port``, a bare IPv6 address, ``0``."""
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
        if not match:
            raise UsageError(f"bad HOST[:PORT] {text!r}")
        host = match.group(1)
        port = int(match.group(2)) if match.group(2) else DEFAULT_PORT
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise UsageError(f"bad port in {text!r}")
        port = int(port_text)
    if not host or not 0 < port < 65536:
        raise UsageError(f"bad HOST[:PORT] {text!r}")
    return ("localhost" if host == "0" else host), port


REQUIRED = object()

# Known methods: (parameter, type, default) in wire order.
SIGNATURES: dict[str, list[tuple[str, str, object]]] = {
    "ping": [],
    "getVdsCapabilities": [],
    "list": [("fullStatus", "bool", False), ("vmList", "list", [])],
    "create": [("params", "struct", REQUIRED)],
    "destroy": [("vmId", "str", REQUIRED)],
    "getVmStats": [("vmId", "str", REQUIRED)],
    "getAllVmStats": [],
    "consoleRead": [
        ("vmId", "str", REQUIRED),
        ("offset", "int", 0),
        ("maxBytes", "int", 64 * 1024),
    ],
    "consoleWrite": [("vmId", "str", REQUIRED), ("data", "str", REQUIRED)],
}
# Struct members that stay strings whatever they look like.
STRING_KEYS = {"vmId", "path", "host", "command", "type", "data"}
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
METHOD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def coerce(text: str) -> Any:
    """A command-line word as an XML-RPC value (see the module docstring)."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text[:1] in ("{", "[", '"'):
        try:
            return json.loads(text)
        except ValueError as e:
            raise UsageError(f"bad JSON {text!r}: {e}") from None
    return text


def coerce_as(kind: str, name: str, text: str) -> Any:
    """A word for a known parameter of type ``kind``."""
    if kind == "str":
        return text
    if kind == "int":
        if not re.fullmatch(r"-?\d+", text):
            raise UsageError(f"{name} must be an integer, not {text!r}")
        return int(text)
    if kind == "bool":
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise UsageError(f"{name} must be true or false, not {text!r}")
    if kind == "list":
        if text.startswith("["):
            value = coerce(text)
            if isinstance(value, list):
                return value
        return [item for item in text.split(",") if item]
    value = coerce(text)
    if kind == "struct" and not isinstance(value, dict):
        raise UsageError(f"{name} must be a JSON object, not {text!r}")
    return value


def _put(struct: dict[str, Any], key: str, text: str) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        inner = struct.setdefault(part, {})
        if not isinstance(inner, dict):
            raise UsageError(f"{key}: {part} is already a value")
        struct = inner
    last = parts[-1]
    struct[last] = text if last in STRING_KEYS else coerce(text)


def rpc_arguments(method: str, words: Sequence[str]) -> tuple[Any, ...]:
    """The positional XML-RPC arguments for ``method`` from command-line words."""
    signature = SIGNATURES.get(method)
    positional: list[str] = []
    named: dict[str, str] = {}
    struct: dict[str, Any] = {}
    literal = False
    for word in words:
        if word == "--" and not literal:
            literal = True  # what follows is positional, even with a '='
            continue
        key, sep, value = word.partition("=")
        if sep and KEY.fullmatch(key) and not literal:
            if signature is not None and key in [p[0] for p in signature]:
                named[key] = value
            else:
                _put(struct, key, value)
        else:
            positional.append(word)
    if signature is None:
        args: list[Any] = [coerce(w) for w in positional]
        return (*args, struct) if struct else tuple(args)
    struct_params = [p[0] for p in signature if p[1] == "struct"]
    if struct and not struct_params:
        names = ", ".join(p[0] for p in signature) or "none"
        raise UsageError(
            f"{method} has no parameter {next(iter(struct)).split('.')[0]!r} "
            f"(parameters: {names})"
        )
    if len(positional) > len(signature):
        raise UsageError(f"{method} takes at most {len(signature)} arguments")
    values: list[Any] = []
    given: list[bool] = []
    for index, (name, kind, default) in enumerate(signature):
        if index < len(positional):
            if name in named:
                raise UsageError(f"{method}: {name} given twice")
            values.append(coerce_as(kind, name, positional[index]))
        elif name in named:
            values.append(coerce_as(kind, name, named[name]))
        elif kind == "struct" and struct:
            values.append(struct)
        else:
            values.append(default)
            given.append(False)
            continue
        given.append(True)
    # Defaults after the last argument given need not be sent.
    while values and not given[len(values) - 1] and values[-1] is not REQUIRED:
        values.pop()
    for (name, _, _), value in zip(signature, values, strict=False):
        if value is REQUIRED:
            raise UsageError(f"{method} needs {name}")
    return tuple(values)


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


def parse_escape(text: str) -> int:
    """``^]``, ``^A``, ``^?`` or one ASCII character, as a byte value."""
    if len(text) == 2 and text[0] == "^":
        char = text[1].upper()
        if char == "?":
            return 0x7F
        if 0x40 <= ord(char) <= 0x5F:
            return ord(char) ^ 0x40
    if len(text) == 1 and ord(text) < 0x80:
        return ord(text)
    raise UsageError(f"bad escape character {text!r} (try '^]' or '^A')")


def escape_name(byte: int) -> str:
    if byte == 0x7F:
        return "^?"
    return f"^{chr(byte ^ 0x40)}" if byte < 0x20 else chr(byte)


# -- the command line ----------------------------------------------------------

EPILOG = """\
commands:
  list [table]                          the consoles
  console VMID [-e CHAR] [--read-only]  interactive (^] leaves)
  tail VMID [-f] [--offset N|--tail N]  retained output; -f follows
  send VMID TEXT... | send VMID -       type TEXT and a newline, or stdin
  METHOD [ARG|key=value ...]            any XML-RPC method

environment: VDSMCONSOLE_CA, VDSMCONSOLE_CERT, VDSMCONSOLE_KEY, VDSMCONSOLE_PKI
exit status: the RPC's status code; 1 unknown console; 2 bad arguments;
255 server unreachable or TLS refused."""


def add_global_options(parser: argparse.ArgumentParser, after: bool = False) -> None:
    """The options that go before HOST (or, for convenience, after COMMAND)."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if after else {}
    parser.add_argument(
        "-s",
        "--ssl",
        action="store_true",
        **default,
        help="TLS (always on; accepted for vdsClient's sake)",
    )
    parser.add_argument(
        "--pki", type=Path, metavar="DIR", **default, help="a pki init directory"
    )
    parser.add_argument(
        "--ca", type=Path, metavar="FILE", **default, help="CA certificate"
    )
    parser.add_argument(
        "--cert", type=Path, metavar="FILE", **default, help="client certificate"
    )
    parser.add_argument(
        "--key", type=Path, metavar="FILE", **default, help="client key"
    )
    parser.add_argument(
        "--json", action="store_true", **default, help="print the raw struct"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS if after else 30.0,
        metavar="SECONDS",
        help="for connecting and answers (default 30; 0: wait forever)",
    )


def build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        usage=f"{PROG} [options] [-s] HOST[:PORT] COMMAND [ARGS...]",
        description="vdsClient-style client for vdsmconsole.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_options(parser)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("hostport", metavar="HOST[:PORT]")
    parser.add_argument("command", metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
    return parser


def _start_options(parser: argparse.ArgumentParser) -> None:
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--offset", type=int, metavar="N", help="from absolute offset N")
    start.add_argument("--tail", type=int, metavar="N", help="the last N bytes")


def command_parser(command: str) -> _Parser:
    parser = _Parser(prog=f"{PROG} HOST {command}")
    parser.add_argument("vm_id", metavar="VMID")
    if command == "console":
        parser.add_argument("-e", "--escape", default=DEFAULT_ESCAPE, metavar="CHAR")
        parser.add_argument("--read-only", action="store_true")
        _start_options(parser)
    elif command == "tail":
        parser.add_argument("-f", "--follow", action="store_true")
        _start_options(parser)
    elif command == "send":
        parser.add_argument("-n", "--no-newline", action="store_true")
        parser.add_argument("text", nargs="+", metavar="TEXT")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    args = build_parser().parse_args(list(argv))
    after = _Parser(add_help=False)
    add_global_options(after, after=True)
    late, args.args = after.parse_known_args(args.args)
    vars(args).update(vars(late))
    args.host, args.port = parse_host_port(args.hostport)
    if args.timeout < 0:
        raise UsageError("--timeout must not be negative")
    if args.command in ("console", "tail", "send"):
        sub = command_parser(args.command).parse_args(args.args)
        for name in ("offset", "tail"):
            if getattr(sub, name, None) is not None and getattr(sub, name) < 0:
                raise UsageError(f"--{name} must not be negative")
        if args.command == "console":
            sub.escape_byte = parse_escape(sub.escape)
        args.sub = sub
    elif args.command == "list" and args.args in ([], ["table"]):
        args.sub = None
    elif not METHOD.fullmatch(args.command):
        raise UsageError(f"unknown command {args.command!r}")
    else:
        args.rpc_args = rpc_arguments(args.command, args.args)
    return args


# -- output helpers ----------------------------------------------------------------


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


# -- commands ----------------------------------------------------------------------


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


def _report_start(stream: Stream, err: IO[str], newline: str = "\n") -> None:
    if stream.lost:
        err.write(
            f"{PROG}: {stream.lost} bytes before offset {stream.start_offset} "
            f"are no longer retained{newline}"
        )
        err.flush()


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


def stop_on_signals(reactor: Any, finished: defer.Deferred[Any]) -> dict[int, Any]:
    """SIGTERM, SIGHUP and SIGINT end ``finished`` with 128+N; returns the old."""
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: object) -> None:
        def end() -> None:
            if not finished.called:
                finished.callback(128 + signum)

        reactor.callFromThread(end)

    def install() -> None:
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            previous[signum] = signal.signal(signum, handler)

    # Twisted installs its own handlers as the reactor starts; ours go after.
    reactor.callWhenRunning(install)
    return previous


def restore_signals(previous: dict[int, Any]) -> None:
    for signum, old in previous.items():
        signal.signal(signum, old)


# -- console -------------------------------------------------------------------------


class RawTerminal:
    """A terminal in raw mode, put back as it was by ``restore()`` (idempotent)."""

    active: list[RawTerminal] = []

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list[Any] | None = None

    def enter(self) -> None:
        self.saved = termios.tcgetattr(self.fd)
        RawTerminal.active.append(self)
        tty.setraw(self.fd, termios.TCSADRAIN)

    def restore(self) -> None:
        saved, self.saved = self.saved, None
        if self in RawTerminal.active:
            RawTerminal.active.remove(self)
        if saved is None:
            return
        try:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)
        except (termios.error, OSError):
            pass  # the terminal is gone (SIGHUP): nothing left to restore

    @classmethod
    def restore_all(cls) -> None:
        for terminal in list(cls.active):
            terminal.restore()


class ConsoleSession:
    """``console VMID``: output to the terminal, keystrokes to the guest.

    Output follows with ``ResumingFollow``; input is one streaming POST
    (``ConsoleClient.open_input``) reopened when the connection comes back.
    Keystrokes typed while there is no input stream are dropped, not queued
    for later: nobody wants an Enter typed into a dead connection replayed.
    """

    def __init__(
        self,
        reactor: Any,
        client: ConsoleClient,
        vm_id: str,
        *,
        escape: int,
        read_only: bool = False,
        start: dict[str, Any] | None = None,
        stdin_fd: int = 0,
        stdout_fd: int = 1,
        stderr: IO[str] = sys.stderr,
    ) -> None:
        self.reactor = reactor
        self.client = client
        self.vm_id = vm_id
        self.escape = bytes([escape])
        self.escape_name = escape_name(escape)
        self.read_only = read_only
        self.start = start or {}
        self.stdin_fd = stdin_fd
        self.stderr = stderr
        self.output = Output(stdout_fd)
        self.finished: defer.Deferred[Any] = defer.Deferred()
        self.follower: ResumingFollow | None = None
        self.input: InputStream | None = None
        self.reader: FDReader | None = None
        self.terminal: RawTerminal | None = None
        self.newline = "\n"
        self.expected: int | None = None
        self._input_retry: Any = None
        self._down_noted = False

    def say(self, text: str) -> None:
        self.stderr.write(text)
        self.stderr.flush()

    def end(self, result: Any) -> None:
        if self.reader is not None:
            # What is typed from now on is for the shell, not the guest.
            self.reader.stopProducing()
        if not self.finished.called:
            self.finished.callback(result)

    async def run(self) -> int:
        follower = ResumingFollow(
            self.client,
            self.vm_id,
            self._output,
            on_lost=self._lost,
            on_resumed=self._resumed,
            **self.start,
        )
        self.follower = follower
        stream = await follower.start()  # errors here: before raw mode
        previous: dict[int, Any] = {}
        trigger = self.reactor.addSystemEventTrigger(
            "before", "shutdown", self._cleanup
        )
        try:
            if os.isatty(self.stdin_fd):
                self.terminal = RawTerminal(self.stdin_fd)
                self.terminal.enter()
                self.newline = "\r\n"
            previous = stop_on_signals(self.reactor, self.finished)
            # Said once the terminal and the signals are ours: from here on
            # every way out restores the terminal.
            self.say(
                f"Connected to {self.vm_id} at {self.client.where}{self.newline}"
                f"Escape character is {self.escape_name}{self.newline}"
            )
            _report_start(stream, self.stderr, self.newline)
            follower.done.addBoth(self._follow_done)
            if not self.read_only:
                self._open_input()
            # Read the keyboard for input or at least for the escape; /dev/null
            # or a file cannot be watched, and there is nothing to type.
            if (not self.read_only or self.terminal) and pollable(self.stdin_fd):
                self.reader = FDReader(
                    self.reactor, self.stdin_fd, self._typed, self._stdin_eof
                )
                self.reader.start()
            result = await self.finished
            await self._flush_input()
        finally:
            self._cleanup()
            restore_signals(previous)
            self.reactor.removeSystemEventTrigger(trigger)
        if isinstance(result, BaseException):
            raise result
        return int(result)

    def _cleanup(self) -> None:
        if self.reader is not None:
            self.reader.stopProducing()
        if self._input_retry is not None and self._input_retry.active():
            self._input_retry.cancel()
        if self.follower is not None:
            self.follower.stop()
        if self.input is not None:
            self.input.stopProducing()
        if self.terminal is not None:
            if self.terminal.saved is not None:
                self.output(b"\r\n")
            self.terminal.restore()

    async def _flush_input(self) -> None:
        """Let the keystrokes typed before leaving reach the guest."""
        stream = self.input
        if stream is None or not stream.open:
            return
        stream.finish()
        done: defer.Deferred[Any] = defer.Deferred()
        stream.done.addBoth(lambda _: None if done.called else done.callback(None))
        call = self.reactor.callLater(
            FLUSH_TIMEOUT, lambda: None if done.called else done.callback(None)
        )
        await done
        if call.active():
            call.cancel()

    # output
    def _output(self, data: bytes) -> None:
        self.output(data)
        if self.output.broken is not None:
            self.end(0)

    def _lost(self, error: ClientError) -> None:
        assert self.follower is not None
        self.expected = self.follower.offset
        self.say(
            f"{self.newline}[{PROG}: connection to {self.client.where} lost; "
            "reconnecting..."
        )

    def _resumed(self, stream: Stream, lost: int) -> None:
        self.say(f" {resume_note(stream, self.expected)}]{self.newline}")
        if not self.read_only:
            self._open_input()

    def _follow_done(self, result: Any) -> None:
        if self.finished.called:
            return
        # Resuming is pointless (the console was destroyed, TLS refused).
        self.end(result.value if isinstance(result, Failure) else 0)

    # input
    def _typed(self, data: bytes) -> None:
        index = data.find(self.escape)
        if index >= 0:
            self._deliver(data[:index])
            self.end(0)
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        if data and not self.read_only and self.input is not None and self.input.open:
            self.input.write(data)

    def _stdin_eof(self) -> None:
        if self.terminal is not None:
            self.end(0)  # the terminal hung up
        elif self.input is not None:
            self.input.finish()  # piped input ended: keep following

    def _open_input(self) -> None:
        if self.finished.called or (self.input is not None and self.input.open):
            return
        stream = self.client.open_input(self.vm_id)
        self.input = stream
        stream.done.addBoth(self._input_ended, stream)

    def _input_ended(self, result: Any, stream: InputStream) -> None:
        if self.finished.called or stream is not self.input:
            return
        if isinstance(result, Failure):
            if result.check(NoSuchConsole):
                self.end(result.value)
                return
            if result.check(ConsoleUnavailable) and not self._down_noted:
                self._down_noted = True
                self.say(
                    f"{self.newline}[{PROG}: the guest of {self.vm_id} is down; "
                    f"input is not delivered]{self.newline}"
                )
        else:
            self._down_noted = False
        assert self.follower is not None
        if self.follower.connected and not self.finished.called:
            # Output flows, input does not: try again in a while.  Otherwise
            # the follower's reconnection reopens input.
            self._input_retry = self.reactor.callLater(INPUT_RETRY, self._open_input)


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


# -- main ------------------------------------------------------------------------------


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
    from twisted.logger import globalLogBeginner, textFileLogObserver

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
